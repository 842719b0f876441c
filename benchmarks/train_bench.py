"""Training throughput of IARM and AutoInt next to DeepCTR-Torch and FuxiCTR, in one run.

Every runner trains one epoch on the SAME preprocessed synthetic Criteo (generated once by
:func:`iarm_torchrec.data.synthetic.make_synthetic_dataset`: Criteo-format TSV, then the
project's Criteo preprocessing) with the same embedding size, attention layers, heads, batch
size, Adam and thread count, each in its own process (clean peak memory, own thread
settings). Runners are interleaved (seed -> batch size -> runner) so that a busy neighbour
on a shared machine hits every runner alike; each reports the median samples/s of several
windows after a warm-up, its peak RSS and the validation AUC after the epoch.

Runners:

* ``iarm`` / ``autoint`` / ``deepfm`` with ``_rwadagrad`` or ``_adam``: this project, trained as
  ``iarm train`` trains (``DistributedModelParallel`` over gloo, ``TrainPipelineSparseDist``),
  dense parameters with Adam; tables with FBGEMM's fused row-wise Adagrad (the default), or
  with Adam, which FBGEMM cannot fuse on CPU, so the tables then use the non-fused dense
  kernel and a ``torch.optim.Adam``;
* ``iarm_rwadagrad_aten``: ``iarm_rwadagrad`` with ``IARM_CPU_ATTENTION=aten`` (per-head ``bmm`` +
  ``softmax`` instead of the compiled CPU attention kernel), to show what the kernel buys;
* ``deepctr_autoint``, ``deepctr_deepfm``, ``fuxictr_autoint``: the peers (``pip install -e
  '.[bench]'``), skipped with a note when not installed.

``--ranks 1,2`` adds the sharded IARM with 2 gloo ranks (1 thread each) for scaling;
``--loader`` the loader's batches/s alone; ``--predict`` the ``iarm predict`` rows/s.

Usage::

    python benchmarks/train_bench.py                       # the full run (about 30 min on 2 cores)
    python benchmarks/train_bench.py --quick               # a smoke run (a minute or two)
"""

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

