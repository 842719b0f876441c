"""IARM's multi-head field attention (Eq. 7-10) as a compiled CPU kernel, built on first use.

On CPU, attention over CTR's few fields (``M`` about 10-100) with small heads is slow in ATen:
per sample the matrices are too small for GEMM libraries and a softmax over rows of ``M`` floats
leaves vector lanes idle. ``field_attention.cpp`` instead puts one sample in each SIMD lane, so
every step is a full-width vector operation (see ``docs/performance.md`` for the figures).

The kernel is compiled by :func:`torch.utils.cpp_extension.load` the first time it is needed
(15-60 s, the longer on a busy machine; the build is cached under ``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``) for this machine's vector instructions (AVX-512, AVX2 or plain).
When it cannot be built (no C++ compiler, say), one warning is logged and
:func:`iarm_torchrec.modules.interacting.multi_head_attention` keeps using ATen's ``bmm`` and
``softmax``. ``IARM_CPU_ATTENTION=aten`` in the environment skips the kernel altogether.

Example::

    >>> qkv = torch.randn(3, 5, 3 * 2 * 4)
    >>> from iarm_torchrec.modules.interacting import matmul_attention
    >>> not kernel_applies(qkv, 4) or torch.allclose(field_attention(qkv, 2, 4), matmul_attention(qkv, 2, 4), atol=1e-5)
    True
"""

import hashlib
import logging
import os
import sys
import shutil
import threading
from pathlib import Path
from typing import Any, Dict, FrozenSet, Tuple

import torch

from iarm_torchrec.kernels import env_backend

logger: logging.Logger = logging.getLogger(__name__)

SOURCE: Path = Path(__file__).with_name("field_attention.cpp")
SUPPORTED_HEAD_DIMS: Tuple[int, ...] = (4, 8, 16, 32, 64)
BACKEND_ENV = "IARM_CPU_ATTENTION"
BACKENDS = ("kernel", "aten")
# compiler flags for torch's detected CPU capability; anything else builds for plain x86-64/ARM
ARCH_FLAGS: Dict[str, Tuple[str, ...]] = {
    "AVX512": ("-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"),
    "AVX2": ("-mavx2", "-mfma"),
}

# added to AVX512's flags where the CPU has AVX512-BF16 (the kernel is built on the machine that runs
# it): the bf16 path then multiplies in bf16 (vdpbf16ps); other CPUs would fault on the instruction
BF16_DOT_FLAGS: Tuple[str, ...] = ("-mavx512bf16",)

_lock = threading.Lock()
_loaded: Dict[str, bool] = {}


def backend() -> str:
    """The CPU attention backend asked for by ``IARM_CPU_ATTENTION`` (default ``kernel``)."""
    return env_backend(BACKEND_ENV, BACKENDS)


def load() -> bool:
    """Builds (first call only) and loads the kernel into ``torch.ops.iarm``.

    Returns:
        True when ``torch.ops.iarm.field_attention_forward`` is usable; False, after one
        logged warning, when the build failed.
    """
    if "ok" not in _loaded:  # the lock only matters until the first build has finished
        with _lock:
            if "ok" not in _loaded:
                _loaded["ok"] = _build()
    return _loaded["ok"]


