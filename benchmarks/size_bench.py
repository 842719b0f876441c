"""IARM at the default (paper) size, d' = 32, against this machine's own arithmetic limit, in one run.

Runners (each its own process, interleaved, the machine's limit measured between them):

* ``gemm``: a 2048 x 2048 x 2048 ``torch.mm`` in float32 and in bfloat16 on the same threads as
  the runners (best 0.1 s window of 1.5 s: what the cores do when the shared machine lets them),
  before, in the middle and after the training runners;
* ``iarm_rwadagrad`` (fp32), ``iarm_rwadagrad_bf16`` (``--precision bf16``), ``autoint_rwadagrad``,
  ``autoint_rwadagrad_bf16``: ours, trained as ``iarm train`` trains (``benchmarks/_ours.py``);
* ``iarm_rwadagrad_glibc``: IARM fp32 with glibc's default malloc (``IARM_MALLOC=default``),
  against which ``iarm_rwadagrad`` shows what reusing freed memory gives (``iarm_torchrec/allocator.py``);
* ``fuxictr_autoint``: FuxiCTR's AutoInt at the same attention size (2 heads x 32, its
  ``attention_dim`` 64; ``benchmarks/_peers.py``);
* ``iarm_rwadagrad_x2``: IARM as 2 gloo ranks x 1 thread (``make run``'s layout) against 1 x 2
  (``--rank-runners``: which runners also run so, e.g. ``iarm_rwadagrad_bf16_x2``);
* ``iarm predict`` of the same model (``--predict``).

FLOPs per training sample (:func:`iarm_train_flops`) are counted as multiply-adds x 2 over the
matrix products only (softmax, ReLU, adds, embedding lookups and optimizers not counted):

* per interacting layer ``l`` (input width ``d_l``: D, then H d'): the fused Q, K, V projection
  ``2 M d_l 3Hd'`` and ``W_Res`` ``2 M d_l Hd'``; attention scores ``2 H M^2 d'`` and the
  weighted sum ``2 H M^2 d'``;
* the interest MLP ``2 sum(in x out)`` over its layers (input: the user fields' n D);
* the output layer ``2 (K + M Hd')``;
* training = forward x 3 (backward counted as twice the forward: the input and weight
  gradients of every product).

The share of the limit is ``samples/s x FLOPs per sample / (fp32 GEMM FLOP/s)``.

Usage::

    python benchmarks/size_bench.py --seeds 0 --predict     # ~8 minutes on 2 cores
"""

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import train_bench  # noqa: E402

RUNNERS = ["iarm_rwadagrad", "iarm_rwadagrad_bf16", "iarm_rwadagrad_glibc", "autoint_rwadagrad", "autoint_rwadagrad_bf16",
           "fuxictr_autoint"]


def iarm_forward_flops(fields: int, dim: int, layers: int, heads: int, head_dim: int, user_fields: int,
                       interest: List[int]) -> Dict[str, float]:
    """Forward FLOPs per sample of IARM's matrix products, by part (see the module docstring)."""
    width = heads * head_dim
    projections = attention = 0.0
    d_in = dim
    for _ in range(layers):
        projections += 2 * fields * d_in * 3 * width + 2 * fields * d_in * width
        attention += 4 * heads * fields * fields * head_dim
        d_in = width
    sizes = [user_fields * dim] + list(interest)
    mlp = float(sum(2 * a * b for a, b in zip(sizes, sizes[1:]))) if interest and user_fields else 0.0
    output = 2.0 * ((interest[-1] if interest and user_fields else 0) + fields * d_in)
    return {"projections": projections, "attention": attention, "interest_mlp": mlp, "output": output,
            "total": projections + attention + mlp + output}