OURS = {
    "iarm_rwadagrad": ("iarm", "rowwise_adagrad"),
    "iarm_adam": ("iarm", "adam"),
    "autoint_rwadagrad": ("autoint", "rowwise_adagrad"),
    "autoint_adam": ("autoint", "adam"),
    "deepfm_adam": ("deepfm", "adam"),
    "iarm_rwadagrad_aten": ("iarm", "rowwise_adagrad"),
    "iarm_rwadagrad_bf16": ("iarm", "rowwise_adagrad"),
    "autoint_rwadagrad_bf16": ("autoint", "rowwise_adagrad"),
    "iarm_rwadagrad_glibc": ("iarm", "rowwise_adagrad"),
}
# runners of ours whose dense arches run under bf16 autocast (TrainSettings.precision)
BF16 = {"iarm_rwadagrad_bf16", "autoint_rwadagrad_bf16"}
# runners of ours that attend with ATen's bmm + softmax instead of the compiled CPU kernel
ATEN_ATTENTION = {"iarm_rwadagrad_aten"}
# runners of ours with glibc's default malloc (IARM_MALLOC=default: freed large tensors unmapped)
GLIBC_DEFAULT_MALLOC = {"iarm_rwadagrad_glibc"}
PEERS = {
    "deepctr_autoint": "deepctr_torch",
    "deepctr_deepfm": "deepctr_torch",
    "fuxictr_autoint": "fuxictr",
}
DEFAULT_RUNNERS = [
    "iarm_rwadagrad", "iarm_rwadagrad_aten", "iarm_adam", "autoint_rwadagrad", "autoint_adam",
    "deepctr_autoint", "fuxictr_autoint", "deepctr_deepfm",
]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200_000, help="synthetic rows (80%% train, 10%% valid)")
    p.add_argument("--data-root", default=os.environ.get("IARM_BENCH_DATA", str(Path(tempfile.gettempdir()) / "iarm-bench")),
                   help="where the synthetic data is generated (outside the repository)")
    p.add_argument("--batch-sizes", default="1024,4096")
    p.add_argument("--seeds", default="0", help="model/shuffle seeds, e.g. 0,1,2 (the data stays the same)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per process (one rank)")
    p.add_argument("--runners", default=",".join(DEFAULT_RUNNERS), help=f"from {sorted(OURS) + sorted(PEERS)}")
    p.add_argument("--ranks", default="1", help="also run iarm_rwadagrad with these rank counts, e.g. 1,2")
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--num-layers", type=int, default=3)
    p.add_argument("--num-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=8, help="per head; 8 x 2 heads = 16 is DeepCTR-Torch's fixed width")
    p.add_argument("--peer-dnn", default="", help="the peers' AutoInt DNN tower, e.g. 256,128 (default: none, pure AutoInt)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate, every framework")
    p.add_argument("--rowwise-adagrad-lr", type=float, default=0.05, help="the fused tables' learning rate")
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of the epoch's steps not timed (at least 2)")
    p.add_argument("--max-steps", type=int, default=0, help="cap the steps per epoch (0: the whole epoch)")
    p.add_argument("--loader", action="store_true", help="measure the training loader's batches/s")
    p.add_argument("--predict", action="store_true", help="measure `iarm predict` rows/s on an unlabelled file")
    p.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"],
                   help="OMP_WAIT_POLICY of every runner alike. PASSIVE (the default here): OpenMP threads sleep "
                   "at barriers instead of spinning; with any other busy thread on 2 cores (a neighbour, a "
                   "loader thread or worker) spinning made every framework 4-10x slower (docs/performance.md)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: our runners on the GPU (gpu_bench.sh)")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for <name>.json and <name>.md")
    p.add_argument("--name", default="train")
    p.add_argument("--quick", action="store_true", help="smoke run: 20k rows, 30 steps, one batch size")
    p.add_argument("--worker", nargs=2, metavar=("JOB", "RESULT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.max_steps, args.batch_sizes = 20_000, 30, args.batch_sizes.split(",")[0]
    return args


# ----------------------------------------------------------------------------- worker side


def worker(job_file: str, result_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    import torch

    torch.set_num_threads(job["threads"])
    if job["model"] in PEERS:
        import _peers

        result = _peers.run(job)
    elif job["model"] == "gemm":
        from _common import gemm_rates

        result = gemm_rates(job["size"], job.get("seconds", 1.5))
    elif job["model"] == "loader":
        import _ours

        result = _ours.loader_rate(job["data_dir"], job["batch_size"], job["prefetch"], job.get("max_steps") or None)
    else:
        import _ours

        result = _ours.run(job)
    if int(os.environ.get("RANK", 0)) == 0:
        Path(result_file).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- parent side


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def runner_env(threads: int, wait_policy: str) -> Dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("OMP_WAIT_POLICY", None)
    if wait_policy != "default":
        env["OMP_WAIT_POLICY"] = wait_policy
    return env


def launch(job: Dict[str, Any], ranks: int = 1, timeout: float = 3600) -> Dict[str, Any]:
    """Run ``job`` in ``ranks`` fresh processes (a gloo group when more than one); rank 0's result."""
    with tempfile.TemporaryDirectory(prefix="iarm-bench-job-") as tmp:
        job_file, result_file = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_file.write_text(json.dumps(job))
        env = runner_env(job["threads"], job["omp_wait_policy"])
        if job.get("cpu_attention"):
            env["IARM_CPU_ATTENTION"] = job["cpu_attention"]
        if job.get("malloc"):
            env["IARM_MALLOC"] = job["malloc"]
        if ranks > 1:
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(ranks),
                       LOCAL_WORLD_SIZE=str(ranks))
        procs = []
        for rank in range(ranks):
            rank_env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank)) if ranks > 1 else env
            procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", str(job_file), str(result_file)],
                env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            ))
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
        failed = [(r, p.returncode) for r, p in enumerate(procs) if p.returncode]
        if failed or not result_file.is_file():
            tail = "\n".join(outputs[0].splitlines()[-25:])
            return {"error": f"ranks {failed} failed" if failed else "no result", "log_tail": tail}
        return json.loads(result_file.read_text())


def make_data(args: argparse.Namespace) -> Path:
    from iarm_torchrec.data.synthetic import make_synthetic_dataset

    return Path(make_synthetic_dataset(Path(args.data_root) / f"synthetic-{args.rows}-s0", rows=args.rows, seed=0))


