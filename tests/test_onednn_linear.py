"""The interacting layers' float32 projections through oneDNN (iarm_torchrec/kernels/onednn_linear.py)
against ``F.linear`` and float64: values, both gradients, when it applies, and that tracing keeps
it a leaf."""

import pytest
import torch
import torch.nn.functional as F

from iarm_torchrec.kernels import fused_layer as fl
from iarm_torchrec.kernels import onednn_linear as ol
from iarm_torchrec.modules.interacting import InteractingLayer
from layer_utils import assert_same_step, step_with_env, traced_leaf_calls

pytestmark = pytest.mark.skipif(not ol.onednn_available(), reason="this torch has no oneDNN (mkldnn)")


@pytest.mark.parametrize("shape, in_dim, out_dim", [((5, 7), 16, 192), ((64, 39), 64, 192), ((3,), 4, 6), ((2, 3, 4), 8, 5)])
def test_values_and_gradients_match_float64(shape, in_dim: int, out_dim: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(*shape, in_dim, requires_grad=True)
    w = torch.randn(out_dim, in_dim, requires_grad=True)
    grad = torch.randn(*shape, out_dim)
    assert ol.onednn_applies(x, w)
    out = ol.projection(x, w)
    out.backward(grad)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = F.linear(x64, w64)
    ref.backward(grad.double())
    assert out.dtype == torch.float32 and out.shape == (*shape, out_dim)
    # float32 sums of up to thousands of unit-size terms: within float32's own error of them
    for ours, exact in ((out, ref), (x.grad, x64.grad), (w.grad, w64.grad)):
        torch.testing.assert_close(ours.double(), exact, rtol=1e-4, atol=1e-4)
    assert type(out.grad_fn).__name__ == "_OneDnnLinearBackward"


def test_non_contiguous_input_gives_the_same_result() -> None:
    x = torch.randn(6, 5, 16).transpose(0, 1)  # 5 x 6 x 16, not contiguous
    w = torch.randn(12, 16)
    torch.testing.assert_close(ol.projection(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_other_dtypes_autocast_and_the_aten_setting_take_f_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    assert not ol.onednn_applies(x.double(), w.double())
    assert not ol.onednn_applies(x.bfloat16(), w.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not ol.onednn_applies(x, w)
        out = ol.projection(x, w)
    assert out.dtype == torch.bfloat16  # autocast's bf16 GEMM, as F.linear gives it
    torch.testing.assert_close(out, F.linear(x.bfloat16(), w.bfloat16()))
    monkeypatch.setenv(ol.BACKEND_ENV, "aten")
    assert not ol.onednn_applies(x, w)
    assert ol.projection(x, w).grad_fn is None
    monkeypatch.setenv(ol.BACKEND_ENV, "blas")
    with pytest.raises(ValueError, match="IARM_CPU_LINEAR='blas': use one of"):
        ol.backend()


def test_interacting_layer_trains_the_same_through_either_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer's output and every parameter's gradient equal to the F.linear path's (op by op: the
    fused layer, which multiplies by ATen's mm, is tested in test_fused_layer.py)."""
    monkeypatch.setenv(fl.BACKEND_ENV, "ops")
    torch.manual_seed(1)
    layer = InteractingLayer(in_dim=16, num_heads=2, head_dim=32)
    fields = torch.randn(33, 39, 16)
    onednn, aten = (step_with_env(monkeypatch, ol.BACKEND_ENV, name, layer, fields) for name in ("onednn", "aten"))
    assert_same_step(onednn, aten)


def test_traced_layer_keeps_projection_as_a_leaf_and_serving_traces_plain_aten() -> None:
    layer = InteractingLayer(in_dim=8, num_heads=2, head_dim=4, layer_norm=True)  # op by op
    assert traced_leaf_calls(layer, ol.projection, torch.randn(5, 6, 8)) == 1
