"""One field-attention layer through the compiled CPU kernel: this checkout's against a baseline's.

Both builds are loaded into one process (the baseline's source, by default ``main``'s committed
``iarm_torchrec/kernels/field_attention.cpp``, is registered under the op namespace ``iarm_base``
so that it does not clash with this checkout's ``iarm``), and each round times the forward and
the backward of each build in turn, alternating which goes first, so that a busy neighbour on the
shared machine slows both alike. Per round and build: the median of ``--calls`` calls, as wall
time and as the calling thread's CPU time (``thread_time``, which does not count time the thread
was descheduled); the report gives the medians over the rounds and the ratio baseline / this.

GFLOP/s: ``4 H M^2 d'`` FLOPs per sample forward (scores and weighted sum, multiply-adds x 2) and
twice that backward, softmax not counted (the count of ``benchmarks/size_bench.py``).

Usage (~1 minute at the defaults, one thread)::

    python benchmarks/attention_kernel_bench.py [--baseline-rev main] [--rounds 9] [--dtype bfloat16]

``--dtype bfloat16`` times both builds on bf16 ``qkv`` and gradient, as ``--precision bf16`` gives them
(a kernel built with AVX512-BF16 multiplies it in bf16, so its GFLOP/s are bf16's).

Results: ``benchmarks/results/attention_kernel.json`` and ``.md``.
"""

import argparse
import hashlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from iarm_torchrec.kernels import field_attention as fa  # noqa: E402
from _common import alternation_summary, write_report  # noqa: E402

RESULTS = HERE / "results"
SOURCE_PATH = "iarm_torchrec/kernels/field_attention.cpp"


def load_baseline(rev: str) -> Any:
    """Builds ``rev``'s kernel source with its ops renamed to ``torch.ops.iarm_base``."""
    source = subprocess.run(["git", "show", f"{rev}:{SOURCE_PATH}"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    renamed = source.replace("TORCH_LIBRARY(iarm,", "TORCH_LIBRARY(iarm_base,").replace(
        "TORCH_LIBRARY_IMPL(iarm,", "TORCH_LIBRARY_IMPL(iarm_base,"
    )
    assert renamed.count("iarm_base") == 2, "the baseline's op registration is not where it was expected"
    digest = hashlib.sha1(renamed.encode()).hexdigest()[:10]
    path = Path(tempfile.gettempdir()) / f"iarm_field_attention_base_{digest}.cpp"
    path.write_text(renamed)
    from torch.utils.cpp_extension import load as load_extension

    fa._put_ninja_on_path()
    capability = torch.backends.cpu.get_cpu_capability()
    load_extension(
        name=f"iarm_field_attention_base_{capability.lower()}_{digest}",
        sources=[str(path)],
        extra_cflags=["-O3", "-fopenmp", *fa.ARCH_FLAGS.get(capability, ())],
        extra_ldflags=["-fopenmp"],
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.iarm_base


def _time(fn: Callable[[], Any], calls: int) -> Dict[str, float]:
    wall, cpu = [], []
    for _ in range(calls):
        w0, c0 = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"wall_ms": statistics.median(wall) * 1e3, "cpu_ms": statistics.median(cpu) * 1e3}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-rev", default="main", help="git revision whose kernel is the baseline")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--fields", type=int, default=39)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="of qkv and the gradient")
    parser.add_argument("--rounds", type=int, default=9, help="alternations of baseline and this checkout")
    parser.add_argument("--calls", type=int, default=5, help="calls per build, direction and round")
    parser.add_argument("--out", type=Path, default=RESULTS / "attention_kernel")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    assert fa.load(), "this checkout's kernel did not build"
    ops = {"baseline": load_baseline(args.baseline_rev), "this": torch.ops.iarm}
    B, M, H, D = args.batch, args.fields, args.heads, args.head_dim
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    qkv = (torch.randn(B, M, 3 * H * D) / D**0.25).to(dtype)
    gout = torch.randn(B, M, H * D).to(dtype)

    results = {name: [op.field_attention_forward(qkv, H, D), op.field_attention_backward(gout, qkv, H, D)] for name, op in ops.items()}
    differences = {
        "forward_max_abs": (results["this"][0].float() - results["baseline"][0].float()).abs().max().item(),
        "backward_max_abs": (results["this"][1].float() - results["baseline"][1].float()).abs().max().item(),
    }
    rounds: List[Dict[str, Dict[str, Dict[str, float]]]] = []
    for r in range(args.rounds):
        order = list(ops) if r % 2 == 0 else list(ops)[::-1]
        measured: Dict[str, Dict[str, Dict[str, float]]] = {}
        for name in order:
            op = ops[name]
            measured[name] = {
                "forward": _time(lambda: op.field_attention_forward(qkv, H, D), args.calls),
                "backward": _time(lambda: op.field_attention_backward(gout, qkv, H, D), args.calls),
            }
        rounds.append(measured)
        print(f"round {r}: " + ", ".join(f"{n} fwd {m['forward']['wall_ms']:.2f} bwd {m['backward']['wall_ms']:.2f} ms" for n, m in measured.items()), flush=True)

    flops = {"forward": 4 * H * M * M * D * B, "backward": 8 * H * M * M * D * B}
    summary: Dict[str, Dict[str, float]] = alternation_summary(rounds, ["forward", "backward"], "baseline", "this")
    for direction, entry in summary.items():
        entry["flops"] = flops[direction]
        for name in ops:
            for clock in ("wall", "cpu"):
                entry[f"{name}_{clock}_gflops"] = flops[direction] / entry[f"{name}_{clock}_ms"] / 1e6

    report = {
        "settings": vars(args) | {"out": str(args.out)},
        "baseline_commit": subprocess.run(["git", "rev-parse", args.baseline_rev], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "differences": differences,
        "summary": summary,
        "rounds": rounds,
    }
    write_report(args.out, report, markdown)
    return 0


def markdown(report: Dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# One field-attention layer, compiled CPU kernel: this checkout against a baseline",
        "",
        f"Command: `python benchmarks/attention_kernel_bench.py --baseline-rev {s['baseline_rev']} --rounds {s['rounds']} "
        f"--dtype {s.get('dtype', 'float32')}`; "
        f"commit {report['commit']}, baseline {s['baseline_rev']} = {report['baseline_commit'][:7]}; {report['cpu']}, "
        f"torch {report['versions'].get('torch')}.",
        "",
        f"B = {s['batch']}, M = {s['fields']}, H = {s['heads']}, d' = {s['head_dim']}, {s.get('dtype', 'float32')}, "
        f"{s['threads']} thread(s); "
        f"medians of {s['rounds']} alternating rounds, each the median of {s['calls']} calls. "
        "CPU = the thread's CPU time (not counting time descheduled by other jobs). "
        "GFLOP/s at 4 H M^2 d' FLOPs a sample forward, twice that backward.",
        "",
        "| direction | clock | baseline ms | this ms | speedup (median of per-round ratios) | baseline GFLOP/s | this GFLOP/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for direction, e in report["summary"].items():
        for clock in ("wall", "cpu"):
            lines.append(
                f"| {direction} | {clock} | {e[f'baseline_{clock}_ms']:.2f} | {e[f'this_{clock}_ms']:.2f} | {e[f'speedup_{clock}']:.2f}x | "
                f"{e[f'baseline_{clock}_gflops']:.1f} | {e[f'this_{clock}_gflops']:.1f} |"
            )
    d = report["differences"]
    lines += ["", f"Largest difference from the baseline: forward {d['forward_max_abs']:.2e}, backward {d['backward_max_abs']:.2e}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
