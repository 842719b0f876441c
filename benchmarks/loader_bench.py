"""Loader batches/s against the model's own step rate, on the same batches, in one run.

On the synthetic Criteo (13 dense + 26 sparse fields, generated and preprocessed by
:func:`iarm_torchrec.data.synthetic.make_synthetic_dataset`), for each batch size:

* ``loader``: :class:`~iarm_torchrec.data.loader.ShardedBatchLoader` alone (shuffled,
  ``drop_last``), without and with the prefetch thread: batches/s;
* ``step``: one IARM step (``IARMConfig`` defaults, ``embedding_dim`` 16; forward, backward,
  ``torch.optim.Adam``) on batches already in memory: steps/s;
* ``fed``: the same steps fed by the prefetching loader: what training actually gets;
* ``ratio``: loader batches/s (prefetch 0, the gather cost alone) / step steps/s (target >= 3).

Rates are medians over windows after a warm-up (see ``benchmarks/_common.py``), so a noisy
neighbour on a shared machine shows as one slow window. Results: ``benchmarks/results/loader.json``
and ``.md``.

Usage::

    python benchmarks/loader_bench.py                 # batch 1024 and 4096
    python benchmarks/loader_bench.py --quick         # a smoke run
"""

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StepClock, machine, window_rates  # noqa: E402

from iarm_torchrec.data.loader import ShardedBatchLoader  # noqa: E402
from iarm_torchrec.data.spec import FeatureSpec  # noqa: E402
from iarm_torchrec.data.synthetic import make_synthetic_dataset  # noqa: E402
from iarm_torchrec.models.ctr_train import CTRTrain
from iarm_torchrec.models.iarm import IARMConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 3.0


def _rate(clock: StepClock, warmup: int) -> float:
    """Median per-window events/s after ``warmup`` events."""
    return window_rates(clock.times, 1, warmup=warmup, windows=4)["median_samples_per_s"]


def _epochs(loader: ShardedBatchLoader) -> Iterator[Any]:
    """The loader's batches, epoch after epoch."""
    return itertools.chain.from_iterable(itertools.repeat(loader))


def loader_rate(data_dir: Path, batch_size: int, prefetch: int, batches: int) -> float:
    loader = ShardedBatchLoader(data_dir, "train", batch_size, shuffle=True, seed=0, prefetch=prefetch)
    clock = StepClock()
    for _ in itertools.islice(_epochs(loader), batches):
        clock.tick()
    return _rate(clock, warmup=2)


def step_rate(model: CTRTrain, optimizer: torch.optim.Optimizer, batches: Iterable[Any], steps: int) -> float:
    clock = StepClock()
    for batch in itertools.islice(batches, steps):
        optimizer.zero_grad()
        loss, _ = model(batch)
        loss.backward()
        optimizer.step()
        clock.tick()
    return _rate(clock, warmup=2)


def bench(data_dir: Path, batch_size: int, batches: int, steps: int) -> Dict[str, Any]:
    spec = FeatureSpec.load(data_dir)
    torch.manual_seed(0)
    model = CTRTrain(IARMConfig(spec.to_feature_config(16)).build())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = ShardedBatchLoader(data_dir, "train", batch_size, shuffle=True, seed=0, prefetch=2)
    in_memory = list(itertools.islice(iter(loader), steps))
    result = {
        "batch_size": batch_size,
        "loader_batches_per_s": loader_rate(data_dir, batch_size, 0, batches),
        "loader_prefetch2_batches_per_s": loader_rate(data_dir, batch_size, 2, batches),
        "step_steps_per_s": step_rate(model, optimizer, iter(in_memory), steps),
        "fed_steps_per_s": step_rate(model, optimizer, _epochs(loader), steps),
    }
    result["ratio"] = result["loader_batches_per_s"] / result["step_steps_per_s"]
    result["met"] = result["ratio"] >= TARGET_RATIO
    return result


def markdown(report: Dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Loader vs model step rate",
        "",
        f"Synthetic Criteo ({report['rows']:,} rows: 13 dense + 26 sparse fields), IARM with `IARMConfig` defaults,"
        f" embedding_dim 16, Adam, {report['torch_threads']} torch threads; {m['cpu']}, {m['cores']} cores,"
        f" load average {m['load_average']} at the start (a shared machine).",
        f"Target: loader >= {TARGET_RATIO:g}x steps/s.",
        "",
        "| batch | loader batches/s | loader + prefetch batches/s | IARM steps/s (batches in memory) "
        "| IARM steps/s fed by the loader | loader / step | target met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['batch_size']} | {r['loader_batches_per_s']:.1f} | {r['loader_prefetch2_batches_per_s']:.1f} "
            f"| {r['step_steps_per_s']:.2f} | {r['fed_steps_per_s']:.2f} | {r['ratio']:.1f}x "
            f"| {'yes' if r['met'] else 'no'} |"
        )
    bounds = ", ".join(f"{r['loader_batches_per_s'] / TARGET_RATIO:,.0f} steps/s at batch {r['batch_size']}"
                       for r in report["results"])
    lines += [
        "",
        f"One loader process (one thread for the gather) meets the {TARGET_RATIO:g}x target for any model step rate"
        f" up to {bounds}: a GPU step would have to be that fast before the loader, not the model, limited training.",
        "",
        "Regenerate: `python benchmarks/loader_bench.py`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: List[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000, help="synthetic rows")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--batches", type=int, default=60, help="batches timed per loader measurement")
    p.add_argument("--steps", type=int, default=14, help="IARM steps timed per measurement")
    p.add_argument("--data", type=Path, default=None, help="synthetic data folder (default: a temporary one)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 20k rows, batch 1024, few batches")
    p.add_argument("--out", type=Path, default=RESULTS, help="where loader.json and loader.md go")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.batch_sizes, args.batches, args.steps = 20_000, [1024], 12, 8
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = make_synthetic_dataset(args.data or Path(tmp) / "synthetic", rows=args.rows, seed=0)
        report = {
            "rows": args.rows,
            "torch_threads": torch.get_num_threads(),
            "machine": machine(),
            "target_ratio": TARGET_RATIO,
            "results": [bench(data_dir, b, args.batches, args.steps) for b in args.batch_sizes],
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loader.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "loader.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main(sys.argv[1:])
