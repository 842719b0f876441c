"""A whole interacting layer on CPU as one compiled op, chunk by chunk (paper Eq. 7-11).

``ReLU(attention(x W_qkv^T) + x W_res^T)`` computed by ``torch.ops.iarm.interacting_layer_forward``
(built with the attention kernel, :mod:`iarm_torchrec.kernels.field_attention`): the batch is cut
into chunks of :data:`CHUNK_ROWS` samples and each core takes whole chunks, from the projection GEMM
through the attention kernel and the residual GEMM to the ReLU, instead of every op being split
across the cores in turn. A chunk's projections are still in the core's cache when the kernel reads
them, and no GEMM shares the memory bus with the other core's half of it. On the development VM (AMD
EPYC, 2 cores) a 64-wide layer's forward and backward at batch 1024 took 36.8 ms against 43-44 op by
op in float32, and 22.0 against 25.3-25.9 under bf16 autocast (``docs/performance.md``). The
backward runs the same chunks; each core sums its chunks' weight gradients in float32 and the cores'
sums are added, so the weight gradients' float rounding depends on the thread count (the outputs and
the input gradient do not).

It serves float32 CPU operands without autocast, and under CPU bf16 autocast (the operands cast to
bf16 as autocast's GEMMs would cast them; the output is bf16, as the op-by-op layer's), for a head
size the kernel takes and no attention dropout, with the kernel built and ``IARM_CPU_LAYER`` unset or
``fused``; ``IARM_CPU_LAYER=ops`` keeps the layer op by op
(:class:`~iarm_torchrec.modules.interacting.InteractingLayer`).

Example::

    >>> x, w_qkv, w_res = torch.randn(5, 7, 8), torch.randn(3 * 2 * 4, 8), torch.randn(2 * 4, 8)
    >>> not fused_layer_applies(x, w_qkv, w_res, 4, 0.0) or fused_interacting_layer(x, w_qkv, w_res, 2, 4).shape == (5, 7, 8)
    True
"""

from typing import Any, Dict, Optional, Tuple

import torch

from iarm_torchrec.kernels import env_backend
from iarm_torchrec.kernels.field_attention import kernel_applies

BACKEND_ENV = "IARM_CPU_LAYER"
BACKENDS = ("fused", "ops")

# samples per chunk, by compute dtype. float32: 32 and 64 measured alike, 128 slower (a 64-wide
# layer's forward + backward 36.8, 37.2, 39.4 ms); 32 keeps a chunk's projections (39 x 192 floats a
# sample, ~1 MB) in a core's L2. bf16: 128 (22.0 ms; 64: 22.9, 32: 23.4), where oneDNN's fixed cost
# per bf16 GEMM call weighs less and the chunk's bf16 projections (~1.9 MB) still fit L2
CHUNK_ROWS: Dict[torch.dtype, int] = {torch.float32: 32, torch.bfloat16: 128}


def backend() -> str:
    """The CPU layer backend asked for by ``IARM_CPU_LAYER`` (default ``fused``)."""
    return env_backend(BACKEND_ENV, BACKENDS)


def compute_dtype(fields: torch.Tensor, qkv_weight: torch.Tensor, residual_weight: torch.Tensor) -> Optional[torch.dtype]:
    """The fused op's dtype for these operands: bf16 under CPU bf16 autocast (float32 or bf16
    ``fields``), float32 for float32 operands without autocast, else None (the op does not take them)."""
    if torch.is_autocast_enabled("cpu"):
        as_bf16 = torch.get_autocast_dtype("cpu") == torch.bfloat16 and fields.dtype in (torch.float32, torch.bfloat16)
        return torch.bfloat16 if as_bf16 else None
    float32 = fields.dtype == qkv_weight.dtype == residual_weight.dtype == torch.float32
    return torch.float32 if float32 else None


def fused_layer_applies(
    fields: torch.Tensor, qkv_weight: torch.Tensor, residual_weight: torch.Tensor, head_dim: int, dropout: float
) -> bool:
    """Whether :func:`fused_interacting_layer` serves these operands (see the module docstring)."""
    return (
        dropout == 0.0
        and compute_dtype(fields, qkv_weight, residual_weight) is not None
        and backend() == "fused"
        and kernel_applies(fields, head_dim)
    )


class _InteractingLayer(torch.autograd.Function):
    """Autograd for the op: keeps the input, the projections and the output for the backward."""

    @staticmethod
    def forward(
        ctx: Any, fields: torch.Tensor, qkv_weight: torch.Tensor, residual_weight: torch.Tensor, num_heads: int, head_dim: int
    ) -> torch.Tensor:
        out, qkv = torch.ops.iarm.interacting_layer_forward(
            fields, qkv_weight, residual_weight, num_heads, head_dim, CHUNK_ROWS[fields.dtype], True
        )
        ctx.save_for_backward(fields, qkv, out, qkv_weight, residual_weight)
        ctx.num_heads, ctx.head_dim = num_heads, head_dim
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None]:
        fields, qkv, out, qkv_weight, residual_weight = ctx.saved_tensors
        grad_fields, grad_qkv_weight, grad_residual_weight = torch.ops.iarm.interacting_layer_backward(
            grad, fields, qkv, out, qkv_weight, residual_weight, ctx.num_heads, ctx.head_dim, CHUNK_ROWS[fields.dtype]
        )
        return grad_fields, grad_qkv_weight, grad_residual_weight, None, None


def fused_interacting_layer(
    fields: torch.Tensor, qkv_weight: torch.Tensor, residual_weight: torch.Tensor, num_heads: int, head_dim: int
) -> torch.Tensor:
    """``B x M x K`` field vectors -> ``B x M x H d'``, ``ReLU(e~_m + W_Res e_m)`` (Eq. 7-11), with
    ``qkv_weight`` ``3 H d' x K`` (rows ``[q_1..q_H, k_1..k_H, v_1..v_H]``) and ``residual_weight``
    ``H d' x K``, in :func:`compute_dtype` (under bf16 autocast the operands are cast to bf16 here, as
    autocast's GEMMs would, and the output is bf16). Without a gradient to record, no
    ``B x M x 3 H d'`` projections are kept. Call only where :func:`fused_layer_applies` is True."""
    dtype = compute_dtype(fields, qkv_weight, residual_weight)
    assert dtype is not None, "fused_interacting_layer called where fused_layer_applies is False"
    fields, qkv_weight, residual_weight = (t.to(dtype) for t in (fields.contiguous(), qkv_weight, residual_weight))
    with torch.autocast("cpu", enabled=False):
        if torch.is_grad_enabled() and (fields.requires_grad or qkv_weight.requires_grad or residual_weight.requires_grad):
            return _InteractingLayer.apply(fields, qkv_weight, residual_weight, num_heads, head_dim)
        out, _ = torch.ops.iarm.interacting_layer_forward(
            fields, qkv_weight, residual_weight, num_heads, head_dim, CHUNK_ROWS[dtype], False
        )
    return out
