"""Preprocessing throughput and peak memory on a multi-million-row Criteo-format file.

Generates the file with :mod:`iarm_torchrec.data.synthetic` (in blocks of ``--block`` rows, each
block its own seed, so distinct values grow with the file like real logs do), or takes
``--input``; then runs :func:`iarm_torchrec.data.preprocess.preprocess` in a child process and
records rows/s and peak RSS to ``benchmarks/results/preprocess.json`` and ``.md``:

* ``peak_rss_tree_mb``: the largest sum of RSS over the preprocessing process and its workers,
  sampled from ``/proc`` every 0.2 s (what the machine had to hold at once);
* ``peak_rss_children_mb``: ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` after it ended (the largest
  single process among them), and ``peak_rss_self_mb`` of this driver (generation included).

Run: ``.venv/bin/python benchmarks/preprocess_bench.py --rows 2500000``.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

RESULTS = Path(__file__).resolve().parent / "results"


def generate(path: Path, rows: int, block: int) -> None:
    """Criteo TSV of ``rows`` synthetic rows, written block by block (bounded memory)."""
    from iarm_torchrec.data.synthetic import SyntheticConfig, generate as draw, write_tsv

    with open(path, "wb") as out:
        for k, start in enumerate(range(0, rows, block)):
            part = path.with_name(f"block-{k}.tsv")
            write_tsv(draw(SyntheticConfig(rows=min(block, rows - start), seed=k)), part)
            out.write(part.read_bytes())
            part.unlink()


def _tree_rss_kb(pid: int) -> int:
    """RSS (kB) of ``pid`` and all its descendants, from /proc."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


def run_preprocess(
    src: Path, out: Path, options: Dict[str, object], dataset: str = "criteo", code_dir: Optional[Path] = None
) -> Dict[str, Any]:
    """``preprocess(dataset, src, out, **options)`` in a child process: wall seconds, rows per
    split and the peak RSS of its process tree. ``code_dir``: a checkout whose ``iarm_torchrec``
    the child imports instead of the installed one (an older commit, for a side-by-side run)."""
    code = (
        "import json, sys; from iarm_torchrec.data.preprocess import preprocess; "
        f"spec = preprocess({dataset!r}, {str(src)!r}, {str(out)!r}, overwrite=True, **json.loads(sys.argv[1])); "
        "print(json.dumps(spec.rows))"
    )
    start = time.perf_counter()
    # `python -c` puts the working directory first on sys.path: the checkout's package wins
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(options)], stdout=subprocess.PIPE, cwd=code_dir)
    peak = 0

    def sample() -> None:
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, _tree_rss_kb(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    seconds = time.perf_counter() - start
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"preprocess {dataset} failed with exit code {proc.returncode}")
    rows = json.loads(stdout.decode().strip().splitlines()[-1])
    return {"seconds": seconds, "rows": rows, "peak_rss_tree_mb": peak / 1024}


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_500_000)
    parser.add_argument("--block", type=int, default=250_000)
    parser.add_argument("--input", type=Path, help="an existing Criteo-format file (skips generation)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-mb", type=float, default=16.0)
    parser.add_argument("--modes", default="vocab,hash", help="vocab (min_count=10), hash (2**20 buckets per field)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="preprocess-bench-"))
    src = args.input or work / "train.txt"
    gen_seconds = None
    if args.input is None:
        start = time.perf_counter()
        generate(src, args.rows, args.block)
        gen_seconds = time.perf_counter() - start
    size_mb = src.stat().st_size / 2**20

    runs = []
    for mode in args.modes.split(","):
        options: Dict[str, object] = {"workers": args.workers, "chunk_mb": args.chunk_mb}
        options.update({"min_count": 10} if mode == "vocab" else {"hash_buckets": 2**20})
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        result = run_preprocess(src, work / f"out-{mode}", options)
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        n = sum(result["rows"].values())
        runs.append(
            {
                "mode": mode,
                "options": options,
                **result,
                "rows_total": n,
                "rows_per_s": n / result["seconds"],
                "mb_per_s": size_mb / result["seconds"],
                "peak_rss_children_mb": max(children, before) / 1024,
            }
        )
        print(json.dumps(runs[-1]), flush=True)

    report = {
        "input": str(args.input or f"synthetic ({args.rows} rows, blocks of {args.block}, seeds 0..)"),
        "input_mb": size_mb,
        "generate_seconds": gen_seconds,
        "runs": runs,
        "peak_rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
            "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
            "load_average_at_end": os.getloadavg(),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "preprocess.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Preprocessing benchmark (Criteo format)",
        "",
        f"Input: {report['input']}, {size_mb:.0f} MiB. Machine: {report['machine']['cpu']}, "
        f"{report['machine']['cpus']} CPUs, {report['machine']['memory_gb']:.0f} GiB, shared with other jobs "
        f"(load average at the end {report['machine']['load_average_at_end'][0]:.1f}), so the rates are a lower bound.",
        "",
        "| mode | workers | rows | seconds | rows/s | MiB/s | peak RSS, all processes (MiB) | largest process (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['mode']} | {r['options']['workers']} | {r['rows_total']:,} | {r['seconds']:.1f} | "
            f"{r['rows_per_s']:,.0f} | {r['mb_per_s']:.1f} | {r['peak_rss_tree_mb']:.0f} | {r['peak_rss_children_mb']:.0f} |"
        )
    lines += [
        "",
        "`vocab`: pass 1 counts values of the train split (min_count=10), pass 2 encodes; `hash`: 2^20 buckets "
        "per field, no counting pass. Both plan the chunks with one extra sequential read. Every process "
        "(the driver and each spawned worker) imports `iarm_torchrec`, whose package import loads torch and "
        "torchrec: about 330 MiB of RSS per process before any data.",
        "",
        "Produced by `benchmarks/preprocess_bench.py`.",
    ]
    (RESULTS / "preprocess.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
