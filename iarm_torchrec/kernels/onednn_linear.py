"""``x @ W^T`` in float32 on CPU through oneDNN, for the interacting layers' tall projections.

torch sends every exact float32 ``mm`` on CPU to its BLAS (MKL in the x86 wheels) and uses oneDNN
only for bf16/fp16 or a reduced-precision float32 mode. On the development VM's AMD EPYC (Zen 4)
MKL runs the Q/K/V projection's shape (``39,936 x 64 x 192`` at batch 1024, 39 fields) at 49-104
GFLOP/s and the first layer's ``K = 16`` at 35-82, where oneDNN's linear runs them at 84-149 and
60-121 (one and two threads): in A/B runs of the benchmark, ``iarm predict`` 1.09-1.20x and fp32
training 1.04-1.09x (``docs/performance.md``). :func:`projection` calls oneDNN's linear op directly
(``torch.ops.mkldnn._linear_pointwise``, the op torch's own compiler emits for CPU linear layers),
in oneDNN's default exact float32 math. Its backward computes the input's gradient the same way
and the weight's by ``mm`` (oneDNN is slower than MKL there: the input would have to be
transposed).

Everywhere else (not float32, CPU autocast on, not CPU, a torch built without oneDNN, or
``IARM_CPU_LINEAR=aten`` in the environment) it is ``torch.nn.functional.linear``.

Example::

    >>> x, w = torch.randn(4, 3, 8), torch.randn(6, 8)
    >>> torch.allclose(projection(x, w), torch.nn.functional.linear(x, w), atol=1e-6)
    True
"""

from typing import Any, Tuple

import torch
import torch.nn.functional as F

from iarm_torchrec.kernels import env_backend

BACKEND_ENV = "IARM_CPU_LINEAR"
BACKENDS = ("onednn", "aten")


def backend() -> str:
    """The float32 CPU projection backend asked for by ``IARM_CPU_LINEAR`` (default ``onednn``)."""
    return env_backend(BACKEND_ENV, BACKENDS)


def onednn_available() -> bool:
    """Whether this torch has oneDNN and its linear op."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`projection` takes oneDNN for these operands (see the module docstring)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and backend() == "onednn"
        and onednn_available()
    )


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    """``x @ W^T`` by oneDNN; backward: ``dx = g @ W`` by oneDNN, ``dW = g^T x`` by ``mm``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        ctx.save_for_backward(x, weight)
        return _onednn_linear(x, weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = _onednn_linear(grad, weight.t().contiguous()) if ctx.needs_input_grad[0] else None
        grad_weight = grad.flatten(0, -2).t() @ x.flatten(0, -2) if ctx.needs_input_grad[1] else None
        return grad_x, grad_weight


def projection(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight^T`` (``... x K`` -> ``... x N``, ``weight`` ``N x K``, no bias): oneDNN for
    float32 on CPU (:func:`onednn_applies`), else ``F.linear``. Callers that ``torch.fx``-trace
    make it a leaf (``torch.fx.wrap``): the choice reads the operands' dtype and device."""
    if onednn_applies(x, weight):
        return _OneDnnLinear.apply(x, weight)
    return F.linear(x, weight)
