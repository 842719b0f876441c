"""bf16 autocast's attention on CPU: the kernel reading bf16 ``qkv`` against a float32 copy of it.

Under ``--precision bf16`` the fused Q/K/V projection gives the attention a bf16 ``B x M x 3 H d'``
tensor. Two routes, both through this checkout's compiled kernel (whose float32 path is main's):

* ``copy``: what ``multi_head_attention`` did before the kernel read bf16: ``qkv.float()``, the
  float32 kernel, a float32 ``B x M x H d'`` output (autocast casts it to bf16 for the residual
  GEMM), and in backward the float32 gradient of ``qkv`` cast back to bf16;
* ``direct``: the kernel on the bf16 tensor, bf16 output and bf16 gradient.

Timed in one process, alternating which route goes first each round, so a busy neighbour slows
both alike: the attention op alone (``multi_head_attention`` on a bf16 leaf, forward, then
backward of a bf16 gradient) and one :class:`InteractingLayer` (``d = H d'`` in, as the 2nd and
3rd layers) under ``torch.autocast("cpu", torch.bfloat16)``, forward, then backward. Per round and
route the median of ``--calls`` calls of the calling thread's CPU time (``thread_time``) and wall
time; the report gives the medians over the rounds and the median of the per-round ratios
copy / direct. glibc's allocator is set to reuse freed memory, as ``iarm train`` sets it.

Usage (~1 minute at the defaults, one thread)::

    python benchmarks/bf16_attention_bench.py [--rounds 9]

Results: ``benchmarks/results/bf16_attention.json`` and ``.md``.
"""

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from iarm_torchrec.allocator import reuse_freed_memory  # noqa: E402
from iarm_torchrec.kernels import field_attention as fa  # noqa: E402
from iarm_torchrec.modules import interacting  # noqa: E402
from _common import alternation_summary, write_report  # noqa: E402

RESULTS = HERE / "results"
ROUTES = ("copy", "direct")
MEASURES = ("op_forward", "op_backward", "layer_forward", "layer_backward")


def copy_route(qkv: torch.Tensor, num_heads: int, head_dim: int, dropout: float = 0.0) -> torch.Tensor:
    """The attention as before: a float32 copy of ``B x M x 3 H d'`` bf16 ``qkv`` into the
    float32 kernel -> float32 ``B x M x H d'``."""
    return fa.field_attention(qkv.float(), num_heads, head_dim)


@contextlib.contextmanager
def route(name: str) -> Iterator[None]:
    """Inside, :class:`InteractingLayer` (and :func:`attention`) attend by route ``name``."""
    original = interacting.multi_head_attention
    interacting.multi_head_attention = copy_route if name == "copy" else original
    try:
        yield
    finally:
        interacting.multi_head_attention = original


def attention(qkv: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """The attention op as :class:`InteractingLayer` calls it (looked up at call time)."""
    return interacting.multi_head_attention(qkv, num_heads, head_dim)


def _clock(fn: Callable[[], Any]) -> Dict[str, float]:
    w0, c0 = time.perf_counter(), time.thread_time()
    fn()
    return {"cpu_ms": (time.thread_time() - c0) * 1e3, "wall_ms": (time.perf_counter() - w0) * 1e3}


def _one_round(layer: torch.nn.Module, fields: torch.Tensor, qkv: torch.Tensor, grad: torch.Tensor,
               heads: int, head_dim: int, calls: int) -> Dict[str, Dict[str, float]]:
    """Median over ``calls`` of each measure, for the route in force."""
    samples: Dict[str, List[Dict[str, float]]] = {m: [] for m in MEASURES}
    for _ in range(calls):
        x = qkv.clone().requires_grad_()
        box: Dict[str, torch.Tensor] = {}
        samples["op_forward"].append(_clock(lambda: box.update(out=attention(x, heads, head_dim))))
        g = grad.to(box["out"].dtype)  # the copy route's output is float32, so is its gradient
        samples["op_backward"].append(_clock(lambda: box["out"].backward(g)))
        layer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            samples["layer_forward"].append(_clock(lambda: box.update(out=layer(fields))))
        g = grad.to(box["out"].dtype)  # bf16 for both routes: the residual GEMM's output
        samples["layer_backward"].append(_clock(lambda: box["out"].backward(g)))
    return {m: {c: statistics.median(s[c] for s in v) for c in ("cpu_ms", "wall_ms")} for m, v in samples.items()}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--fields", type=int, default=39)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9, help="alternations of the two routes")
    parser.add_argument("--calls", type=int, default=5, help="calls per route, measure and round")
    parser.add_argument("--out", type=Path, default=RESULTS / "bf16_attention")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    reuse_freed_memory()  # as iarm train does (unless IARM_MALLOC=default)
    assert fa.load(), "the kernel did not build"
    B, M, H, D = args.batch, args.fields, args.heads, args.head_dim
    torch.manual_seed(0)
    layer = interacting.InteractingLayer(H * D, H, D)
    fields = torch.randn(B, M, H * D, requires_grad=True)
    qkv = (torch.randn(B, M, 3 * H * D) / D**0.25).bfloat16()
    grad = torch.randn(B, M, H * D)

    rounds: List[Dict[str, Dict[str, Dict[str, float]]]] = []
    for r in range(args.rounds):
        measured: Dict[str, Dict[str, Dict[str, float]]] = {}
        for name in ROUTES if r % 2 == 0 else ROUTES[::-1]:
            with route(name):
                measured[name] = _one_round(layer, fields, qkv, grad, H, D, args.calls)
        rounds.append(measured)
        print(f"round {r}: " + "; ".join(
            f"{n} " + " ".join(f"{m} {v[m]['cpu_ms']:.2f}" for m in MEASURES) for n, v in measured.items()), flush=True)

    report = {
        "settings": vars(args) | {"out": str(args.out)},
        "summary": alternation_summary(rounds, list(MEASURES), "copy", "direct"),
        "rounds": rounds,
    }
    write_report(args.out, report, markdown)
    return 0


def markdown(report: Dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# bf16 autocast's attention: the kernel reading bf16 (direct) against a float32 copy (copy)",
        "",
        f"Command: `python benchmarks/bf16_attention_bench.py --rounds {s['rounds']}`; commit {report['commit']}; "
        f"{report['cpu']}, torch {report['versions'].get('torch')}.",
        "",
        f"B = {s['batch']}, M = {s['fields']}, H = {s['heads']}, d' = {s['head_dim']}, {s['threads']} thread(s); "
        f"medians of {s['rounds']} alternating rounds, each the median of {s['calls']} calls. "
        "op: `multi_head_attention` on a bf16 `qkv`; layer: one `InteractingLayer` (d = H d') under bf16 autocast. "
        "CPU = the thread's CPU time.",
        "",
        "| measure | clock | copy ms | direct ms | copy / direct (median of per-round ratios) |",
        "|---|---|---|---|---|",
    ]
    for m, e in report["summary"].items():
        for clock in ("cpu", "wall"):
            lines.append(f"| {m.replace('_', ' ')} | {clock} | {e[f'copy_{clock}_ms']:.2f} | {e[f'direct_{clock}_ms']:.2f} | "
                         f"{e[f'speedup_{clock}']:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
