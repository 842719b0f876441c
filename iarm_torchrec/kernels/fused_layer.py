"""A whole float32 interacting layer on CPU as one compiled op, chunk by chunk (paper Eq. 7-11).

``ReLU(attention(x W_qkv^T) + x W_res^T)`` computed by ``torch.ops.iarm.interacting_layer_forward``
(built with the attention kernel, :mod:`iarm_torchrec.kernels.field_attention`): the batch is cut
into chunks of :data:`CHUNK_ROWS` samples and each core takes whole chunks, from the projection GEMM
through the attention kernel and the residual GEMM to the ReLU, instead of every op being split
across the cores in turn. A chunk's projections (about 1 MB at 32 samples, 39 fields, 2 heads of 32)
are still in the core's cache when the kernel reads them, and no GEMM shares the memory bus with the
other core's half of it. On the development VM (AMD EPYC, 2 cores) a 64-wide layer's forward and
backward at batch 1024 took 38-40 ms against 45-46 ms op by op, the forward alone 11.6 against 13.2-14.2
(``docs/performance.md``). The backward runs the same chunks; each core sums its chunks' weight
gradients and the cores' sums are added, so the weight gradients' float rounding depends on the thread
count (the outputs and the input gradient do not).

It serves float32 CPU input without autocast, a head size the kernel takes, and no attention dropout,
with the kernel built and ``IARM_CPU_LAYER`` unset or ``fused``; ``IARM_CPU_LAYER=ops`` keeps the
layer op by op (:class:`~iarm_torchrec.modules.interacting.InteractingLayer`).

Example::

    >>> x, w_qkv, w_res = torch.randn(5, 7, 8), torch.randn(3 * 2 * 4, 8), torch.randn(2 * 4, 8)
    >>> not fused_layer_applies(x, w_qkv, w_res, 4, 0.0) or fused_interacting_layer(x, w_qkv, w_res, 2, 4).shape == (5, 7, 8)
    True
"""

from typing import Any, Tuple

import torch

from iarm_torchrec.kernels import env_backend
from iarm_torchrec.kernels.field_attention import kernel_applies

BACKEND_ENV = "IARM_CPU_LAYER"
BACKENDS = ("fused", "ops")

# samples per chunk: 16, 32 and 64 measured alike (38-40 ms a layer); 32 keeps a chunk's
# projections (39 x 192 floats a sample) in a core's 1-2 MB L2
CHUNK_ROWS = 32


def backend() -> str:
    """The CPU layer backend asked for by ``IARM_CPU_LAYER`` (default ``fused``)."""
    return env_backend(BACKEND_ENV, BACKENDS)


def fused_layer_applies(
    fields: torch.Tensor, qkv_weight: torch.Tensor, residual_weight: torch.Tensor, head_dim: int, dropout: float
) -> bool:
    """Whether :func:`fused_interacting_layer` serves these operands (see the module docstring)."""
    return (
        dropout == 0.0
        and fields.dtype == torch.float32
        and qkv_weight.dtype == torch.float32
        and residual_weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
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
            fields, qkv_weight, residual_weight, num_heads, head_dim, CHUNK_ROWS, True
        )
        ctx.save_for_backward(fields, qkv, out, qkv_weight, residual_weight)
        ctx.num_heads, ctx.head_dim = num_heads, head_dim
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None]:
        fields, qkv, out, qkv_weight, residual_weight = ctx.saved_tensors
        grad_fields, grad_qkv_weight, grad_residual_weight = torch.ops.iarm.interacting_layer_backward(
            grad, fields, qkv, out, qkv_weight, residual_weight, ctx.num_heads, ctx.head_dim, CHUNK_ROWS
        )
        return grad_fields, grad_qkv_weight, grad_residual_weight, None, None


def fused_interacting_layer(
    fields: torch.Tensor, qkv_weight: torch.Tensor, residual_weight: torch.Tensor, num_heads: int, head_dim: int
) -> torch.Tensor:
    """``B x M x K`` field vectors -> ``B x M x H d'``, ``ReLU(e~_m + W_Res e_m)`` (Eq. 7-11), with
    ``qkv_weight`` ``3 H d' x K`` (rows ``[q_1..q_H, k_1..k_H, v_1..v_H]``) and ``residual_weight``
    ``H d' x K``. Without a gradient to record, no ``B x M x 3 H d'`` projections are kept. Call only
    where :func:`fused_layer_applies` is True."""
    fields = fields.contiguous()
    if torch.is_grad_enabled() and (fields.requires_grad or qkv_weight.requires_grad or residual_weight.requires_grad):
        return _InteractingLayer.apply(fields, qkv_weight, residual_weight, num_heads, head_dim)
    out, _ = torch.ops.iarm.interacting_layer_forward(
        fields, qkv_weight, residual_weight, num_heads, head_dim, CHUNK_ROWS, False
    )
    return out
