"""The ``precision`` training setting: bf16/fp16 autocast of the dense arches, fp32 weights, logits and loss."""

import sys
import tempfile
from pathlib import Path

import pytest
import torch

from iarm_torchrec.kernels.field_attention import bf16_arithmetic, kernel_enabled
from iarm_torchrec.models import ctr_train
from iarm_torchrec.models.ctr_train import CTRTrain, resolve_precision
from iarm_torchrec.modules.interacting import matmul_attention, multi_head_attention
from iarm_torchrec.train.settings import TrainSettings

sys.path.insert(0, str(Path(__file__).parent))
import test_gpu  # noqa: E402  (its model, batches and pipeline helper run on CPU too)


def test_setting_and_flag() -> None:
    assert TrainSettings().precision == "fp32"
    assert TrainSettings.from_args(["--precision", "bf16"]).precision == "bf16"
    with pytest.raises(ValueError, match="precision"):
        TrainSettings(precision="fp8")


def test_auto_is_bf16_only_where_the_hardware_computes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert TrainSettings.from_args(["--precision", "auto"]).precision == "auto"
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(ctr_train, "CPUINFO", cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu avx512f avx512bw avx512_vnni\n")  # AVX-512 alone emulates bf16
    assert resolve_precision("auto", "cpu") == "fp32"
    for flag in ("avx512_bf16", "amx_bf16"):
        cpuinfo.write_text(f"flags\t\t: fpu avx512f {flag} avx512_vnni\n")
        assert resolve_precision("auto", "cpu") == "bf16"
    cpuinfo.unlink()  # no /proc (not Linux)
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
        assert resolve_precision("auto", "cuda") == expected
    assert [resolve_precision(p, "cpu") for p in ("fp32", "bf16")] == ["fp32", "bf16"]  # a choice stays


def test_fp16_refused_on_cpu() -> None:
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        CTRTrain(test_gpu._config().build(torch.device("cpu")), "fp16", "cpu")


def test_fp32_is_unchanged_by_default() -> None:
    torch.manual_seed(0)
    a = CTRTrain(test_gpu._config().build(torch.device("cpu")))
    torch.manual_seed(0)
    b = CTRTrain(test_gpu._config().build(torch.device("cpu")), "fp32", "cpu")
    batch = test_gpu._batch(64, 0, torch.device("cpu"))
    assert torch.equal(a(batch)[1][1], b(batch)[1][1])


def test_bf16_autocasts_the_dense_arches_only() -> None:
    torch.manual_seed(0)
    fp32 = CTRTrain(test_gpu._config().build(torch.device("cpu")), "fp32", "cpu")
    bf16 = CTRTrain(test_gpu._config().build(torch.device("cpu")), "bf16", "cpu")
    bf16.load_state_dict(fp32.state_dict())
    seen = {}
    first = next(m for m in bf16.model.interest_arch.modules() if isinstance(m, torch.nn.Linear))
    first.register_forward_hook(lambda m, i, o: seen.update(linear=o.dtype))
    batch = test_gpu._batch(256, 0, torch.device("cpu"))
    loss, (_, logits, _) = bf16(batch)
    assert seen["linear"] == torch.bfloat16
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    loss.backward()
    assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32) for p in bf16.parameters())
    _, (_, expected, _) = fp32(batch)
    torch.testing.assert_close(logits, expected, atol=0.05, rtol=0.05)


@pytest.mark.skipif(not kernel_enabled(), reason="the CPU attention kernel is not built here")
def test_bf16_attention_reads_bf16_on_the_kernel() -> None:
    """Autocast's bf16 projections go to the kernel as they are and it returns bf16. Where it
    multiplies bf16 in bf16 (AVX512-BF16) it is within 1.5x ATen bf16's error from the float32
    attention of the same numbers; elsewhere it attends in float32: that attention, rounded."""
    torch.manual_seed(0)
    qkv = (torch.randn(20, 39, 3 * 2 * 32) / 32**0.25).bfloat16()
    out = multi_head_attention(qkv, 2, 32)
    assert out.dtype == torch.bfloat16
    exact = matmul_attention(qkv.float(), 2, 32)
    if bf16_arithmetic():
        aten_err = (matmul_attention(qkv, 2, 32).float() - exact).abs().max()
        assert (out.float() - exact).abs().max() <= 1.5 * aten_err
    else:
        torch.testing.assert_close(out.float(), exact, atol=1e-5, rtol=2**-8)


def test_bf16_residual_takes_the_attention_output_dtype() -> None:
    """The residual ``W_Res e_m`` is accumulated into the attention's output in place; under
    autocast that output is bf16 (from the kernel, or from ATen where the kernel does not serve
    the head size, as here with d' = 3): the operands are cast to it, values and gradients stay
    close to fp32."""
    from iarm_torchrec.modules.interacting import InteractingLayer

    torch.manual_seed(0)
    layer = InteractingLayer(in_dim=4, num_heads=2, head_dim=3)
    fields = torch.rand(8, 5, 4, requires_grad=True)
    expected = layer(fields)
    (grad_expected,) = torch.autograd.grad(expected.square().sum(), fields)  # smooth at ReLU's kink
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(fields)
    assert got.dtype == torch.bfloat16
    (grad_got,) = torch.autograd.grad(got.float().square().sum(), fields)
    torch.testing.assert_close(got.float(), expected, atol=0.03, rtol=0.03)
    torch.testing.assert_close(grad_got, grad_expected, atol=0.05, rtol=0.05)


def test_bf16_trains_through_the_pipeline_and_checkpoints() -> None:
    """TrainPipelineSparseDist traces CTRTrain with torch.fx: the autocast must not break it."""
    from iarm_torchrec.train.distributed import DistEnv

    env = DistEnv.from_environment("cpu")
    try:
        losses = test_gpu._pipeline_steps(env, "bf16", 8, Path(tempfile.mkdtemp()))
    finally:
        env.close()
    assert all(torch.isfinite(torch.tensor(losses))) and sum(losses[-4:]) < sum(losses[:4]), losses