def iarm_train_flops(**kwargs: Any) -> Dict[str, float]:
    """Training FLOPs per sample: forward + backward (2x forward), by part."""
    return {k: 3 * v for k, v in iarm_forward_flops(**kwargs).items()}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000, help="synthetic rows (80%% train: 78 steps of 1024)")
    p.add_argument("--data-root", default=os.environ.get("IARM_BENCH_DATA", "/tmp/iarm-bench"))
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--max-steps", type=int, default=0, help="0: the whole epoch")
    p.add_argument("--runners", default=",".join(RUNNERS))
    p.add_argument("--ranks", default="2", help="also IARM as this many ranks x threads/ranks (empty: no)")
    p.add_argument("--rank-runners", default="iarm_rwadagrad", help="the runners that --ranks also runs")
    p.add_argument("--predict", action="store_true")
    p.add_argument("--predict-precision", default="fp32", choices=["fp32", "bf16"],
                   help="the scored model's training precision (predict computes in it); compared with the training "
                        "runner of that precision (iarm_rwadagrad or iarm_rwadagrad_bf16)")
    p.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"],
                   help="OMP_WAIT_POLICY of every runner and of the GEMM limit alike. PASSIVE (the default, for a shared "
                        "machine: spinning threads there slowed every framework 4-10x); 'default' leaves it unset, as "
                        "`iarm train` runs: on a quiet machine the threads then spin briefly at each barrier")
    p.add_argument("--gemm-size", type=int, default=2048)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--name", default="train_d32")
    args = p.parse_args(argv)
    command = "python benchmarks/size_bench.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    # train_bench's argument defaults, then ours
    targs = train_bench.parse_args([])
    for key in ("rows", "data_root", "threads", "head_dim", "max_steps", "omp_wait_policy"):
        setattr(targs, key, getattr(args, key))
    targs.embedding_dim, targs.num_layers, targs.num_heads = 16, 3, 2
    targs.predict_precision = args.predict_precision
    from _common import machine
    from iarm_torchrec.data.spec import FeatureSpec

    data_dir = train_bench.make_data(targs)
    spec = FeatureSpec.load(data_dir)
    steps = spec.rows["train"] // args.batch_size if not args.max_steps else args.max_steps
    runners = [r for r in args.runners.split(",") if r]
    ranks = [int(r) for r in args.ranks.split(",") if r]
    runs: List[Dict[str, Any]] = []
    gemm: List[Dict[str, Any]] = []
    started = time.time()

    def measure_limit() -> None:
        job = {"model": "gemm", "size": args.gemm_size, "threads": args.threads, "omp_wait_policy": args.omp_wait_policy}
        result = train_bench.launch(job)
        result["load_average_before"] = os.getloadavg()[0]
        gemm.append(result)
        print(f"limit: fp32 {result.get('fp32_gflops', 0):.1f} GFLOP/s, bf16 {result.get('bf16_gflops', 0):.1f} GFLOP/s "
              f"({args.threads} threads, load {result['load_average_before']:.2f})", flush=True)

    for seed in [int(s) for s in args.seeds.split(",")]:
        measure_limit()
        plan = [(r, 1) for r in runners] + [(r, n) for n in ranks if n > 1 for r in args.rank_runners.split(",") if r]
        for i, (runner, n) in enumerate(plan):
            job = train_bench.job_for(targs, runner, data_dir, args.batch_size, seed, steps)
            if n > 1:
                job["threads"] = max(1, args.threads // n)
            t0 = time.time()
            result = train_bench.launch(job, n)
            label = runner if n == 1 else f"{runner}_x{n}"
            runs.append({"runner": label, "batch_size": args.batch_size, "seed": seed, "ranks": n, "threads": job["threads"],
                         "load_average_before": os.getloadavg()[0], "wall_s": round(time.time() - t0, 1), **result})
            rate = result.get("median_samples_per_s")
            print(f"seed {seed} {label:<24} " + (f"{rate:>8,.0f} samples/s  AUC {result['valid_auc']:.4f}  RSS "
                  f"{result['peak_rss_mib']:,.0f} MiB" if rate else f"FAILED {result.get('error')}\n{result.get('log_tail')}"),
                  flush=True)
            if i == len(plan) // 2:
                measure_limit()
        measure_limit()
    predict = train_bench.run_predict(targs, data_dir) if args.predict else None

    flops = iarm_train_flops(fields=len(spec.sparse) + len(spec.dense), dim=16, layers=3, heads=2, head_dim=args.head_dim,
                             user_fields=len(spec.user_fields), interest=[256, 128, 64, 32])
    report = {"command": command, "machine": machine(), "settings": vars(args), "data": {"dir": str(data_dir), "rows": spec.rows,
              "fields": len(spec.sparse) + len(spec.dense), "user_fields": len(spec.user_fields)},
              "train_flops_per_sample": flops, "gemm": gemm, "runs": runs, "predict": predict,
              "duration_s": round(time.time() - started, 1)}
    report["summary"] = summarize(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=1, default=str))
    (out / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


PREDICT_AGAINST = {"fp32": "iarm_rwadagrad", "bf16": "iarm_rwadagrad_bf16"}
"""The training runner whose samples/s ``iarm predict``'s rows/s are compared with, by the scored model's precision."""


def summarize(report: Dict[str, Any]) -> Dict[str, Any]:
    ok = [g for g in report["gemm"] if "fp32_gflops" in g]
    fp32 = max((g["fp32_gflops"] for g in ok), default=None)
    bf16 = max((g["bf16_gflops"] for g in ok), default=None)
    flops = report["train_flops_per_sample"]["total"]
    rows: Dict[str, Dict[str, Any]] = {}
    by_seed: Dict[str, Dict[int, Dict[str, Any]]] = {}
    for r in report["runs"]:
        if r.get("median_samples_per_s"):
            by_seed.setdefault(r["runner"], {})[r["seed"]] = r
    peer = by_seed.get("fuxictr_autoint", {})
    base = by_seed.get("iarm_rwadagrad", {})
    for runner, seeds in by_seed.items():
        rates = [s["median_samples_per_s"] for s in seeds.values()]
        row: Dict[str, Any] = {
            "samples_per_s": statistics.mean(rates),
            "valid_auc": statistics.mean(s["valid_auc"] for s in seeds.values()),
            "peak_rss_mib": max(s["peak_rss_mib"] for s in seeds.values()),
            "x_fuxictr": statistics.mean(s["median_samples_per_s"] / peer[k]["median_samples_per_s"] for k, s in seeds.items() if k in peer) if peer else None,
            "x_iarm_fp32": statistics.mean(s["median_samples_per_s"] / base[k]["median_samples_per_s"] for k, s in seeds.items() if k in base) if base else None,
        }
        if runner.startswith("iarm") and fp32:
            row["share_of_fp32_limit"] = row["samples_per_s"] * flops / (fp32 * 1e9)
        rows[runner] = row
    out: Dict[str, Any] = {"fp32_limit_gflops": fp32, "bf16_limit_gflops": bf16, "rows": rows,
                           "iarm_fp32_limit_samples_per_s": fp32 * 1e9 / flops if fp32 else None}
    pred = report.get("predict") or {}
    trained = PREDICT_AGAINST[pred.get("precision", "fp32")]  # the training runner of the scored model's precision
    if pred.get("by_batch_size") and trained in rows:
        rate = rows[trained]["samples_per_s"]
        out["predict_against"] = trained
        out["predict_x_training"] = {b: v["rows_per_s"] / rate for b, v in pred["by_batch_size"].items()}
        out["predict_marginal_x_training"] = {b: v["marginal_rows_per_s"] / rate for b, v in pred["by_batch_size"].items()}
        out["predict_x10_x_training"] = {b: v["rows_per_s_x10"] / rate for b, v in pred["by_batch_size"].items()
                                         if "rows_per_s_x10" in v}
    return out


def markdown(report: Dict[str, Any]) -> str:
    s, m, f = report["summary"], report["machine"], report["train_flops_per_sample"]
    fmt = lambda x, spec=",.0f": "-" if x is None else format(x, spec)  # noqa: E731
    lines = [
        "# IARM at the default size (2 heads x d' = 32) against FuxiCTR's AutoInt and this machine's limit", "",
        f"Command: `{report['command']}`", "",
        f"Machine: {m['cpu']}, {m['cores']} cores; load average at the end {m['load_average']}; commit {m['git_commit']}; "
        f"CPU attention: {m['iarm_cpu_attention']}. Data: synthetic Criteo {report['data']['rows']}, "
        f"{report['data']['fields']} fields ({report['data']['user_fields']} user fields). D=16, 3 layers, batch "
        f"{report['settings']['batch_size']}, {report['settings']['threads']} threads per process, "
        f"OMP_WAIT_POLICY={report['settings'].get('omp_wait_policy', 'PASSIVE').replace('default', 'unset (the default)')}, "
        f"seeds {report['settings']['seeds']}, one epoch per runner.", "",
        "## This machine's limit, measured in the same run", "",
        "| when | fp32 GFLOP/s (best / median window) | bf16 GFLOP/s | load average before |", "|---|---|---|---|",
    ]
    for i, g in enumerate(report["gemm"]):
        lines.append(f"| {i} | {fmt(g.get('fp32_gflops'), '.1f')} / {fmt(g.get('fp32_gflops_median'), '.1f')} | "
                     f"{fmt(g.get('bf16_gflops'), '.1f')} / {fmt(g.get('bf16_gflops_median'), '.1f')} | {g.get('load_average_before', 0):.2f} |")
    lines += ["", f"FLOPs per training sample (matrix products, forward x 3): {f['total'] / 1e6:.2f} M = projections "
              f"{f['projections'] / 1e6:.2f} M + attention {f['attention'] / 1e6:.2f} M + interest MLP {f['interest_mlp'] / 1e6:.2f} M "
              f"+ output {f['output'] / 1e6:.3f} M. At the best fp32 GEMM rate ({fmt(s['fp32_limit_gflops'], '.1f')} GFLOP/s) that bounds "
              f"IARM at {fmt(s['iarm_fp32_limit_samples_per_s'])} samples/s.", "",
              "## Training", "",
              "| runner | samples/s | x FuxiCTR AutoInt | x IARM fp32 | share of fp32 limit | valid AUC | peak RSS MiB |",
              "|---|---|---|---|---|---|---|"]
    for runner, r in s["rows"].items():
        lines.append(f"| {runner} | {fmt(r['samples_per_s'])} | {fmt(r['x_fuxictr'], '.2f')} | {fmt(r['x_iarm_fp32'], '.2f')} | "
                     f"{fmt(r.get('share_of_fp32_limit'), '.0%')} | {r['valid_auc']:.4f} | {fmt(r['peak_rss_mib'])} |")
    failed = [r for r in report["runs"] if not r.get("median_samples_per_s")]
    for r in failed:
        lines.append(f"\nFAILED {r['runner']} seed {r['seed']}: {r.get('error')}")
    pred = report.get("predict")
    if pred and pred.get("by_batch_size"):
        lines += ["", f"## Scoring (`iarm predict --unlabelled`, same model size, trained and scored in "
                  f"{pred.get('precision', 'fp32')})", ""]
        for b, v in pred["by_batch_size"].items():
            lines.append(f"- batch {b}: {v['rows']:,} rows in {v['seconds']} s = {v['rows_per_s']:,.0f} rows/s end to end "
                         f"({s.get('predict_x_training', {}).get(b, 0):.2f}x {s.get('predict_against')}'s training samples/s); "
                         f"{v['marginal_rows_per_s']:,.0f} rows/s without the {v['startup_seconds']} s start-up "
                         f"({s.get('predict_marginal_x_training', {}).get(b, 0):.2f}x)"
                         + (f"; {v['rows_x10']:,} rows in {v['seconds_x10']} s = {v['rows_per_s_x10']:,.0f} rows/s end to end "
                            f"({s.get('predict_x10_x_training', {}).get(b, 0):.2f}x)" if "rows_per_s_x10" in v else ""))
    elif pred:
        lines += ["", f"Scoring failed: {pred.get('error')}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
