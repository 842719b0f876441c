"""Serving: artifact size, AUC and offline rows/s per quantization, and a load test of ``iarm serve``.

On MovieLens-1M (``paper`` field set, 20% test split) with an IARM trained briefly (or ``--run``):

1. ``iarm export --serving`` at ``none``, ``fp16``, ``int8``, ``int4``: file bytes against the TBE
   tables' own bytes and the float tables' (``rows x D x 4``); test AUC of each against the float
   export's (targets: int8 within 0.001, int4 within 0.003);
2. offline ``iarm predict`` rows/s per artifact (and the float export) on the first ratings;
3. ``iarm serve`` (int8, one worker, 127.0.0.1) under a bounded load from an asyncio client in this
   process: single-row and 512-row requests at several concurrencies, throughput and p50/p99 latency;
   the served answers are checked against ``iarm predict``'s for the same rows;
4. a storm of 10,000 malformed requests: every answer must be a 4xx, and afterwards the server is
   alive and answers correctly.

Everything is bounded in requests and seconds and talks to 127.0.0.1 only. Results:
``benchmarks/results/serve.json`` and ``.md`` with the ratios of the issue's targets. What the
vocabularies cost per id (real MovieLens-1M and Criteo vocabularies and a Criteo-size synthetic one,
against the int8 / int4 tables) is the quick ``benchmarks/vocab_size_bench.py``.

Usage::

    python benchmarks/serve_bench.py [--run RUN] [--quick]
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ML1M = ROOT.parent / "shared" / "data" / "movielens-1m"
QUANTIZATIONS = ("none", "fp16", "int8", "int4")
TRAIN = [
    "--dataset", "movielens-1m", "--field-set", "paper", "--test-ratio", "0.2", "--valid-ratio", "0.1",
    "--batch-size", "2048", "--epochs", "1", "--max-steps-per-epoch", "200", "--embedding-dim", "16", "--device", "cpu",
]  # fmt: skip


def iarm(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "iarm_torchrec.cli", *args], check=True, cwd=ROOT)


def train(work: Path) -> Path:
    run = work / "ml1m-run"
    if not (run / "metrics.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "iarm_torchrec.train", "--data-dir", str(ML1M), "--out", str(run),
             "--cache-dir", str(work / "cache"), *TRAIN],
            check=True, cwd=ROOT,
        )  # fmt: skip
    return run


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from torchmetrics.functional.classification import binary_auroc

    return float(binary_auroc(torch.from_numpy(scores), torch.from_numpy(labels).long()))


def test_scores(model: Any, data_dir: Path, logits: bool) -> Tuple[np.ndarray, np.ndarray]:
    from iarm_torchrec.data.loader import PADDING_LABEL, ShardedBatchLoader

    scores, labels = [], []
    with torch.no_grad():
        for batch in ShardedBatchLoader(data_dir, "test", batch_size=8192, drop_last=False):
            keep = batch.labels != PADDING_LABEL
            out = model(batch.dense_features, batch.sparse_features)
            scores.append((torch.sigmoid(out) if logits else out)[keep])
            labels.append(batch.labels[keep])
    return torch.cat(scores).numpy(), torch.cat(labels).numpy()


def subset_folder(folder: Path, ratings: int) -> Path:
    """MovieLens-1M with only its first ``ratings`` ratings (the offline predict input)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("users.dat", "movies.dat"):
        (folder / name).write_bytes((ML1M / name).read_bytes())
    lines = (ML1M / "ratings.dat").read_bytes().splitlines(keepends=True)[:ratings]
    (folder / "ratings.dat").write_bytes(b"".join(lines))
    return folder


