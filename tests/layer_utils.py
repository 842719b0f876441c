"""Shared by the interacting layer's backend tests: one forward and backward of a layer, and what
tracing makes of it."""

from typing import Any, Callable, NamedTuple, Tuple

import pytest
import torch
import torchrec.fx
from torch import nn

from iarm_torchrec.modules.interacting import plain_aten_attention


class LayerStep(NamedTuple):
    """What one step of a layer gave: its output's autograd node, the output's dtype, the output
    (as float32), and the gradients of the input and of every parameter (in ``parameters()`` order)."""

    grad_fn: str
    dtype: torch.dtype
    out: torch.Tensor
    grads: Tuple[torch.Tensor, ...]


def layer_step(layer: nn.Module, fields: torch.Tensor, autocast: bool = False) -> LayerStep:
    """``layer`` on a copy of ``fields`` (under CPU bf16 autocast if asked), loss = sum of squares of
    the output, backward; the layer's old gradients are cleared first."""
    layer.zero_grad()
    x = fields.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = layer(x)
    out.float().square().sum().backward()
    grads = (x.grad, *(p.grad for p in layer.parameters()))
    return LayerStep(type(out.grad_fn).__name__, out.dtype, out.detach().float(), grads)


def step_with_env(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, layer: nn.Module, fields: torch.Tensor,
                  autocast: bool = False) -> LayerStep:
    """:func:`layer_step` with the environment ``variable`` (a backend switch) set to ``value``."""
    monkeypatch.setenv(variable, value)
    return layer_step(layer, fields, autocast)


def assert_same_step(one: LayerStep, two: LayerStep, rtol: float = 1e-4, atol: float = 1e-4) -> None:
    """The two steps' outputs and gradients are equal within the tolerances."""
    for a, b in zip((one.out, *one.grads), (two.out, *two.grads)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def traced_leaf_calls(module: nn.Module, leaf: Callable[..., Any], fields: torch.Tensor) -> int:
    """How often ``module`` traced by ``torch.fx`` (as ``TrainPipelineSparseDist`` traces it) calls the
    function ``leaf``, after checking that the traced module computes what ``module`` does, and that
    traced for a serving artifact (:func:`plain_aten_attention`) it never calls ``leaf`` and computes
    the same too."""
    traced = torchrec.fx.symbolic_trace(module)
    torch.testing.assert_close(traced(fields), module(fields))
    with plain_aten_attention():
        plain = torchrec.fx.symbolic_trace(module)
    assert leaf not in [n.target for n in plain.graph.nodes if n.op == "call_function"]
    torch.testing.assert_close(plain(fields), module(fields), rtol=1e-5, atol=1e-5)
    return [n.target for n in traced.graph.nodes if n.op == "call_function"].count(leaf)
