"""The fused interacting layer (iarm_torchrec/kernels/fused_layer.py): values and every gradient
against the paper's equations in float64 (float32) and against the op-by-op layer under bf16 autocast,
when it applies, the layer and a traced model taking it, and the same numbers for any thread count."""

from typing import Tuple

import pytest
import torch

from iarm_torchrec.kernels import fused_layer as fl
from iarm_torchrec.kernels.field_attention import kernel_enabled
from iarm_torchrec.modules import interacting
from iarm_torchrec.modules.interacting import InteractingArch, InteractingLayer
from layer_utils import assert_same_step, step_with_env, traced_leaf_calls

pytestmark = pytest.mark.skipif(not kernel_enabled(), reason="IARM's CPU kernel is not built here (no C++ compiler)")


def reference(x: torch.Tensor, w_qkv: torch.Tensor, w_res: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """Eq. 7-11 written out per head in the input's dtype."""
    q, k, v = (x @ w_qkv.t()).split(heads * head_dim, dim=-1)
    per_head = []
    for h in range(heads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        alpha = torch.softmax(q[..., cols] @ k[..., cols].transpose(1, 2), dim=-1)  # Eq. 7-8
        per_head.append(alpha @ v[..., cols])  # Eq. 9
    return torch.relu(torch.cat(per_head, dim=-1) + x @ w_res.t())  # Eq. 10-11


def operands(batch: int, fields: int, in_dim: int, heads: int, head_dim: int, seed: int = 0) -> Tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, fields, in_dim, generator=generator)
    w_qkv = torch.randn(3 * heads * head_dim, in_dim, generator=generator) / in_dim**0.5
    w_res = torch.randn(heads * head_dim, in_dim, generator=generator) / in_dim**0.5
    return x, w_qkv, w_res


@pytest.mark.parametrize(
    "batch, fields, in_dim, heads, head_dim",
    [(70, 39, 16, 2, 32), (33, 39, 64, 2, 32), (5, 7, 8, 1, 8), (40, 13, 64, 4, 16), (1, 3, 4, 3, 4)],
)
def test_values_and_gradients_match_float64(batch: int, fields: int, in_dim: int, heads: int, head_dim: int) -> None:
    x, w_qkv, w_res = (t.requires_grad_() for t in operands(batch, fields, in_dim, heads, head_dim))
    assert fl.fused_layer_applies(x, w_qkv, w_res, head_dim, 0.0)
    out = fl.fused_interacting_layer(x, w_qkv, w_res, heads, head_dim)
    assert type(out.grad_fn).__name__ == "_InteractingLayerBackward"
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(grad)
    exact = [t.detach().double().requires_grad_() for t in (x, w_qkv, w_res)]
    expected = reference(*exact, heads, head_dim)
    expected.backward(grad.double())
    assert out.shape == (batch, fields, heads * head_dim) and out.dtype == torch.float32
    for ours, want in ((out, expected), (x.grad, exact[0].grad), (w_qkv.grad, exact[1].grad), (w_res.grad, exact[2].grad)):
        # float32 sums of up to ~2,700 terms: within float32's error of the largest of them
        torch.testing.assert_close(ours.double(), want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_scoring_keeps_no_projections_and_gives_the_same_numbers() -> None:
    x, w_qkv, w_res = operands(70, 39, 16, 2, 32)
    with torch.no_grad():
        out, qkv = torch.ops.iarm.interacting_layer_forward(x, w_qkv, w_res, 2, 32, fl.CHUNK_ROWS[torch.float32], False)
        scored = fl.fused_interacting_layer(x, w_qkv, w_res, 2, 32)
    assert qkv.numel() == 0 and scored.grad_fn is None
    trained = fl.fused_interacting_layer(x, w_qkv.requires_grad_(), w_res.requires_grad_(), 2, 32)
    assert torch.equal(out, scored) and torch.equal(scored, trained.detach())


def test_same_numbers_for_any_thread_count() -> None:
    """Outputs and the input's gradient bit for bit; the weights' gradients are summed per core, so
    only within float32 rounding."""
    before = torch.get_num_threads()
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            x, w_qkv, w_res = (t.requires_grad_() for t in operands(200, 39, 64, 2, 32))
            out = fl.fused_interacting_layer(x, w_qkv, w_res, 2, 32)
            out.square().sum().backward()
            results.append((out.detach(), x.grad, w_qkv.grad, w_res.grad))
        finally:
            torch.set_num_threads(before)
    (out1, dx1, dq1, dr1), (out2, dx2, dq2, dr2) = results
    assert torch.equal(out1, out2) and torch.equal(dx1, dx2)
    for one, two in ((dq1, dq2), (dr1, dr2)):
        torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-6 * float(one.abs().max()))


def test_when_it_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    x, w_qkv, w_res = operands(4, 5, 8, 2, 8)
    assert fl.fused_layer_applies(x, w_qkv, w_res, 8, 0.0)
    assert not fl.fused_layer_applies(x, w_qkv, w_res, 8, 0.1)  # attention dropout: op by op
    assert not fl.fused_layer_applies(x, w_qkv, w_res, 3, 0.0)  # a head size the kernel has no build for
    assert not fl.fused_layer_applies(x.double(), w_qkv.double(), w_res.double(), 8, 0.0)
    assert not fl.fused_layer_applies(x.bfloat16(), w_qkv.bfloat16(), w_res.bfloat16(), 8, 0.0)  # bf16: autocast's
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fl.fused_layer_applies(x, w_qkv, w_res, 8, 0.0)
        assert fl.compute_dtype(x, w_qkv, w_res) == torch.bfloat16
        assert not fl.fused_layer_applies(x.double(), w_qkv, w_res, 8, 0.0)
    with torch.autocast("cpu", dtype=torch.float16):
        assert not fl.fused_layer_applies(x, w_qkv, w_res, 8, 0.0)
    monkeypatch.setenv(fl.BACKEND_ENV, "ops")
    assert not fl.fused_layer_applies(x, w_qkv, w_res, 8, 0.0)
    monkeypatch.setenv(fl.BACKEND_ENV, "chunked")
    with pytest.raises(ValueError, match="IARM_CPU_LAYER='chunked': use one of"):
        fl.backend()


@pytest.mark.parametrize("in_dim", [16, 64])
def test_bf16_autocast_matches_the_op_by_op_layer_within_bf16(monkeypatch: pytest.MonkeyPatch, in_dim: int) -> None:
    """Under bf16 autocast the fused layer gives a bf16 output and float32 gradients for the float32
    weights and input; its values and gradients lie as close to the float32 layer's as the op-by-op
    bf16 layer's do (both multiply in bf16 with float32 sums)."""
    torch.manual_seed(4)
    layer = InteractingLayer(in_dim=in_dim, num_heads=2, head_dim=32)
    fields = torch.randn(300, 39, in_dim)

    exact, fused, ops = (
        step_with_env(monkeypatch, fl.BACKEND_ENV, backend, layer, fields, autocast)
        for backend, autocast in (("ops", False), ("fused", True), ("ops", True))
    )
    assert fused.grad_fn == "_InteractingLayerBackward" and ops.grad_fn != fused.grad_fn
    assert fused.dtype == ops.dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in fused.grads)
    for ours, theirs, want in zip((fused.out, *fused.grads), (ops.out, *ops.grads), (exact.out, *exact.grads)):
        scale = float(want.abs().max())
        ours_error, theirs_error = float((ours - want).abs().max()) / scale, float((theirs - want).abs().max()) / scale
        assert ours_error < 0.02 and ours_error < 2 * theirs_error + 1e-3, (ours_error, theirs_error)


