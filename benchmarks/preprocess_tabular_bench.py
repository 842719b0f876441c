"""Preprocessing rate and peak memory: ``--dataset criteo`` vs ``--dataset tabular`` with the Criteo
schema (since issue 12 both read through the shipped schema with pyarrow, so they should match) on
the same generated Criteo TSV, and the schema path on a generated Parquet
click log (``examples/click_log``: a multi-hot list column, a timestamp giving hour and weekday,
hashed and counted fields).

Each run is :func:`iarm_torchrec.data.preprocess.preprocess` in a child process (``workers`` worker
processes, vocabularies with a counting pass), timed end to end (plan, count, encode), with the
peak RSS summed over the process tree sampled every 0.2 s (``preprocess_bench.run_preprocess``).
Results: ``benchmarks/results/preprocess_tabular.{json,md}``.

Run: ``.venv/bin/python benchmarks/preprocess_tabular_bench.py --criteo-rows 1000000 --parquet-rows 3000000``
(the defaults are scaled so that the whole run stays within about five minutes on two busy cores).
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

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


def run(dataset: str, source: str, out: Path, options: Dict[str, Any]) -> Dict[str, Any]:
    result = run_preprocess(Path(source), out, options, dataset)
    n = sum(result["rows"].values())
    return {"seconds": result["seconds"], "rows": n, "rows_per_s": n / result["seconds"],
            "peak_rss_tree_mb": result["peak_rss_tree_mb"]}  # fmt: skip


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--criteo-rows", type=int, default=1_000_000)
    parser.add_argument("--parquet-rows", type=int, default=3_000_000)
    parser.add_argument("--row-group", type=int, default=250_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-mb", type=float, default=16.0)
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
    for name, dataset, source, extra in (
        ("criteo TSV, --dataset criteo", "criteo", str(tsv), {}),
        ("criteo TSV, schema (pyarrow)", "tabular", str(tsv), {"schema": criteo_schema}),
        ("criteo TSV, --dataset criteo (again)", "criteo", str(tsv), {}),
        ("click log Parquet, schema (pyarrow)", "tabular", str(work / "clicks"), {"schema": click_schema}),
    ):
        if extra.get("schema") == criteo_schema:  # the schema names train.txt in the folder
            source = str(work)
        result = run(dataset, source, work / "out", {**options, **extra})
        runs.append({"name": name, "dataset": dataset, **result, "load_average": os.getloadavg()[0]})
        print(json.dumps(runs[-1]), flush=True)
    builtin = sum(r["rows_per_s"] for r in runs if r["dataset"] == "criteo") / 2
    for r in runs:
        r["relative_to_builtin_criteo"] = r["rows_per_s"] / builtin
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
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "preprocess_tabular.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Preprocessing: --dataset criteo vs --dataset tabular with the Criteo schema (pyarrow)",
        "",
        f"Inputs: a generated Criteo TSV of {args.criteo_rows:,} rows ({report['criteo_mb']:.0f} MiB) and a generated "
        f"Parquet click log of {args.parquet_rows:,} rows in {args.row_group:,}-row row groups ({report['parquet_mb']:.0f} MiB, "
        "examples/click_log: a list<string> tags column, a timestamp giving hour and weekday, a hashed item id). "
        f"{args.workers} workers, {args.chunk_mb:g} MiB chunks, vocabularies with a counting pass, on {report['cpus']} CPUs "
        "shared with other jobs: compare the rows within this table (same run, same load), not with other days' figures. "
        "The issue's reference (2M rows) was scaled down to keep the whole run near five minutes.",
        "",
        "| run | rows | seconds | rows/s | vs --dataset criteo | peak RSS, all processes (MiB) | load avg |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['name']} | {r['rows']:,} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | {r['relative_to_builtin_criteo']:.2f}x "
            f"| {r['peak_rss_tree_mb']:.0f} | {r['load_average']:.1f} |"
        )
    lines += ["", "--dataset criteo ran before and after the schema run; its rate is their mean.",
              "Produced by `benchmarks/preprocess_tabular_bench.py`."]
    (RESULTS / "preprocess_tabular.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
