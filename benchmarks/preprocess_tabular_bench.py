"""Preprocessing rate and peak memory: the Criteo reader from before issue 12 (a checkout of that
commit, ``--baseline``, run side by side in the same run), ``--dataset criteo`` and ``--dataset
tabular`` with the Criteo schema (since issue 12 both read through the shipped schema with pyarrow,
so they should match) on the same generated Criteo TSV, and the schema path on a generated Parquet
click log (``examples/click_log``: a multi-hot list column, a timestamp giving hour and weekday,
hashed and counted fields).

Each run is :func:`iarm_torchrec.data.preprocess.preprocess` in a child process (``workers`` worker
processes, vocabularies with a counting pass), timed end to end (plan, count, encode), with the
peak RSS summed over the process tree sampled every 0.2 s (``preprocess_bench.run_preprocess``).
Results: ``benchmarks/results/preprocess_tabular.{json,md}``.

Run::

    git worktree add --detach /tmp/before-12 20c0525   # the last commit with the old Criteo reader
    .venv/bin/python benchmarks/preprocess_tabular_bench.py --baseline /tmp/before-12

(about five minutes on two cores; without ``--baseline`` the old reader's rows are left out).
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from preprocess_bench import generate, run_preprocess  # noqa: E402


def _example_generator() -> Any:
    spec = importlib.util.spec_from_file_location("example_generate", ROOT / "examples" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def run(dataset: str, source: str, out: Path, options: Dict[str, Any], code_dir: Optional[Path] = None) -> Dict[str, Any]:
    result = run_preprocess(Path(source), out, options, dataset, code_dir)
    n = sum(result["rows"].values())
    return {"seconds": result["seconds"], "rows": n, "rows_per_s": n / result["seconds"],
            "peak_rss_tree_mb": result["peak_rss_tree_mb"]}  # fmt: skip


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--criteo-rows", type=int, default=2_000_000)
    parser.add_argument("--parquet-rows", type=int, default=3_000_000)
    parser.add_argument("--row-group", type=int, default=250_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-mb", type=float, default=16.0)
    parser.add_argument("--baseline", type=Path, help="a checkout of the commit before issue 12 (its Criteo reader)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tabular-bench-"))
    criteo_schema = str(ROOT / "iarm_torchrec" / "data" / "schemas" / "criteo.yaml")
    click_schema = str(ROOT / "examples" / "click_log" / "schema.yaml")

    start = time.perf_counter()
    tsv = work / "train.txt"
    generate(tsv, args.criteo_rows, 250_000)
    gen_tsv = time.perf_counter() - start
    start = time.perf_counter()
    _example_generator().click_log(work / "clicks", args.parquet_rows, files=2, row_group=args.row_group)
    gen_parquet = time.perf_counter() - start
    options = {"workers": args.workers, "chunk_mb": args.chunk_mb}
    runs = []
    plan = [
        ("criteo TSV, --dataset criteo", "criteo", str(tsv), {}, None),
        ("criteo TSV, --dataset tabular (Criteo schema)", "tabular", str(work), {"schema": criteo_schema}, None),
        ("click log Parquet, --dataset tabular", "tabular", str(work / "clicks"), {"schema": click_schema}, None),
    ]
    if args.baseline:  # before and after the current code, so that drifting load shows
        before = ("criteo TSV, before issue 12 (old reader)", "criteo", str(tsv), {}, args.baseline)
        plan = [before, *plan[:2], before, plan[2]]
    for name, dataset, source, extra, code_dir in plan:
        result = run(dataset, source, work / "out", {**options, **extra}, code_dir)
        runs.append({"name": name, "dataset": dataset, "code": str(code_dir or "current"), **result,
                     "load_average": os.getloadavg()[0]})  # fmt: skip
        print(json.dumps(runs[-1]), flush=True)
    reference = [r for r in runs if r["code"] != "current"] or [r for r in runs if r["dataset"] == "criteo"]
    rate = sum(r["rows_per_s"] for r in reference) / len(reference)
    rss = sum(r["peak_rss_tree_mb"] for r in reference) / len(reference)
    for r in runs:
        r["rate_vs_reference"] = r["rows_per_s"] / rate
        r["rss_vs_reference"] = r["peak_rss_tree_mb"] / rss
    report = {
        "criteo_rows": args.criteo_rows,
        "criteo_mb": tsv.stat().st_size / 2**20,
        "parquet_rows": args.parquet_rows,
        "parquet_mb": sum(p.stat().st_size for p in (work / "clicks").iterdir()) / 2**20,
        "row_group": args.row_group,
        "generate_seconds": {"criteo_tsv": gen_tsv, "parquet": gen_parquet},
        "options": options,
        "runs": runs,
        "cpus": len(os.sched_getaffinity(0)),
        "reference": reference[0]["name"],
        "baseline_commit": _commit(args.baseline) if args.baseline else None,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "preprocess_tabular.json").write_text(json.dumps(report, indent=2) + "\n")
    ref = "before issue 12" if args.baseline else "--dataset criteo"
    lines = [
        "# Preprocessing: the Criteo reader before issue 12, --dataset criteo and the Criteo schema (pyarrow)",
        "",
        f"Inputs: a generated Criteo TSV of {args.criteo_rows:,} rows ({report['criteo_mb']:.0f} MiB) and a generated "
        f"Parquet click log of {args.parquet_rows:,} rows in {args.row_group:,}-row row groups ({report['parquet_mb']:.0f} MiB, "
        "examples/click_log: a list<string> tags column, a timestamp giving hour and weekday, a hashed item id). "
        f"{args.workers} workers, {args.chunk_mb:g} MiB chunks, vocabularies with a counting pass, on {report['cpus']} CPUs "
        "that other jobs may share: compare the rows within this table (same run, same load), not with other days' figures."
        + (f" The old reader is commit {report['baseline_commit']}, run from its own checkout; it ran before and after "
           "the current code and the reference figures are the mean of its two runs." if args.baseline else ""),
        "",
        f"| run | rows | seconds | rows/s | rate vs {ref} | peak RSS, all processes (MiB) | RSS vs {ref} | load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['name']} | {r['rows']:,} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | {r['rate_vs_reference']:.2f}x "
            f"| {r['peak_rss_tree_mb']:.0f} | {r['rss_vs_reference']:.2f}x | {r['load_average']:.1f} |"
        )
    lines += ["", "Produced by `benchmarks/preprocess_tabular_bench.py`."]
    (RESULTS / "preprocess_tabular.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _commit(checkout: Path) -> str:
    return subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main(sys.argv[1:])
