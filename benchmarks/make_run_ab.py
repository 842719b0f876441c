"""``make run``'s job now against the same job at an earlier commit, alternating, in one run.

Issue 14 asks for ``make run``'s throughput at least doubled. Its figure (~5,300 samples/s on 2
ranks) is from another day, so this measures the claim side by side: a ``git worktree`` of the
base commit runs the ``make run`` command of that time (``torchx run``: 2 gloo ranks, fp32, the
built-in synthetic data) and this checkout runs today's (``torchx run iarm.train -- --precision
auto``), one after the other, ``--pairs`` times, with the same virtual environment (the base
checkout is put first on ``PYTHONPATH``). Each run writes ``metrics.json``; the figure is the
samples/s of the epochs after the first (the first holds the kernel load and the warm-up), and the
wall time of the whole command beside it.

Run it where nothing else uses the cores (the ratio of each pair is the result: same moment,
same load)::

    python benchmarks/make_run_ab.py --base 0891559 --pairs 2    # ~4 min on 2 cores
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_report  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BASE_COMMAND = "torchx run"  # the Makefile's run target at 0891559, the commit before issue 14's work
COMMAND = "torchx run iarm.train -- --precision auto"  # the Makefile's run target now


def run_once(checkout: Path, command: str, base: bool, keep: Path) -> Dict[str, Any]:
    """One ``make run`` job from ``checkout`` (the previous job's ``runs/iarm`` moved to ``keep``
    first, since a run refuses a folder that holds another run's checkpoints); its per-epoch
    samples/s and wall. The checkout's own ``runs/iarm``, if any, is moved aside by :func:`main`
    before the first job and put back after the last."""
    runs = checkout / "runs" / "iarm"
    if runs.exists():
        shutil.move(str(runs), str(keep))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    if base:  # the base checkout's package and components before the editable install's
        env["PYTHONPATH"] = str(checkout)
    start = time.perf_counter()
    done = subprocess.run(command.split(), cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{command} in {checkout} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    metrics = json.loads((runs / "metrics.json").read_text())
    rates = [e["samples_per_s"] for e in metrics["epochs"]]
    return {"wall_s": wall, "samples_per_s": rates, "after_first": statistics.mean(rates[1:]),
            "test_auc": metrics.get("test_auc")}


def markdown(report: Dict[str, Any]) -> str:
    lines = [
        "# `make run` now against the commit before issue 14's work, alternating",
        "",
        f"Command: `python benchmarks/make_run_ab.py --base {report['base']} --pairs {len(report['pairs'])}`",
        "",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores; load before "
        f"{report['load_before']}; commit {report['machine']['git_commit']} against {report['base']}.",
        f"Base: `{report['base_command']}` (fp32, 2 ranks); now: `{report['command']}` (2 ranks).",
        "",
        "| pair | base samples/s (epochs after the first) | now samples/s | ratio | base wall s | now wall s | base / now test AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, p in enumerate(report["pairs"]):
        b, n = p["base"], p["now"]
        lines.append(
            f"| {i + 1} | {b['after_first']:,.0f} | {n['after_first']:,.0f} | **{n['after_first'] / b['after_first']:.2f}x** "
            f"| {b['wall_s']:.1f} | {n['wall_s']:.1f} | {b['test_auc']:.5f} / {n['test_auc']:.5f} |"
        )
    lines += ["", f"Median ratio of the pairs: **{report['median_ratio']:.2f}x** samples/s; wall time "
              f"{report['median_wall_ratio']:.2f}x (the wall holds each job's start-up and data check).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="0891559", help="the earlier commit (default: the one before issue 14's work)")
    parser.add_argument("--base-command", default=BASE_COMMAND)
    parser.add_argument("--command", default=COMMAND)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--name", default="make_run_ab")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        users_run, kept = REPO / "runs" / "iarm", Path(tmp) / "users-run"
        if users_run.exists():  # the checkout's own make run output: put back when done
            shutil.move(str(users_run), str(kept))
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(base), args.base], check=True)
        try:
            load_before = [round(x, 2) for x in os.getloadavg()]
            # an untimed run of each first: the base's kernel build and both data caches
            run_once(base, args.base_command, True, Path(tmp) / "warm-base")
            run_once(REPO, args.command, False, Path(tmp) / "warm-now")
            pairs: List[Dict[str, Any]] = []
            for i in range(args.pairs):
                pair = {"base": run_once(base, args.base_command, True, Path(tmp) / f"base-{i}")}
                pair["now"] = run_once(REPO, args.command, False, Path(tmp) / f"now-{i}")
                pairs.append(pair)
                print(f"pair {i + 1}: {pair['base']['after_first']:,.0f} -> {pair['now']['after_first']:,.0f} samples/s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False)
            if kept.exists():
                shutil.rmtree(users_run, ignore_errors=True)
                shutil.move(str(kept), str(users_run))
    report = {
        "base": args.base, "base_command": args.base_command, "command": args.command, "load_before": load_before,
        "machine": machine(), "pairs": pairs,
        "median_ratio": statistics.median(p["now"]["after_first"] / p["base"]["after_first"] for p in pairs),
        "median_wall_ratio": statistics.median(p["base"]["wall_s"] / p["now"]["wall_s"] for p in pairs),
    }
    write_report(REPO / "benchmarks" / "results" / args.name, report, markdown)


if __name__ == "__main__":
    main()
