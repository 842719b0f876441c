"""The benchmark's summary (means over seeds, side-by-side ratios, the targets) as JSON and Markdown."""

import json
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from iarm_torchrec.files import atomic_write_text

# (our runner, peer runner, required ratio of samples/s) per batch size 1024. ``iarm_rwadagrad_x2``
# is the same IARM on the same cores as 2 gloo ranks x 1 thread (`make run`'s layout) instead of
# 1 process x 2 threads.
SPEED_TARGETS: List[Tuple[str, str, float]] = [
    ("iarm_rwadagrad", "deepctr_autoint", 2.0),
    ("iarm_rwadagrad_x2", "deepctr_autoint", 2.0),
    ("iarm_adam", "deepctr_autoint", 2.0),
    ("iarm_rwadagrad", "fuxictr_autoint", 3.0),
    ("iarm_rwadagrad_x2", "fuxictr_autoint", 3.0),
    ("iarm_adam", "fuxictr_autoint", 3.0),
    ("autoint_rwadagrad", "deepctr_deepfm", 1.0),
    ("autoint_adam", "deepctr_deepfm", 1.0),
]
AUC_TOLERANCE = 0.005
LOADER_FACTOR = 3.0
TARGET_BATCH = 1024


def _ok(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [r for r in runs if "median_samples_per_s" in r]


def _mean(values: List[float]) -> Optional[float]:
    return statistics.fmean(values) if values else None


def _by(runs: List[Dict[str, Any]], runner: str, batch: int) -> Dict[int, Dict[str, Any]]:
    return {r["seed"]: r for r in runs if r["runner"] == runner and r["batch_size"] == batch}


def ratio(runs: List[Dict[str, Any]], ours: str, peer: str, batch: int) -> Optional[Dict[str, Any]]:
    """Samples/s of ``ours`` over ``peer``, per seed (the two ran side by side), and their mean."""
    a, b = _by(runs, ours, batch), _by(runs, peer, batch)
    per_seed = {s: a[s]["median_samples_per_s"] / b[s]["median_samples_per_s"] for s in sorted(set(a) & set(b))}
    if not per_seed:
        return None
    return {"mean": statistics.fmean(per_seed.values()), "per_seed": per_seed}


def summarize(report: Dict[str, Any]) -> Dict[str, Any]:
    runs = _ok(report["runs"])
    batches = sorted({r["batch_size"] for r in runs})
    table: Dict[str, Dict[str, Any]] = {}
    for b in batches:
        rows = {}
        for runner in dict.fromkeys(r["runner"] for r in runs if r["batch_size"] == b):
            rs = list(_by(runs, runner, b).values())
            rates = [r["median_samples_per_s"] for r in rs]
            rows[runner] = {
                "samples_per_s": _mean(rates),
                "samples_per_s_min": min(rates),
                "samples_per_s_max": max(rates),
                "steps_per_s": _mean(rates) / b,
                "main_thread_cpu_ms_per_step": _mean([r["main_thread_cpu_ms_per_step"] for r in rs if "main_thread_cpu_ms_per_step" in r]),
                "valid_auc": _mean([r["valid_auc"] for r in rs]),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
                "seeds": len(rs),
                "vs_deepctr_autoint": ratio(runs, runner, "deepctr_autoint", b),
                "vs_fuxictr_autoint": ratio(runs, runner, "fuxictr_autoint", b),
                "vs_deepctr_deepfm": ratio(runs, runner, "deepctr_deepfm", b),
            }
        table[str(b)] = rows
    targets = []
    for ours, peer, need in SPEED_TARGETS:
        for b in batches:
            r = ratio(runs, ours, peer, b)
            if r is not None:
                targets.append({"target": f"{ours} samples/s >= {need:g}x {peer}", "batch_size": b,
                                "value": r["mean"], "met": r["mean"] >= need, "required_at_this_batch": b == TARGET_BATCH})
    for ours in ("iarm_rwadagrad", "iarm_adam"):
        for peer in ("deepctr_autoint", "fuxictr_autoint"):
            for b in batches:
                mine, theirs = table[str(b)].get(ours), table[str(b)].get(peer)
                if mine and theirs:
                    gap = mine["valid_auc"] - theirs["valid_auc"]
                    targets.append({"target": f"{ours} valid AUC >= {peer} - {AUC_TOLERANCE}", "batch_size": b,
                                    "value": gap, "met": gap >= -AUC_TOLERANCE, "required_at_this_batch": True})
    for entry in report.get("loader") or []:
        if entry.get("prefetch") != 2 or "median_batches_per_s" not in entry:
            continue
        b = entry["batch_size"]
        for ours in ("iarm_rwadagrad", "iarm_adam"):
            mine = table.get(str(b), {}).get(ours)
            if mine:
                factor = entry["median_batches_per_s"] / mine["steps_per_s"]
                targets.append({"target": f"loader batches/s >= {LOADER_FACTOR:g}x {ours} steps/s", "batch_size": b,
                                "value": factor, "met": factor >= LOADER_FACTOR, "required_at_this_batch": True})
    return {"table": table, "targets": targets}


def _fmt(x: Optional[float], spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(report: Dict[str, Any]) -> str:
    m, s, summary = report["machine"], report["settings"], report["summary"]
    v = m["versions"]
    lines = [
        "# Training throughput: IARM and AutoInt next to DeepCTR-Torch and FuxiCTR",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB" + (f", {m['gpu']}" if m.get("gpu") else "")
        + f"; load average at the end {m['load_average']}. Versions: torch {v['torch']}, torchrec {v['torchrec']}, "
        f"fbgemm {v.get('fbgemm-gpu-cpu') or v.get('fbgemm-gpu')}, DeepCTR-Torch {v.get('deepctr-torch') or '-'}, "
        f"FuxiCTR {v.get('fuxictr') or '-'}; commit {m.get('git_commit')}. Our CPU attention: "
        f"{m.get('iarm_cpu_attention', 'ATen bmm + softmax')}.",
        "",
        f"Data: synthetic Criteo ({report['data']['rows']}; {report['data']['sparse_fields']} categorical fields, "
        f"{report['data']['dense_fields']} numerical, {report['data']['vocab_total']:,} ids in all), one file for everyone. "
        f"Model: D={s['embedding_dim']}, {s['num_layers']} attention layers, {s['num_heads']} heads x {s['head_dim']}, "
        f"Adam lr {s['lr']}, {s['threads']} threads per process, OMP_WAIT_POLICY {s.get('omp_wait_policy', 'default')}, seeds {s['seeds']}. Samples/s: median of the windows "
        f"after a {s['warmup']:.0%} warm-up, mean over seeds (min-max); ratios are per seed, side by side, then averaged.",
        "",
    ]
    for b, rows in summary["table"].items():
        lines += [f"## Batch {b}", "",
                  "| runner | samples/s (min-max) | steps/s | main-thread CPU ms/step | peak RSS MiB | valid AUC | x DeepCTR AutoInt | x FuxiCTR AutoInt | x DeepCTR DeepFM |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for runner, r in rows.items():
            ratios = [_fmt((r[k] or {}).get("mean"), ".2f") for k in ("vs_deepctr_autoint", "vs_fuxictr_autoint", "vs_deepctr_deepfm")]
            lines.append(f"| {runner} | {_fmt(r['samples_per_s'])} ({_fmt(r['samples_per_s_min'])}-{_fmt(r['samples_per_s_max'])}) "
                         f"| {r['steps_per_s']:.2f} | {_fmt(r['main_thread_cpu_ms_per_step'], '.1f')} | {r['peak_rss_mib']:,.0f} | {r['valid_auc']:.4f} | " + " | ".join(ratios) + " |")
        lines.append("")
    if report.get("loader"):
        lines += ["## Loader alone", "", "| batch | prefetch | batches/s |", "|---|---|---|"]
        lines += [f"| {e['batch_size']} | {e['prefetch']} | {_fmt(e.get('median_batches_per_s'), ',.1f')} |" for e in report["loader"]]
        lines.append("")
    if report.get("predict"):
        p = report["predict"]
        lines += ["## Scoring (`iarm predict`, end to end from the unlabelled TSV)", ""]
        if "error" in p:
            lines.append(f"failed: {p['error']}")
        else:
            lines += [f"- batch {b}: {r['rows']:,} rows in {r['seconds']} s = {r['rows_per_s']:,.0f} rows/s end to end; "
                      f"{r['marginal_rows_per_s']:,.0f} rows/s without the command's {r['startup_seconds']} s start-up "
                      f"(timed on a 10-row file)" for b, r in p["by_batch_size"].items()]
        lines.append("")
    lines += ["## Targets", "", "| target | batch | value | met |", "|---|---|---|---|"]
    for t in summary["targets"]:
        value = f"{t['value']:+.4f}" if "AUC" in t["target"] else f"{t['value']:.2f}x"
        lines.append(f"| {t['target']} | {t['batch_size']} | {value} | {'yes' if t['met'] else 'NO'} |")
    if report.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in report["skipped"].items())]
    failed = [r for r in report["runs"] if "error" in r]
    if failed:
        lines += ["", "Failed: " + "; ".join(f"{r['runner']} B{r['batch_size']} seed {r['seed']}: {r['error']}" for r in failed)]
    return "\n".join(lines) + "\n"


def write(report: Dict[str, Any], out: Path, name: str) -> Tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_file, md_file = out / f"{name}.json", out / f"{name}.md"
    for path, text in ((json_file, json.dumps(report, indent=2) + "\n"), (md_file, markdown(report))):
        atomic_write_text(path, text)
    return json_file, md_file