def cpu_flags() -> FrozenSet[str]:
    """The CPU's feature flags as Linux lists them in ``/proc/cpuinfo`` (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def build_flags(capability: str) -> Tuple[str, ...]:
    """Compiler flags for torch's CPU capability, with :data:`BF16_DOT_FLAGS` on AVX512 where the
    CPU has ``avx512_bf16``."""
    flags = ARCH_FLAGS.get(capability, ())
    if capability == "AVX512" and "avx512_bf16" in cpu_flags():
        flags += BF16_DOT_FLAGS
    return flags


def extension_name(capability: str, flags: Tuple[str, ...]) -> str:
    """The build's name under ``TORCH_EXTENSIONS_DIR``. The source's contents and path, the flags and
    the environment are in it: checkouts, versions and virtual environments on one machine share
    that directory, and under one name each would rebuild over the other's build (ninja rebuilds
    when the source's path, flags or torch's include paths differ), blocking the other's processes
    on the build lock meanwhile."""
    key = (
        SOURCE.read_bytes()
        + str(SOURCE.resolve()).encode()
        + " ".join(flags).encode()
        + sys.prefix.encode()
        + torch.__version__.encode()
    )
    return f"iarm_field_attention_{capability.lower()}_{hashlib.sha1(key).hexdigest()[:10]}"


def _build() -> bool:
    capability = torch.backends.cpu.get_cpu_capability()
    flags = build_flags(capability)
    name = extension_name(capability, flags)
    try:
        from torch.utils.cpp_extension import load as load_extension

        _put_ninja_on_path()
        logger.info("loading IARM's CPU attention kernel %s (the first time it is built: 15-60 s)", name)
        load_extension(
            name=name,
            sources=[str(SOURCE)],
            # -fopenmp: at::parallel_for is inline OpenMP; the libgomp.so.1 it links is the one
            # torch has already loaded, so the kernel runs on torch's threads (torch.set_num_threads)
            extra_cflags=["-O3", "-fopenmp", *flags],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    except Exception as error:  # any build or load failure leaves the ATen path, which is correct
        logger.warning(
            "IARM's CPU attention kernel could not be built (%s: %s); using ATen bmm + softmax, which is "
            "slower. Install a C++ compiler and the `ninja` package, or set %s=aten to silence this.",
            type(error).__name__,
            (str(error).strip().splitlines() or [""])[-1],
            BACKEND_ENV,
        )
        return False
    return True


def _put_ninja_on_path() -> None:
    """torch's extension builder runs ``ninja``; the ``ninja`` wheel may sit outside ``PATH``
    (a virtual environment that is not activated)."""
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def bf16_arithmetic() -> bool:
    """Whether the loaded kernel multiplies bf16 input in bf16 (built with :data:`BF16_DOT_FLAGS`)
    rather than widening it to float32. Call after :func:`load` returned True."""
    return bool(torch.ops.iarm.field_attention_bf16_arithmetic())


def kernel_enabled() -> bool:
    """The backend is not set to ``aten`` and the kernel is built (building it if needed)."""
    return backend() == "kernel" and load()


def kernel_applies(qkv: torch.Tensor, head_dim: int) -> bool:
    """Whether :func:`field_attention` serves this input: float32 or bfloat16 on CPU, a supported
    head size, and :func:`kernel_enabled`. (float16 is not read directly: callers convert it.)"""
    return (
        qkv.device.type == "cpu"
        and qkv.dtype in (torch.float32, torch.bfloat16)
        and head_dim in SUPPORTED_HEAD_DIMS
        and kernel_enabled()
    )


class _FieldAttention(torch.autograd.Function):
    """Autograd for the kernel: the backward recomputes the attention probabilities from ``qkv``
    (saved as it came, so a bf16 ``qkv`` is kept in bf16) and returns the gradient in its dtype."""

    @staticmethod
    def forward(ctx: Any, qkv: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
        out = torch.ops.iarm.field_attention_forward(qkv, num_heads, head_dim)
        ctx.save_for_backward(qkv)
        ctx.num_heads, ctx.head_dim = num_heads, head_dim
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> Tuple[torch.Tensor, None, None]:
        (qkv,) = ctx.saved_tensors
        grad = torch.ops.iarm.field_attention_backward(grad_out, qkv, ctx.num_heads, ctx.head_dim)
        return grad, None, None


def field_attention(qkv: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Eq. 7-10 by the compiled kernel: ``B x M x 3 H d'`` fused projections (columns
    ``[q_1..q_H, k_1..k_H, v_1..v_H]``) -> ``B x M x H d'``, the heads' ``sum_k alpha_{m,k} v_k``
    side by side, with ``alpha = softmax_k <q_m, k_k>`` (plain inner product, no scale).

    ``qkv`` is float32 or bfloat16; the output and ``qkv``'s gradient have its dtype, and no float32
    copy of a bf16 ``qkv`` or of its gradient is made. Float32 is attended in float32. bf16, where
    the CPU has AVX512-BF16 (:func:`bf16_arithmetic`), is multiplied in bf16 as ATen's bf16 attention
    is: float32 sums of bf16 products, the attention weights and their gradient rounded to bf16
    before their products, softmax and its gradient's row sums in float32 (about as exact as ATen's,
    ~1.5x faster). Elsewhere bf16 is widened exactly and attended in float32, and the bf16 output and
    gradient are the float32 ones rounded to nearest even (``.to(torch.bfloat16)``). Call only where
    :func:`kernel_applies` is True."""
    return _FieldAttention.apply(qkv, num_heads, head_dim)