def test_bad_operands_are_named() -> None:
    x, w_qkv, w_res = operands(4, 5, 8, 2, 8)
    with pytest.raises(RuntimeError, match=r"w_qkv is \[48, 8\], expected \[24, 8\]"):
        torch.ops.iarm.interacting_layer_forward(x, w_qkv, w_res, 1, 8, 32, False)
    with pytest.raises(RuntimeError, match="x must be a contiguous float32 or bfloat16 CPU tensor"):
        torch.ops.iarm.interacting_layer_forward(x.double(), w_qkv, w_res, 2, 8, 32, False)
    with pytest.raises(RuntimeError, match="the weights must have x's dtype BFloat16, got Float"):
        torch.ops.iarm.interacting_layer_forward(x.bfloat16(), w_qkv, w_res, 2, 8, 32, False)
    with pytest.raises(RuntimeError, match="rows must be positive"):
        torch.ops.iarm.interacting_layer_forward(x, w_qkv, w_res, 2, 8, 0, False)


def test_the_paper_layer_takes_it_and_trains_as_op_by_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default layer goes through the fused op; with IARM_CPU_LAYER=ops through the ops, with
    the same output and gradients; a layer-normed layer never takes it."""
    torch.manual_seed(2)
    layer = InteractingLayer(in_dim=16, num_heads=2, head_dim=32)
    fields = torch.randn(45, 39, 16)
    fused, ops = (step_with_env(monkeypatch, fl.BACKEND_ENV, backend, layer, fields) for backend in ("fused", "ops"))
    assert fused.grad_fn == "_InteractingLayerBackward" and ops.grad_fn != "_InteractingLayerBackward"
    assert_same_step(fused, ops)
    monkeypatch.setenv(fl.BACKEND_ENV, "fused")
    normed = InteractingLayer(in_dim=16, num_heads=2, head_dim=32, layer_norm=True)
    assert type(normed(fields).grad_fn).__name__ != "_InteractingLayerBackward"


def test_traced_arch_keeps_the_layer_a_leaf() -> None:
    """TrainPipelineSparseDist traces the model: the paper's layer is one leaf there, and the
    serving trace (plain ATen) does not contain it."""
    arch = InteractingArch(in_dim=8, num_layers=2, num_heads=2, head_dim=4)
    assert traced_leaf_calls(arch, interacting.attention_residual_relu, torch.randn(5, 6, 8)) == 2
