"""The compiled CPU field-attention kernel (iarm_torchrec/kernels) against ATen and float64.

The kernel computes Eq. 7-10 in float32 with samples in SIMD lanes and its own ``exp``; each
check compares it with :func:`matmul_attention` run in float64 on the same numbers, and bounds
its error by the error float32 ATen makes on the same input (so the kernel is never less exact
than the path it replaces), plus a small absolute floor. bf16 input (CPU autocast's projections)
is read directly. Where the CPU has AVX512-BF16 the kernel multiplies it in bf16 (as ATen's bf16
attention does), and its error against float64 is bounded by ATen's bf16 error; elsewhere its
results must be exactly the float32 kernel's on the widened input, rounded to bf16.
"""

import logging
from typing import List, Tuple

import pytest
import torch

from iarm_torchrec.kernels import field_attention as fa
from iarm_torchrec.modules import interacting
from iarm_torchrec.modules.interacting import InteractingLayer, matmul_attention, multi_head_attention


@pytest.fixture(scope="module", autouse=True)
def built_kernel() -> None:
    assert fa.load(), "the field-attention kernel did not build: a C++ compiler and ninja are needed"


def _forward_backward(fn, qkv: torch.Tensor, grad: torch.Tensor, heads: int, head_dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    x = qkv.clone().requires_grad_()
    out = fn(x, heads, head_dim)
    out.backward(grad)
    return out.detach(), x.grad


@pytest.mark.parametrize(
    "batch, fields, heads, head_dim",
    [(1, 1, 1, 4), (15, 2, 1, 8), (16, 39, 2, 8), (17, 39, 2, 8), (100, 7, 3, 16), (33, 100, 2, 32), (5, 13, 1, 64)],
)
def test_matches_float64_reference(batch: int, fields: int, heads: int, head_dim: int) -> None:
    _check_against_float64(batch, fields, heads, head_dim)


@pytest.mark.parametrize("head_dim", [4, 32])
def test_every_field_count_across_the_block_padding(head_dim: int) -> None:
    """The kernel works in register blocks of 5 fields by 4 (fields padded to a multiple of 5 for
    rows and of 4 for columns, the buffers to the larger): every remainder of both, either one
    the larger, and a partial block of samples."""
    for fields in range(1, 22):
        _check_against_float64(17, fields, 2, head_dim)


def _check_against_float64(batch: int, fields: int, heads: int, head_dim: int) -> None:
    torch.manual_seed(batch * 1000 + fields)
    qkv = torch.randn(batch, fields, 3 * heads * head_dim, dtype=torch.float64) / head_dim**0.25
    grad = torch.randn(batch, fields, heads * head_dim, dtype=torch.float64)
    ref_out, ref_grad = _forward_backward(matmul_attention, qkv, grad, heads, head_dim)
    aten_out, aten_grad = _forward_backward(matmul_attention, qkv.float(), grad.float(), heads, head_dim)
    out, in_grad = _forward_backward(fa.field_attention, qkv.float(), grad.float(), heads, head_dim)

    assert out.shape == (batch, fields, heads * head_dim) and in_grad.shape == qkv.shape
    for mine, aten, ref in ((out, aten_out, ref_out), (in_grad, aten_grad, ref_grad)):
        err = (mine.double() - ref).abs().max().item()
        aten_err = (aten.double() - ref).abs().max().item()
        assert err <= 4 * aten_err + 1e-6 * (1 + ref.abs().max().item()), (err, aten_err)


def test_saturated_softmax_stays_finite_and_exact() -> None:
    """Scores in the thousands: exp underflows for all but the winning field."""
    torch.manual_seed(0)
    qkv = torch.randn(40, 39, 3 * 2 * 8, dtype=torch.float64) * 20
    grad = torch.randn(40, 39, 16, dtype=torch.float64)
    ref_out, ref_grad = _forward_backward(matmul_attention, qkv, grad, 2, 8)
    aten_out, aten_grad = _forward_backward(matmul_attention, qkv.float(), grad.float(), 2, 8)
    out, in_grad = _forward_backward(fa.field_attention, qkv.float(), grad.float(), 2, 8)
    assert torch.isfinite(out).all() and torch.isfinite(in_grad).all()
    assert (out.double() - ref_out).abs().max() <= 4 * (aten_out.double() - ref_out).abs().max() + 1e-5
    assert (in_grad.double() - ref_grad).abs().max() <= 4 * (aten_grad.double() - ref_grad).abs().max() + 1e-4


def test_rows_are_a_convex_combination_of_values() -> None:
    """Eq. 9: with every value vector equal to c, each output is c (the weights sum to 1)."""
    qkv = torch.randn(20, 11, 3 * 2 * 4)
    qkv[..., 16:] = 0.5
    out = fa.field_attention(qkv, 2, 4)
    assert torch.allclose(out, torch.full_like(out, 0.5), atol=1e-6)


def test_multi_head_attention_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def spy(qkv: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
        calls.append((qkv.dtype, head_dim))
        return fa.field_attention(qkv, heads, head_dim)

    monkeypatch.setattr(interacting, "field_attention", spy)
    x32 = torch.randn(4, 6, 3 * 2 * 8)
    multi_head_attention(x32, 2, 8)
    assert calls == [(torch.float32, 8)]
    # float64, an unsupported head size, or IARM_CPU_ATTENTION=aten: the ATen path, bit for bit
    x64 = x32.double()
    assert torch.equal(multi_head_attention(x64, 2, 8), matmul_attention(x64, 2, 8))
    x3 = torch.randn(4, 6, 3 * 2 * 3)
    assert torch.equal(multi_head_attention(x3, 2, 3), matmul_attention(x3, 2, 3))
    monkeypatch.setenv(fa.BACKEND_ENV, "aten")
    assert torch.equal(multi_head_attention(x32, 2, 8), matmul_attention(x32, 2, 8))
    assert len(calls) == 1


def test_layer_with_kernel_equals_layer_with_aten(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(3)
    layer = InteractingLayer(in_dim=16, num_heads=2, head_dim=8)
    fields = torch.randn(64, 39, 16)

    def run() -> Tuple[torch.Tensor, torch.Tensor]:
        layer.zero_grad()
        out = layer(fields)
        out.square().sum().backward()
        return out.detach(), layer.qkv.weight.grad.clone()

    out_kernel, grad_kernel = run()
    monkeypatch.setenv(fa.BACKEND_ENV, "aten")
    out_aten, grad_aten = run()
    assert torch.allclose(out_kernel, out_aten, atol=1e-5)
    assert torch.allclose(grad_kernel, grad_aten, rtol=1e-4, atol=1e-4)


def test_bad_backend_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fa.BACKEND_ENV, "fast")
    with pytest.raises(ValueError, match="IARM_CPU_ATTENTION='fast': use one of"):
        fa.backend()


def test_bad_shapes_name_the_dimensions() -> None:
    with pytest.raises(RuntimeError, match=r"last dimension 47 is not 3 \* heads \(2\) \* head_dim \(8\)"):
        torch.ops.iarm.field_attention_forward(torch.randn(2, 3, 47), 2, 8)
    with pytest.raises(RuntimeError, match="head_dim must be one of 4, 8, 16, 32, 64, got 3"):
        torch.ops.iarm.field_attention_forward(torch.randn(2, 3, 18), 2, 3)
    with pytest.raises(RuntimeError, match="float32 or bfloat16 CPU tensor"):
        torch.ops.iarm.field_attention_forward(torch.randn(2, 3, 48, dtype=torch.float64), 2, 8)
    with pytest.raises(RuntimeError, match="grad_out is Float, qkv is BFloat16"):
        torch.ops.iarm.field_attention_backward(torch.randn(2, 3, 16), torch.randn(2, 3, 48).bfloat16(), 2, 8)


def test_failed_build_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import torch.utils.cpp_extension as cpp_extension

    def broken(**kwargs: object) -> None:
        raise RuntimeError("Error building extension 'iarm_field_attention': c++: not found")

    monkeypatch.setattr(cpp_extension, "load", broken)
    monkeypatch.setattr(fa, "_loaded", {})
    with caplog.at_level(logging.WARNING, logger=fa.__name__):
        assert not fa.kernel_applies(torch.randn(2, 3, 48), 8)
        assert not fa.kernel_applies(torch.randn(2, 3, 48), 8)
    warnings = [r.getMessage() for r in caplog.records if "could not be built" in r.getMessage()]
    assert len(warnings) == 1 and "c++: not found" in warnings[0] and "IARM_CPU_ATTENTION=aten" in warnings[0]
    x = torch.randn(2, 3, 48)
    assert torch.equal(multi_head_attention(x, 2, 8), matmul_attention(x, 2, 8))


def _on_one_and_two_threads(
    qkv: torch.Tensor, grad: torch.Tensor, heads: int, head_dim: int
) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The kernel's output and ``qkv``'s gradient with 1, then 2 torch threads."""
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(_forward_backward(fa.field_attention, qkv, grad, heads, head_dim))
    finally:
        torch.set_num_threads(threads)
    return results


def test_same_result_for_any_thread_count_and_layout() -> None:
    """Samples are independent blocks, so the thread count cannot change a bit; a non-contiguous
    input is copied, not misread."""
    torch.manual_seed(5)
    qkv = torch.randn(70, 39, 3 * 2 * 8)
    one, two = _on_one_and_two_threads(qkv, torch.randn(70, 39, 16), 2, 8)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    strided = qkv.transpose(0, 1).contiguous().transpose(0, 1)  # same values, not contiguous
    assert not strided.is_contiguous()
    assert torch.equal(fa.field_attention(strided, 2, 8), one[0])


BF16_SHAPES = [(1, 1, 1, 4), (17, 39, 2, 8), (33, 39, 2, 32), (100, 7, 3, 16), (5, 13, 1, 64), (17, 21, 2, 4), (20, 100, 2, 32)]


@pytest.mark.parametrize("batch, fields, heads, head_dim", BF16_SHAPES)
def test_bf16_is_the_float32_kernel_on_the_widened_input_rounded(batch: int, fields: int, heads: int, head_dim: int) -> None:
    """Without bf16 arithmetic, bf16 -> float32 is exact and the attention is float32 either way, so a
    bf16 ``qkv`` gives bit for bit the float32 kernel's output and gradient on ``qkv.float()``, each
    rounded to bf16 as ``.to(torch.bfloat16)`` rounds (nearest even); blocks of 16 samples and a
    partial one, and column counts with and without a remainder of 16 (the vector transposes)."""
    if fa.bf16_arithmetic():
        pytest.skip("this build multiplies bf16 in bf16 (AVX512-BF16): test_bf16_arithmetic_* check it")
    torch.manual_seed(batch * 1000 + fields)
    qkv = (torch.randn(batch, fields, 3 * heads * head_dim) / head_dim**0.25).bfloat16()
    grad = torch.randn(batch, fields, heads * head_dim).bfloat16()
    out, in_grad = _forward_backward(fa.field_attention, qkv, grad, heads, head_dim)
    out32, in_grad32 = _forward_backward(fa.field_attention, qkv.float(), grad.float(), heads, head_dim)
    assert out.dtype == torch.bfloat16 and in_grad.dtype == torch.bfloat16
    assert torch.equal(out, out32.to(torch.bfloat16))
    assert torch.equal(in_grad, in_grad32.to(torch.bfloat16))


def test_bf16_rounds_ties_to_even() -> None:
    """Equal scores (q = 0) weigh the 2 fields exactly 1/2 each, so every output, and every
    value's gradient (half of each field's grad_out), is the exact midpoint of two numbers one
    bf16 step apart: a tie, which rounds to the neighbour with the even last mantissa bit, down
    or up."""
    first = torch.tensor([1.0, 1.0078125, -3.0, 256.0], dtype=torch.bfloat16)  # 1.0078125 = 1 + 2^-7
    second = torch.tensor([1.0078125, 1.015625, -3.015625, 258.0], dtype=torch.bfloat16)
    even = torch.tensor([1.0, 1.015625, -3.0, 256.0], dtype=torch.bfloat16)  # down, up, down, down
    qkv = torch.zeros(1, 2, 3 * 4, dtype=torch.bfloat16)
    qkv[0, 0, 8:], qkv[0, 1, 8:] = first, second
    x = qkv.clone().requires_grad_()
    out = fa.field_attention(x, 1, 4)
    out.backward(torch.stack([first, second]).unsqueeze(0))
    assert torch.equal(out[0, 0], even) and torch.equal(out[0, 1], even)
    assert torch.equal(x.grad[0, 0, 8:], even) and torch.equal(x.grad[0, 1, 8:], even)
    assert not x.grad[..., :8].any()  # equal keys: the scores' gradients are 0


def _needs_bf16_arithmetic() -> None:
    if not fa.bf16_arithmetic():
        pytest.skip("bf16 is multiplied in bf16 only where the CPU has AVX512-BF16 (avx512_bf16 in "
                    "/proc/cpuinfo); this build widens it to float32, which the bit-equality test checks")


def _bf16_errors(batch: int, fields: int, heads: int, head_dim: int):
    """(kernel, ATen bf16) errors against float64 on the same bf16 numbers, as (max, RMS) pairs
    for the output and for qkv's gradient."""
    torch.manual_seed(batch * 1000 + fields)
    qkv = (torch.randn(batch, fields, 3 * heads * head_dim) / head_dim**0.25).bfloat16()
    grad = torch.randn(batch, fields, heads * head_dim).bfloat16()
    out, in_grad = _forward_backward(fa.field_attention, qkv, grad, heads, head_dim)
    assert out.dtype == torch.bfloat16 and in_grad.dtype == torch.bfloat16
    ref_out, ref_grad = _forward_backward(matmul_attention, qkv.double(), grad.double(), heads, head_dim)
    aten_out, aten_grad = _forward_backward(matmul_attention, qkv, grad, heads, head_dim)

    def err(x: torch.Tensor, ref: torch.Tensor) -> Tuple[float, float]:
        d = x.double() - ref
        return d.abs().max().item(), d.square().mean().sqrt().item()

    return [(err(mine, ref), err(aten, ref)) for mine, aten, ref in ((out, aten_out, ref_out), (in_grad, aten_grad, ref_grad))]


def _assert_as_exact_as_aten_bf16(batch: int, fields: int, heads: int, head_dim: int) -> None:
    """The bf16 kernel rounds the weights and their gradient to bf16 before their products, as ATen
    does (it also rounds the scores and dO V^T, which the kernel keeps in float32), so its error is
    ATen's kind: RMS within 10% of ATen's and max within 1.5x (measured over these shapes: up to
    1.03x and 1.26x), output and gradient."""
    for (mine_max, mine_rms), (aten_max, aten_rms) in _bf16_errors(batch, fields, heads, head_dim):
        assert mine_rms <= 1.1 * aten_rms + 1e-7, (mine_rms, aten_rms)
        assert mine_max <= 1.5 * aten_max + 1e-7, (mine_max, aten_max)


@pytest.mark.parametrize("batch, fields, heads, head_dim", BF16_SHAPES)
def test_bf16_arithmetic_as_exact_as_aten_bf16(batch: int, fields: int, heads: int, head_dim: int) -> None:
    _needs_bf16_arithmetic()
    _assert_as_exact_as_aten_bf16(batch, fields, heads, head_dim)


@pytest.mark.parametrize("head_dim", [4, 8, 16, 32, 64])
def test_bf16_arithmetic_every_field_count_across_the_padding(head_dim: int) -> None:
    """Field counts 1-21: the sums over fields run in pairs (an odd count's last pair padded with
    0), besides the register blocks' padding; a partial block of samples."""
    _needs_bf16_arithmetic()
    for fields in range(1, 22):
        _assert_as_exact_as_aten_bf16(17, fields, 2, head_dim)


def test_bf16_arithmetic_same_result_for_any_thread_count() -> None:
    torch.manual_seed(6)
    qkv = (torch.randn(70, 39, 3 * 2 * 32) / 32**0.25).bfloat16()
    one, two = _on_one_and_two_threads(qkv, torch.randn(70, 39, 64).bfloat16(), 2, 32)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_bf16_arithmetic_only_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """-mavx512bf16 only for AVX512 CPUs listing avx512_bf16 (others would fault on vdpbf16ps), and
    the build's name changes with the flags, so a build of either kind is never loaded as the other."""
    capability = torch.backends.cpu.get_cpu_capability()
    assert fa.bf16_arithmetic() == (capability == "AVX512" and "avx512_bf16" in fa.cpu_flags())
    monkeypatch.setattr(fa, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    with_dot = fa.build_flags("AVX512")
    assert "-mavx512bf16" in with_dot and "-mavx512bf16" not in fa.build_flags("AVX2")
    monkeypatch.setattr(fa, "cpu_flags", lambda: frozenset({"avx512f"}))
    without = fa.build_flags("AVX512")
    assert "-mavx512bf16" not in without
    assert fa.extension_name("AVX512", with_dot) != fa.extension_name("AVX512", without)


def test_bf16_against_the_aten_reference() -> None:
    """Values and gradients of the bf16 kernel against float64 ATen on the same bf16 numbers,
    within bf16's resolution; float64 ``gradcheck`` of the ATen reference is what the float32
    checks above lean on, and this one ties the bf16 path to the same reference."""
    torch.manual_seed(7)
    heads, head_dim = 2, 32
    qkv = (torch.randn(48, 39, 3 * heads * head_dim) / head_dim**0.25).bfloat16()
    grad = torch.randn(48, 39, heads * head_dim).bfloat16()
    out, in_grad = _forward_backward(fa.field_attention, qkv, grad, heads, head_dim)
    ref_out, ref_grad = _forward_backward(matmul_attention, qkv.double(), grad.double(), heads, head_dim)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(in_grad.double(), ref_grad, atol=2e-2, rtol=2e-2)
    # no worse than ATen's own bf16 attention (bmm + softmax in bf16) on the same input
    aten_out, aten_grad = _forward_backward(matmul_attention, qkv, grad, heads, head_dim)
    for mine, aten, ref in ((out, aten_out, ref_out), (in_grad, aten_grad, ref_grad)):
        assert (mine.double() - ref).abs().max() <= (aten.double() - ref).abs().max()


def test_bf16_dispatch_reads_bf16_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    """``multi_head_attention`` hands bf16 to the kernel as it is (no float32 copy); float16,
    which the kernel does not read, goes as a float32 copy and returns float32."""
    calls = []

    def spy(qkv: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
        calls.append(qkv.dtype)
        return fa.field_attention(qkv, heads, head_dim)

    monkeypatch.setattr(interacting, "field_attention", spy)
    x = torch.randn(4, 6, 3 * 2 * 8)
    assert multi_head_attention(x.bfloat16(), 2, 8).dtype == torch.bfloat16
    assert multi_head_attention(x.half(), 2, 8).dtype == torch.float32
    assert calls == [torch.bfloat16, torch.float32]


def test_bf16_autocast_layer_matches_float32_within_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """An interacting layer under CPU bf16 autocast: the projections give the kernel bf16, the
    attention output stays bf16 into the residual GEMM; values and the weights' float32
    gradients stay within bf16's resolution of the float32 layer's, and the ATen path under
    the same autocast gives the same within the same tolerance."""
    torch.manual_seed(3)
    layer = InteractingLayer(in_dim=16, num_heads=2, head_dim=8)
    fields = torch.randn(64, 39, 16)

    def run(autocast: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        layer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = layer(fields)
        out.float().square().sum().backward()
        return out.detach().float(), layer.qkv.weight.grad.clone()

    out32, grad32 = run(False)
    out_kernel, grad_kernel = run(True)
    monkeypatch.setenv(fa.BACKEND_ENV, "aten")
    out_aten, grad_aten = run(True)
    assert layer.qkv.weight.grad.dtype == torch.float32
    for out, grad in ((out_kernel, grad_kernel), (out_aten, grad_aten)):
        torch.testing.assert_close(out, out32, atol=0.05, rtol=0.02)
        torch.testing.assert_close(grad, grad32, atol=0.5, rtol=0.05)
