"""Interacting layers (paper Eq. 7-11): multi-head key-value self-attention across fields."""

import contextlib
from typing import Iterator, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from iarm_torchrec.kernels.field_attention import field_attention, kernel_applies
from iarm_torchrec.kernels.fused_layer import fused_interacting_layer, fused_layer_applies
from iarm_torchrec.kernels.onednn_linear import projection
from iarm_torchrec.modules.checks import check_non_negative, check_positive
from iarm_torchrec.modules.tower import check_dropout


def head_views(qkv: torch.Tensor, num_heads: int, head_dim: int) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``B x M x 3 H d'`` fused projections, columns ``[q_1..q_H, k_1..k_H, v_1..v_H]`` ->
    per head its ``B x M x d'`` query, key and value (views, no copies)."""
    chunks = qkv.split(head_dim, dim=-1)
    return [(chunks[h], chunks[num_heads + h], chunks[2 * num_heads + h]) for h in range(num_heads)]


def attention_scores(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """``alpha`` of one head (Eq. 7-8): ``softmax_k <q_m, k_k>``, ``B x M x M``, rows sum to 1."""
    return torch.softmax(torch.bmm(query, key.transpose(1, 2)), dim=-1)


def matmul_attention(qkv: torch.Tensor, num_heads: int, head_dim: int, dropout: float = 0.0) -> torch.Tensor:
    """Eq. 7-10 as per-head ``bmm`` + softmax: ``B x M x 3 H d'`` -> ``B x M x H d'``; with
    ``dropout > 0`` the attention weights ``alpha`` are dropped out (training only)."""
    heads = [
        torch.bmm(F.dropout(attention_scores(q, k), dropout) if dropout > 0 else attention_scores(q, k), v)
        for q, k, v in head_views(qkv, num_heads, head_dim)
    ]
    return torch.cat(heads, dim=-1)


def sdpa_attention(qkv: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Eq. 7-10 through ``scaled_dot_product_attention`` with ``scale=1`` (the paper's plain
    inner product): ``B x M x 3 H d'`` -> ``B x M x H d'``."""
    q, k, v = qkv.unflatten(-1, (3, num_heads, head_dim)).permute(2, 0, 3, 1, 4).unbind(0)  # B x H x M x d'
    return F.scaled_dot_product_attention(q, k, v, scale=1.0).transpose(1, 2).flatten(2)


torch.fx.wrap("projection")  # a leaf when traced: it chooses its backend by dtype and device

_PLAIN_ATEN: List[bool] = [False]  # set by plain_aten_attention(); read at call (and so trace) time


@contextlib.contextmanager
def plain_aten_attention() -> Iterator[None]:
    """Inside this block every :class:`InteractingLayer` computes Eq. 7-10 by
    :func:`sdpa_attention` (ATen's ``scaled_dot_product_attention``, ``scale=1``; on CPU about 2x
    faster than :func:`matmul_attention` at 4096 rows) instead of the :func:`multi_head_attention` leaf. For ``torch.fx`` tracing towards TorchScript: the graph
    then holds only ATen ops, so the scripted module needs neither this package nor its
    compiled CPU kernel (:mod:`iarm_torchrec.inference.serving`)."""
    before = _PLAIN_ATEN[0]
    _PLAIN_ATEN[0] = True
    try:
        yield
    finally:
        _PLAIN_ATEN[0] = before


@torch.fx.wrap
def multi_head_attention(qkv: torch.Tensor, num_heads: int, head_dim: int, dropout: float = 0.0) -> torch.Tensor:
    """Eq. 7-10 on the fused projections, ``B x M x 3 H d'`` -> ``B x M x H d'``, by the fastest
    exact path for the input: SDPA's fused kernels on CUDA; on CPU the compiled field-attention
    kernel (:mod:`iarm_torchrec.kernels.field_attention`: float32 or bfloat16, ``d'`` in 4, 8,
    16, 32, 64, attending in float32 and returning the input's dtype; float16 is converted to
    float32 first and returns float32),
    else :func:`matmul_attention`, which also takes attention ``dropout`` (callers pass it in
    training only). A leaf for ``torch.fx`` (the dispatch is not traced), so
    ``TrainPipelineSparseDist`` can trace the model.

    Example::

        >>> qkv = torch.rand(4, 5, 3 * 2 * 3)
        >>> torch.allclose(multi_head_attention(qkv, 2, 3), sdpa_attention(qkv, 2, 3), atol=1e-6)
        True
    """
    if dropout > 0:
        return matmul_attention(qkv, num_heads, head_dim, dropout)
    if qkv.is_cuda:
        return sdpa_attention(qkv, num_heads, head_dim)
    if kernel_applies(qkv, head_dim):
        # float32, or bf16 from CPU autocast's projections: the kernel reads bf16 as it is and
        # multiplies it in bf16 where the CPU has AVX512-BF16, in float32 elsewhere (either beats
        # bf16 bmm over M = 39, d' <= 64)
        return field_attention(qkv, num_heads, head_dim)
    if qkv.dtype == torch.float16:
        as_float = qkv.float()  # the kernel does not read float16 itself (no CPU autocast makes it)
        if kernel_applies(as_float, head_dim):
            return field_attention(as_float, num_heads, head_dim)
    return matmul_attention(qkv, num_heads, head_dim)


def add_residual(out: torch.Tensor, fields: torch.Tensor, residual_weight: torch.Tensor) -> torch.Tensor:
    """``out + W_Res e_m`` (Eq. 11), ``B M x H d'``, as one GEMM that accumulates onto ``out``
    (``addmm``, beta = 1): no ``B x M x H d'`` temporary and no separate add pass. Without
    autograd (scoring) it accumulates into ``out``'s own memory (``addmm_``; 1.13x a 3-layer
    forward at B = 1024, d' = 32); with autograd into a new tensor, since in place on ``out``'s
    2-D view the backward would copy the gradient back (``CopySlices``). The result is 2-D
    (not a view of a 2-D result) for the same reason: :func:`relu_fields`'s in-place ReLU. The
    operands take ``out``'s dtype (under autocast ``addmm`` computes in the autocast type
    either way)."""
    flat = out.flatten(0, 1)  # B M x H d'
    residual_in, weight = fields.flatten(0, 1).to(out.dtype), residual_weight.t().to(out.dtype)
    if torch.is_grad_enabled():
        return torch.addmm(flat, residual_in, weight)
    return flat.addmm_(residual_in, weight)


def relu_fields(out: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
    """Eq. 11's ReLU in place (no backward here needs the pre-activation), as ``B x M x H d'``.
    ``out`` must not be a view: in place on a view, autograd would copy the gradient three times
    per layer (``CopySlices``)."""
    return torch.relu_(out).view(fields.shape[0], fields.shape[1], -1)


@torch.fx.wrap
def attention_residual_relu(
    fields: torch.Tensor,
    qkv_weight: torch.Tensor,
    residual_weight: torch.Tensor,
    num_heads: int,
    head_dim: int,
    dropout: float = 0.0,
) -> torch.Tensor:
    """The paper's interacting layer, ``ReLU(e~_m + W_Res e_m)`` (Eq. 7-11): ``B x M x d`` ->
    ``B x M x H d'``. On CPU in float32 or under bf16 autocast by one compiled op that takes the batch
    chunk by chunk (:mod:`iarm_torchrec.kernels.fused_layer`); otherwise op by op: the projections
    (:func:`~iarm_torchrec.kernels.onednn_linear.projection`), :func:`multi_head_attention`,
    :func:`add_residual`, :func:`relu_fields`. A leaf for ``torch.fx``: the choice reads the
    operands' dtype and device.

    Example::

        >>> layer = InteractingLayer(in_dim=4, num_heads=2, head_dim=8)
        >>> x = torch.rand(5, 7, 4)
        >>> out = attention_residual_relu(x, layer.qkv.weight, layer.residual.weight, 2, 8)
        >>> out.shape, torch.allclose(out, layer(x))
        (torch.Size([5, 7, 16]), True)
    """
    if fused_layer_applies(fields, qkv_weight, residual_weight, head_dim, dropout):
        return fused_interacting_layer(fields, qkv_weight, residual_weight, num_heads, head_dim)
    out = multi_head_attention(projection(fields, qkv_weight), num_heads, head_dim, dropout)
    return relu_fields(add_residual(out, fields, residual_weight), fields)


class InteractingLayer(nn.Module):
    """One interacting layer: every field attends to every field, per head, then a residual.

    For field ``m`` and head ``h`` (``e`` is ``B x M x d``)::

        phi(e_m, e_k)   = <W_Query^h e_m, W_Key^h e_k>                 (Eq. 8, plain inner product)
        alpha_{m,k}^h   = softmax_k phi(e_m, e_k)                       (Eq. 7)
        e~_m^h          = sum_k alpha_{m,k}^h W_Value^h e_k             (Eq. 9)
        e~_m            = e~_m^1 (+) ... (+) e~_m^H                     (Eq. 10, concatenation)
        e_m^Res         = ReLU(e~_m + W_Res e_m)                        (Eq. 11)

    The paper scores with the raw inner product, so there is no ``1/sqrt(d')`` scale.
    Query, key and value projections of all heads are one fused ``Linear(d, 3 H d')``; the
    attention itself is :func:`multi_head_attention`, which takes the fastest exact kernel for
    the device: ``torch.nn.functional.scaled_dot_product_attention`` (``scale=1``) on CUDA, and
    on CPU a compiled kernel that puts one sample in each SIMD lane, which for CTR's few fields
    (``M`` about 40) and small heads is several times faster there than SDPA's or ``bmm``'s
    kernels (see ``docs/performance.md``). All compute the same Eq. 7-10. On CPU, in float32 or under
    bf16 autocast, the paper's layer (attention and residual, no layer norm) runs as one compiled op
    that gives each core whole chunks of samples, projections to ReLU (:func:`attention_residual_relu`).

    Ablations: ``use_attention=False`` gives IRM's layer ``ReLU(W_Res e_m)``;
    ``use_residual=False`` gives IARM-'s ``ReLU(e~_m)``. At least one must stay on.

    Departures from the paper, each off by default: ``attention_dropout`` (dropout on
    ``alpha`` while training) and ``layer_norm`` (``ReLU(LayerNorm(e~_m + W_Res e_m))``). (A
    ``1/sqrt(d')`` scale was tried and changed nothing measurable: docs/results.md.)

    Args:
        in_dim: ``d``, the size of each input field vector.
        num_heads: ``H``.
        head_dim: ``d'``, the size of each head's subspace; the output is ``H d'`` wide.
        use_attention: keep Eq. 7-10.
        use_residual: keep ``W_Res e_m`` in Eq. 11.
        attention_dropout / layer_norm: the departures above.

    Example::

        >>> layer = InteractingLayer(in_dim=4, num_heads=2, head_dim=3)
        >>> layer(torch.rand(5, 7, 4)).shape
        torch.Size([5, 7, 6])
        >>> layer.attention_weights(torch.rand(5, 7, 4)).shape
        torch.Size([5, 2, 7, 7])
    """

    def __init__(
        self,
        in_dim: int,
        num_heads: int,
        head_dim: int,
        use_attention: bool = True,
        use_residual: bool = True,
        attention_dropout: float = 0.0,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        check_positive(in_dim=in_dim, num_heads=num_heads, head_dim=head_dim)
        check_dropout("attention_dropout", attention_dropout)
        if not (use_attention or use_residual):
            raise ValueError(
                "an interacting layer without attention and without residual computes nothing: "
                "keep one of use_attention/use_residual, or use num_layers=0"
            )
        self.num_heads: int = num_heads
        self.head_dim: int = head_dim
        self.output_dim: int = num_heads * head_dim
        # W_Query, W_Key, W_Value of every head, fused: d -> 3 * H * d'
        self.qkv: nn.Linear | None = (
            nn.Linear(in_dim, 3 * self.output_dim, bias=False) if use_attention else None
        )
        # W_Res of Eq. 11: d -> H * d'
        self.residual: nn.Linear | None = (
            nn.Linear(in_dim, self.output_dim, bias=False) if use_residual else None
        )
        self.attention_dropout: float = attention_dropout
        self.layer_norm: nn.LayerNorm | None = nn.LayerNorm(self.output_dim) if layer_norm else None

    def _projections(self, fields: torch.Tensor) -> torch.Tensor:
        """``B x M x d`` -> ``B x M x 3 H d'``: float32 on CPU through oneDNN
        (:mod:`iarm_torchrec.kernels.onednn_linear`), except in a traced serving artifact."""
        assert self.qkv is not None
        if _PLAIN_ATEN[0]:
            return self.qkv(fields)
        return projection(fields, self.qkv.weight)

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """
        Args:
            fields: ``B x M x d`` field vectors ``e_m``.

        Returns:
            ``B x M x H d'`` high-order field vectors ``e_m^Res``.
        """
        dropout = self.attention_dropout if self.training else 0.0
        if self.qkv is not None and self.residual is not None and self.layer_norm is None and not _PLAIN_ATEN[0]:
            # the paper's layer: one leaf, which takes the fused CPU op where it applies
            return attention_residual_relu(fields, self.qkv.weight, self.residual.weight, self.num_heads, self.head_dim, dropout)
        if self.qkv is None:
            assert self.residual is not None
            out = self.residual(fields)  # IRM: no Eq. 7-10
        else:
            qkv = self._projections(fields)
            if _PLAIN_ATEN[0]:  # traced for a serving artifact: plain ATen, evaluation only
                out = sdpa_attention(qkv, self.num_heads, self.head_dim)
            else:
                out = multi_head_attention(qkv, self.num_heads, self.head_dim, dropout)  # Eq. 7-10
            if self.residual is not None:
                out = add_residual(out, fields, self.residual.weight)
        if self.layer_norm is not None:
            out = self.layer_norm(out)
        return relu_fields(out, fields)

    def attention_weights(self, fields: torch.Tensor) -> torch.Tensor:
        """The ``alpha`` of Eq. 7 for the explanations of Fig. 5.

        Args:
            fields: ``B x M x d``.

        Returns:
            ``B x H x M x M``; row ``m`` of head ``h`` sums to 1 over ``k``.
        """
        if self.qkv is None:
            raise ValueError("this layer was built with use_attention=False and has no attention weights")
        views = head_views(self._projections(fields), self.num_heads, self.head_dim)
        return torch.stack([attention_scores(q, k) for q, k, _ in views], dim=1)


class InteractingArch(nn.Module):
    """``num_layers`` stacked :class:`InteractingLayer`, each feeding the next (Eq. 7-11).

    With ``num_layers=0`` it returns its input unchanged: the output layer then sees the raw
    field embeddings, as in the paper's zero-layer point of Fig. 4.

    Args:
        in_dim: ``d`` of the field embeddings.
        num_layers: how many interacting layers to stack (the paper settles on 3).
        num_heads: ``H`` of every layer.
        head_dim: ``d'`` of every layer.
        use_attention: see :class:`InteractingLayer` (False: IRM).
        use_residual: see :class:`InteractingLayer` (False: IARM-).
        attention_dropout / layer_norm: every layer's departures from the
            paper (:class:`InteractingLayer`), off by default.

    Example::

        >>> arch = InteractingArch(in_dim=4, num_layers=3, num_heads=2, head_dim=8)
        >>> out, attention = arch.forward_with_attention(torch.rand(5, 7, 4))
        >>> out.shape, len(attention), attention[0].shape
        (torch.Size([5, 7, 16]), 3, torch.Size([5, 2, 7, 7]))
    """

    def __init__(
        self,
        in_dim: int,
        num_layers: int = 3,
        num_heads: int = 2,
        head_dim: int = 32,
        use_attention: bool = True,
        use_residual: bool = True,
        attention_dropout: float = 0.0,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        check_non_negative(num_layers=num_layers)
        dims = [in_dim] + [num_heads * head_dim] * num_layers
        self.layers: nn.ModuleList = nn.ModuleList(
            InteractingLayer(
                dims[i], num_heads, head_dim, use_attention, use_residual, attention_dropout, layer_norm
            )
            for i in range(num_layers)
        )
        self.output_dim: int = dims[-1]

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """``B x M x d`` -> ``B x M x output_dim``."""
        for layer in self.layers:
            fields = layer(fields)
        return fields

    def forward_with_attention(self, fields: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Like :meth:`forward`, also returning each layer's ``B x H x M x M`` attention."""
        attention: List[torch.Tensor] = []
        for layer in self.layers:
            attention.append(layer.attention_weights(fields))
            fields = layer(fields)
        return fields, attention