def json_rows(folder: Path) -> List[Dict[str, Any]]:
    """The folder's ratings (all of them, in file order, as ``iarm predict`` scores them) as raw JSON
    rows of the ``paper`` fields."""
    from iarm_torchrec.data.movielens import year_token

    users = {}
    for line in (folder / "users.dat").read_text().splitlines():
        uid, gender, age, occupation, zip_code = line.split("::")
        users[uid] = {"gender": gender, "age": age, "occupation": occupation, "zip": zip_code}
    movies = {}
    for line in (folder / "movies.dat").read_bytes().decode("latin-1").splitlines():
        mid, title, genres = line.split("::")
        movies[mid] = {"genres": genres.split("|"), "year": year_token(int(title.strip()[-5:-1])).decode()}
    rows = []
    for line in (folder / "ratings.dat").read_text().splitlines():
        uid, mid, _, timestamp = line.split("::")
        rows.append({**users[uid], **movies[mid], "timestamp": int(timestamp)})
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: List[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


async def load_level(url: str, rows: List[Dict[str, Any]], size: int, concurrency: int, requests: int, seconds: float) -> Dict[str, Any]:
    """``requests`` POSTs of ``size`` rows (at most ``seconds``), ``concurrency`` at a time."""
    import httpx

    bodies = [json.dumps(rows[(i * size) % (len(rows) - size) : (i * size) % (len(rows) - size) + size]).encode() for i in range(64)]
    latencies: List[float] = []
    statuses: Dict[int, int] = {}
    sent = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal sent
            while sent < requests and time.monotonic() < deadline:
                body = bodies[sent % len(bodies)]
                sent += 1
                start = time.perf_counter()
                response = await client.post("/predict", content=body, headers={"content-type": "application/json"})
                latencies.append(time.perf_counter() - start)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        for _ in range(2):  # warm-up
            await client.post("/predict", content=bodies[0], headers={"content-type": "application/json"})
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    done = len(latencies)
    return {
        "rows_per_request": size,
        "concurrency": concurrency,
        "requests": done,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(done / elapsed, 1),
        "rows_per_s": round(done * size / elapsed, 1),
        "p50_ms": round(1000 * percentile(latencies, 50), 2),
        "p99_ms": round(1000 * percentile(latencies, 99), 2),
        "statuses": statuses,
    }


MALFORMED: List[bytes] = [
    b"not json",
    b'{"rows": []}',
    b"[1, 2, 3]",
    b'[{"age": {"nested": 1}}]',
    b'[{"timestamp": "yesterday"}]',
    b'[{"gender": true}]',
    b'[{"genres": 7}]',
    b'[{"unknown_field": "x"}]',
    b'[{"timestamp": NaN}]',
    b"[" * 5000,
    b'[{"zip": "' + b"9" * 5000 + b'"}]',
    b"[" + b",".join([b"{}"] * 5000) + b"]",  # over --max-rows
]


async def storm(url: str, count: int, concurrency: int) -> Dict[str, Any]:
    import httpx

    statuses: Dict[int, int] = {}
    sent = 0
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def worker() -> None:
            nonlocal sent
            while sent < count:
                body = MALFORMED[sent % len(MALFORMED)]
                sent += 1
                response = await client.post("/predict", content=body, headers={"content-type": "application/json"})
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {
        "requests": sum(statuses.values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "all_4xx": all(400 <= k < 500 for k in statuses),
        "seconds": round(elapsed, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="an ML-1M run folder to reuse (default: train one under --work)")
    parser.add_argument("--work", default=None, help="a folder for the run, artifacts and inputs (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--predict-ratings", type=int, default=100_000, help="ratings of the offline predict input")
    args = parser.parse_args()
    if not ML1M.is_dir():
        raise SystemExit(f"{ML1M}: MovieLens-1M is absent; this benchmark needs ../shared/data/movielens-1m")
    torch.set_num_threads(1)  # offline predict on one thread, as each server worker
    work = Path(args.work or tempfile.mkdtemp(prefix="serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    from iarm_torchrec.inference.export import load_exported
    from iarm_torchrec.inference.predict import predict
    from iarm_torchrec.inference.serving import ServingArtifact

    run = Path(args.run) if args.run else train(work)
    data_dir = Path(json.loads((run / "run.json").read_text())["data_dir"])
    float_file = work / "float.pt"
    iarm("export", str(run), "--out", str(float_file))
    float_scores, labels = test_scores(load_exported(float_file), data_dir, logits=True)
    float_auc = auc(float_scores, labels)
    spec = json.loads((data_dir / "spec.json").read_text())
    dim = json.loads((run / "model.json").read_text())["config"]["features"]["embedding_dim"]
    float_table_bytes = sum(f["vocab_size"] for f in spec["sparse"]) * dim * 4

    predict_input = subset_folder(work / "predict-input", args.predict_ratings)
    t = time.perf_counter()
    float_pred = predict(float_file, predict_input, work / "float.txt", progress=False)
    offline = {"float_export": round(len(float_pred) / (time.perf_counter() - t), 1)}

    artifacts: Dict[str, Dict[str, Any]] = {}
    for q in QUANTIZATIONS:
        path = work / f"serving-{q}.pt"
        iarm("export", str(run), "--serving", "--quantize", q, "--out", str(path))
        artifact = ServingArtifact.load(path)
        scores, _ = test_scores(artifact.module, data_dir, logits=False)
        t = time.perf_counter()
        served = predict(path, predict_input, work / f"{q}.txt", progress=False)
        rows_per_s = len(served) / (time.perf_counter() - t)
        sizes = artifact.size_report()
        artifacts[q] = {
            **sizes,
            "table_vs_float_tables": round(sizes["table_bytes"] / float_table_bytes, 4),
            "file_minus_tables_bytes": sizes["file_bytes"] - sizes["table_bytes"],
            "test_auc": round(auc(scores, labels), 6),
            "auc_delta_vs_float": round(auc(scores, labels) - float_auc, 6),
            "max_abs_probability_diff": float(np.abs(scores - float_scores).max()),
            "predict_rows_per_s": round(rows_per_s, 1),
            "predict_max_diff_vs_float_export": float((served - float_pred).abs().max()),
        }
        offline[q] = round(rows_per_s, 1)
        print(q, artifacts[q], flush=True)

    rows = json_rows(predict_input)
    assert len(rows) == len(float_pred), (len(rows), len(float_pred))
    int8_pred = np.loadtxt(work / "int8.txt")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (work / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "iarm_torchrec.cli", "serve", str(work / "serving-int8.pt"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    import httpx

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"the server did not come up; see {work / 'serve.log'}")
            time.sleep(0.5)
        check = httpx.post(f"{url}/predict", json=rows[:2000], timeout=60).json()["probabilities"]
        served_vs_predict = float(np.abs(np.array(check) - int8_pred[:2000]).max())
        scale = 0.25 if args.quick else 1.0
        levels = [(1, c, int(n * scale)) for c, n in ((1, 1000), (8, 3000), (32, 4000))]
        levels += [(512, c, int(n * scale)) for c, n in ((1, 100), (4, 300), (16, 400))]
        load = [asyncio.run(load_level(url, rows, size, conc, n, 20.0)) for size, conc, n in levels]
        for level in load:
            print(level, flush=True)
        bad = asyncio.run(storm(url, 2000 if args.quick else 10_000, 32))
        alive = httpx.get(f"{url}/health", timeout=5).json()["status"] == "ok"
        after = httpx.post(f"{url}/predict", json=rows[:2000], timeout=60).json()["probabilities"]
        bad.update(alive_after=alive, same_answers_after=bool(np.array_equal(after, check)))
        print(bad, flush=True)
        server.send_signal(signal.SIGTERM)
        shutdown_rc = server.wait(timeout=60)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()

    best_server = max(level["rows_per_s"] for level in load)
    single_low = next(level for level in load if level["rows_per_request"] == 1 and level["concurrency"] == 1)
    targets = {
        "int8_table_vs_float": artifacts["int8"]["table_vs_float_tables"],
        "fp16_table_vs_float": artifacts["fp16"]["table_vs_float_tables"],
        "int4_table_vs_float": artifacts["int4"]["table_vs_float_tables"],
        "int8_auc_delta (|.| <= 0.001)": artifacts["int8"]["auc_delta_vs_float"],
        "int4_auc_delta (|.| <= 0.003)": artifacts["int4"]["auc_delta_vs_float"],
        "server_best_rows_per_s / offline_int8_rows_per_s (>= 0.5)": round(best_server / offline["int8"], 3),
        "single_row_p99_ms_at_concurrency_1 (< 20)": single_low["p99_ms"],
        "malformed_all_4xx_alive_correct_after": bool(bad["all_4xx"] and bad["alive_after"] and bad["same_answers_after"]),
    }
    result = {
        "dataset": "movielens-1m (paper fields, test ratio 0.2)",
        "run": str(run),
        "model_config": json.loads((run / "model.json").read_text()),
        "float_test_auc": round(float_auc, 6),
        "test_rows": int(len(labels)),
        "float_table_bytes": float_table_bytes,
        "artifacts": artifacts,
        "offline_predict_rows_per_s": offline,
        "predict_rows": int(len(float_pred)),
        "served_vs_iarm_predict_max_diff": served_vs_predict,
        "load": load,
        "malformed_storm": bad,
        "shutdown_returncode": shutdown_rc,
        "targets": targets,
        "machine": {"cpus": len(os.sched_getaffinity(0)), "torch": torch.__version__},
        "note": "server (1 worker, 1 torch thread) and load client share the machine's 2 CPUs, and other jobs ran on "
        "them too (load average ~5 during the run): the client's own cost and the neighbours' are in every latency. "
        "Offline predict runs on one torch thread, as the server's worker does. Exit status -15 on SIGTERM is uvicorn re-raising the signal after "
        "its clean shutdown (one worker).",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "serve.md").write_text(report(result))
    print(report(result))


def report(r: Dict[str, Any]) -> str:
    lines = [
        "# Serving benchmark (`benchmarks/serve_bench.py`)",
        "",
        f"{r['dataset']}, IARM trained briefly (float test AUC {r['float_test_auc']:.4f}, {r['test_rows']} test rows); "
        f"{r['machine']['cpus']} CPUs shared by server and load client. Float tables: {r['float_table_bytes']:,} bytes.",
        "",
        "| quantization | file bytes | TBE table bytes | tables / float | file - tables | test AUC | AUC - float | max abs p diff | `iarm predict` rows/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for q, a in r["artifacts"].items():
        lines.append(
            f"| {q} | {a['file_bytes']:,} | {a['table_bytes']:,} | {a['table_vs_float_tables']:.3f} | {a['file_minus_tables_bytes']:,} "
            f"| {a['test_auc']:.5f} | {a['auc_delta_vs_float']:+.5f} | {a['max_abs_probability_diff']:.2g} | {a['predict_rows_per_s']:,.0f} |"
        )
    lines += [
        "",
        f"Float export `iarm predict`: {r['offline_predict_rows_per_s']['float_export']:,.0f} rows/s ({r['predict_rows']} rows). "
        f"Served (int8) vs `iarm predict` on the same rows: max diff {r['served_vs_iarm_predict_max_diff']:.2g}.",
        "",
        "## `iarm serve` (int8, 1 worker, 127.0.0.1)",
        "",
        "| rows/request | concurrency | requests | requests/s | rows/s | p50 ms | p99 ms | statuses |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for level in r["load"]:
        lines.append(
            f"| {level['rows_per_request']} | {level['concurrency']} | {level['requests']} | {level['requests_per_s']:,.0f} "
            f"| {level['rows_per_s']:,.0f} | {level['p50_ms']} | {level['p99_ms']} | {level['statuses']} |"
        )
    s = r["malformed_storm"]
    lines += [
        "",
        f"Malformed storm: {s['requests']} requests in {s['seconds']} s, statuses {s['statuses']}, all 4xx: {s['all_4xx']}, "
        f"alive after: {s['alive_after']}, same answers after: {s['same_answers_after']}. "
        f"Shutdown (SIGTERM) return code: {r['shutdown_returncode']}.",
        "",
        "## Targets",
        "",
        "| target | measured |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in r["targets"].items()]
    lines += ["", r["note"], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