def job_for(args: argparse.Namespace, runner: str, data_dir: Path, batch_size: int, seed: int, steps: int) -> Dict[str, Any]:
    job: Dict[str, Any] = {
        "model": runner, "data_dir": str(data_dir), "batch_size": batch_size, "seed": seed, "threads": args.threads,
        "embedding_dim": args.embedding_dim, "num_layers": args.num_layers, "num_heads": args.num_heads,
        "head_dim": args.head_dim, "lr": args.lr, "max_steps": args.max_steps, "device": args.device,
        "omp_wait_policy": args.omp_wait_policy,
        "warmup": max(2, int(steps * args.warmup)),
        "peer_dnn": [int(x) for x in args.peer_dnn.split(",") if x],
    }
    if runner in OURS:
        model, sparse = OURS[runner]
        job.update(model=model, runner=runner, sparse_optimizer=sparse,
                   sparse_lr=args.lr if sparse == "adam" else args.rowwise_adagrad_lr,
                   cpu_attention="aten" if runner in ATEN_ATTENTION else "kernel",
                   precision="bf16" if runner in BF16 else "fp32",
                   malloc="default" if runner in GLIBC_DEFAULT_MALLOC else "")
    return job


def installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    from _common import machine

    command = "python " + " ".join(shlex.quote(a) for a in ([str(Path(__file__).relative_to(HERE.parent))] + (argv if argv is not None else sys.argv[1:])))
    started = time.time()
    data_dir = make_data(args)
    from iarm_torchrec.data.spec import FeatureSpec

    spec = FeatureSpec.load(data_dir)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    runners = [r for r in args.runners.split(",") if r]
    unknown = [r for r in runners if r not in OURS and r not in PEERS]
    if unknown:
        raise SystemExit(f"unknown runners {unknown}; choose from {sorted(OURS) + sorted(PEERS)}")
    skipped = {r: f"{PEERS[r]} is not installed (pip install -e '.[bench]')" for r in runners if r in PEERS and not installed(PEERS[r])}
    runners = [r for r in runners if r not in skipped]
    rank_counts = [int(r) for r in args.ranks.split(",") if int(r) > 1]
    runs: List[Dict[str, Any]] = []
    for seed in seeds:
        for b in batch_sizes:
            steps = spec.rows["train"] // b if not args.max_steps else min(args.max_steps, spec.rows["train"] // b)
            plan = [(r, 1) for r in runners] + [("iarm_rwadagrad", n) for n in rank_counts]
            for runner, ranks in plan:
                job = job_for(args, runner, data_dir, b, seed, steps)
                if ranks > 1:
                    job["threads"] = max(1, args.threads // ranks)
                t0 = time.time()
                result = launch(job, ranks)
                label = runner if ranks == 1 else f"{runner}_x{ranks}"
                record = {"runner": label, "batch_size": b, "seed": seed, "ranks": ranks, "threads": job["threads"],
                          "load_average_before": os.getloadavg()[0], "wall_s": round(time.time() - t0, 1), **result}
                runs.append(record)
                rate = result.get("median_samples_per_s")
                print(f"seed {seed} B {b:>5} {label:<22} " + (f"{rate:>9,.0f} samples/s  AUC {result['valid_auc']:.4f}  "
                      f"RSS {result['peak_rss_mib']:,.0f} MiB" if rate else f"FAILED: {result.get('error')}\n{result.get('log_tail')}"),
                      flush=True)
    loader = []
    if args.loader:
        for b in batch_sizes:
            for prefetch in (0, 2):
                job = {"model": "loader", "data_dir": str(data_dir), "batch_size": b, "prefetch": prefetch,
                       "threads": args.threads, "max_steps": args.max_steps, "omp_wait_policy": args.omp_wait_policy}
                loader.append(launch(job))
                print(f"loader B {b} prefetch {prefetch}: {loader[-1].get('median_batches_per_s', 0):,.1f} batches/s", flush=True)
    predict = run_predict(args, data_dir) if args.predict else None
    from _report import summarize, write

    report = {
        "command": command,
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker",)},
        "data": {"dir": str(data_dir), "rows": spec.rows, "sparse_fields": len(spec.sparse), "dense_fields": len(spec.dense),
                 "vocab_total": sum(f.vocab_size for f in spec.sparse)},
        "skipped": skipped,
        "runs": runs,
        "loader": loader,
        "predict": predict,
        "duration_s": round(time.time() - started, 1),
    }
    report["summary"] = summarize(report)
    json_file, md_file = write(report, Path(args.out), args.name)
    print(f"wrote {json_file} and {md_file}")
    return 0


def run_predict(args: argparse.Namespace, data_dir: Path) -> Dict[str, Any]:
    """Time ``iarm predict --unlabelled`` end to end (start-up, read and encode the TSV with the
    saved vocabulary, score, write) on every generated row without its label column, on those
    rows ten times over (the start-up then weighs a tenth as much; default batch size only), and
    on a 10-row file: the difference gives the marginal rows/s without the command's start-up.

    The model comes from a short ``iarm train`` (``--max-steps-per-epoch 20``) on the same
    generated TSV read as Criteo, then ``iarm export``: what is timed is the scoring path only.
    """
    import shutil

    work = Path(tempfile.mkdtemp(prefix="iarm-bench-predict-"))
    source = data_dir / "tsv" / "train.txt"
    lines = [ln.split(b"\t", 1)[1] for ln in source.read_bytes().split(b"\n") if ln]
    files = {"all": (work / "all.txt", len(lines)), "tiny": (work / "tiny.txt", 10), "x10": (work / "x10.txt", 10 * len(lines))}
    files["all"][0].write_bytes(b"\n".join(lines) + b"\n")
    files["tiny"][0].write_bytes(b"\n".join(lines[:10]) + b"\n")
    files["x10"][0].write_bytes((b"\n".join(lines) + b"\n") * 10)
    iarm = [sys.executable, "-m", "iarm_torchrec.cli"]
    env = runner_env(args.threads, args.omp_wait_policy)
    run_dir, model_file = work / "run", work / "model.pt"
    train = ["train", "--dataset", "criteo", "--data-dir", str(source), "--cache-dir", str(work / "cache"),
             "--epochs", "1", "--max-steps-per-epoch", "20", "--out", str(run_dir),
             "--embedding-dim", str(args.embedding_dim), "--num-layers", str(args.num_layers),
             "--num-heads", str(args.num_heads), "--head-dim", str(args.head_dim),
             "--precision", getattr(args, "predict_precision", "fp32")]  # predict computes in the model's precision
    for cmd in (train, ["export", str(run_dir), "--out", str(model_file)]):
        done = subprocess.run(iarm + cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            return {"error": f"iarm {cmd[0]} failed", "log_tail": done.stdout[-2000:] + done.stderr[-2000:]}
    from iarm_torchrec.inference import SCORING_BATCH_SIZE

    results: Dict[str, Any] = {}
    for b in (SCORING_BATCH_SIZE, 4096):
        seconds = {}
        for name, (path, rows) in files.items():
            if name == "x10" and b != SCORING_BATCH_SIZE:
                continue
            cmd = ["predict", "--model", str(model_file), "--input", str(path), "--out", str(work / "scores.txt"),
                   "--unlabelled", "--batch-size", str(b)]
            t0 = time.perf_counter()
            done = subprocess.run(iarm + cmd, env=env, capture_output=True, text=True)
            seconds[name] = time.perf_counter() - t0
            if done.returncode:
                return {"error": "iarm predict failed", "log_tail": done.stdout[-2000:] + done.stderr[-2000:]}
        rows = files["all"][1]
        results[str(b)] = {
            "rows": rows,
            "seconds": round(seconds["all"], 2),
            "startup_seconds": round(seconds["tiny"], 2),
            "rows_per_s": rows / seconds["all"],
            "marginal_rows_per_s": (rows - 10) / max(seconds["all"] - seconds["tiny"], 1e-9),
        }
        if "x10" in seconds:
            results[str(b)].update(rows_x10=files["x10"][1], seconds_x10=round(seconds["x10"], 2),
                                   rows_per_s_x10=files["x10"][1] / seconds["x10"])
        print(f"predict B {b}: {rows / seconds['all']:,.0f} rows/s end to end, "
              f"{results[str(b)]['marginal_rows_per_s']:,.0f} rows/s without the {seconds['tiny']:.1f} s start-up"
              + (f", {results[str(b)]['rows_per_s_x10']:,.0f} rows/s end to end on {files['x10'][1]:,} rows" if "x10" in seconds else ""),
              flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return {"command": "iarm predict --unlabelled --model M --input ROWS.txt --out S --batch-size B",
            "precision": getattr(args, "predict_precision", "fp32"), "by_batch_size": results}


if __name__ == "__main__":
    sys.exit(main())
