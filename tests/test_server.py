"""``iarm serve``: the HTTP API, bad requests (4xx naming the field, never a dead server), the queue's
503, the micro-batcher, and a real 2-worker server process with graceful shutdown (localhost only)."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from iarm_torchrec.data.loader import sparse_features
from iarm_torchrec.inference.batcher import MicroBatcher, QueueFull
from iarm_torchrec.inference.server import ServeSettings, create_app
from iarm_torchrec.data.spec import SPEC_FILE
from iarm_torchrec.inference.serving import ServingArtifact, export_serving, write_artifact
from dist_utils import free_port
from train_utils import checkpointed_run, run_env

ROW: Dict[str, Any] = {"I1": 3, "I2": None, "I5": 1200.5, "C1": "68fd1e64", "C2": "80e26c9b", "C9": "a73ee510"}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = checkpointed_run(tmp_path_factory.getbasetemp())
    return export_serving(run, tmp_path_factory.mktemp("serve") / "int8.pt", "int8")


@pytest.fixture(scope="module")
def client(artifact: Path) -> Iterator[TestClient]:
    app = create_app(ServeSettings(str(artifact), max_rows=600, max_body_mb=0.5, batch_window_ms=1.0))
    with TestClient(app) as c:
        yield c


def _direct(artifact: Path, rows: List[Dict[str, Any]], tmp: Path) -> np.ndarray:
    """The artifact's module on the rows, encoded by the same RowEncoder, without HTTP or batching."""
    loaded = ServingArtifact.load(artifact)
    encoder = loaded.row_encoder(tmp)
    dense, one_hot, multi = encoder.encode(rows)
    columns = {name: j for j, name in enumerate(encoder.one_hot_fields)}
    kjt = sparse_features(loaded.metadata["inputs"]["sparse_keys"], columns, one_hot, multi)
    return loaded.module(torch.from_numpy(dense), kjt).numpy()


def test_predict_health_and_metadata(client: TestClient, artifact: Path, tmp_path: Path) -> None:
    rows = [ROW, {}, {"C1": "never-seen-value", "I3": -4}, {**ROW, "C3": 12345}]
    response = client.post("/predict", json=rows)
    assert response.status_code == 200, response.text
    probabilities = response.json()["probabilities"]
    assert len(probabilities) == len(rows) and all(0 < p < 1 for p in probabilities)
    np.testing.assert_allclose(probabilities, _direct(artifact, rows, tmp_path), rtol=0, atol=1e-6)
    assert client.post("/predict", json=[]).json() == {"probabilities": []}
    assert client.get("/health").json()["status"] == "ok"
    meta = client.get("/metadata").json()
    assert meta["model"] == "iarm" and meta["quantization"] == "int8"
    assert meta["training_run"]["checkpoint"].startswith("step-") and len(meta["encoders_version"]) == 16
    assert meta["fields"]["C1"] == "one_hot" and meta["fields"]["I1"] == "dense"


def test_concurrent_requests_are_batched_and_answered_in_order(client: TestClient, artifact: Path, tmp_path: Path) -> None:
    rows = [{**ROW, "I1": i} for i in range(40)]
    expected = _direct(artifact, rows, tmp_path)
    before = client.get("/health").json()["batches"]
    results: Dict[int, float] = {}

    def ask(i: int) -> None:
        results[i] = client.post("/predict", json=[rows[i]]).json()["probabilities"][0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(rows))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_allclose([results[i] for i in range(len(rows))], expected, atol=1e-6)
    assert client.get("/health").json()["batches"] - before <= len(rows)


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"not json", 400, ["not JSON"]),
        (b'{"rows": []}', 422, ["JSON list"]),
        (b"[1, 2]", 422, ["row 0", "object"]),
        (b'[{"I1": "three"}]', 422, ["'I1'", "number"]),
        (b'[{}, {"C1": {"a": 1}}]', 422, ["row 1", "'C1'", "string"]),
        (b'[{"C1": true}]', 422, ["'C1'"]),
        (b'[{"I1": NaN}]', 422, ["'I1'", "finite"]),
        (b'[{"nope": 1}]', 422, ["'nope'", "unknown field"]),
        (b'[{"C1": "' + b"x" * 2000 + b'"}]', 422, ["'C1'", "longer"]),
        (b"[" + b",".join([b"{}"] * 601) + b"]", 413, ["601 rows", "600"]),
        (b'[{"C1": "' + b"x" * 600_000 + b'"}]', 413, ["bytes"]),
        (b"[" * 100_000, 400, ["not JSON"]),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem(client: TestClient, body: bytes, status: int, words: List[str]) -> None:
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert all(w in detail for w in words), detail
    assert client.post("/predict", json=[ROW]).status_code == 200  # still serving


def test_a_row_may_carry_the_time_column_of_derived_fields(artifact: Path, tmp_path: Path) -> None:
    # the artifact with its schema edited so that C9 is the hour of a time column ts: the server's way
    # with a tabular dataset's time, without another training run (tests/test_tabular.py checks the
    # derived ids against preprocessed shards)
    loaded = ServingArtifact.load(artifact)
    spec = json.loads(loaded.data_files[SPEC_FILE])
    (c9,) = [f for f in spec["options"]["schema"]["fields"] if f["name"] == "C9"]
    c9["derive"] = {"source": {"column": "ts", "unit": "s", "format": None}, "part": "hour"}
    size = next(f["vocab_size"] for f in spec["sparse"] if f["name"] == "C9")
    spec["options"]["hash_buckets"] = {**(spec["options"]["hash_buckets"] or {}), "C9": size - 1}  # hours get ids of their own
    write_artifact(loaded.module, tmp_path / "timed.pt", loaded.metadata, {**loaded.data_files, SPEC_FILE: json.dumps(spec).encode()})
    row = {k: v for k, v in ROW.items() if k != "C9"}
    with TestClient(create_app(ServeSettings(str(tmp_path / "timed.pt")))) as client:
        assert client.get("/metadata").json()["fields"]["ts"] == "time"
        by_time = client.post("/predict", json=[{**row, "ts": 1_700_000_000}, {**row, "ts": "1700003600"}])
        by_hour = client.post("/predict", json=[{**row, "C9": "22"}, {**row, "C9": 23}])
        assert by_time.status_code == 200 and by_time.json() == by_hour.json()
        assert by_time.json() != client.post("/predict", json=[row, row]).json()  # not C9's missing value
        bad = client.post("/predict", json=[row, {**row, "ts": "noon"}])
        assert bad.status_code == 422 and bad.json()["field"] == "ts" and bad.json()["row"] == 1, bad.text
        both = client.post("/predict", json=[{**row, "ts": 1_700_000_000, "C9": "22"}])
        assert both.status_code == 422 and both.json()["field"] == "C9" and "'ts'" in both.json()["detail"], both.text


def test_a_full_queue_refuses_at_once() -> None:
    release = threading.Event()

    def slow(items: List[int]) -> List[int]:
        release.wait(10)
        return items

    async def scenario() -> List[Any]:
        batcher = MicroBatcher(slow, max_batch_rows=1, window_s=0, max_queue=1)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(1, 1))  # taken by the batcher, blocks in slow()
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.submit(2, 1))  # waits in the queue (max_queue=1)
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull):
            await batcher.submit(3, 1)
        release.set()
        results = [await first, await second]
        await batcher.stop()
        return results

    assert asyncio.run(scenario()) == [1, 2]


def test_a_failing_batch_fails_its_requests_not_the_batcher() -> None:
    def score(items: List[int]) -> List[int]:
        if 0 in items:
            raise RuntimeError("boom")
        return items

    async def scenario() -> Any:
        batcher = MicroBatcher(score, window_s=0)
        await batcher.start()
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(0, 1)
        result = await batcher.submit(5, 1)
        await batcher.stop()
        return result

    assert asyncio.run(scenario()) == 5


@pytest.mark.slow
def test_two_workers_serve_and_shut_down_gracefully(artifact: Path, tmp_path: Path) -> None:
    """``iarm serve --workers 2`` on 127.0.0.1: answers, and SIGTERM lets a request in flight finish."""
    import httpx

    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    command = [sys.executable, "-m", "iarm_torchrec.cli", "serve", str(artifact), "--host", "127.0.0.1",
               "--port", str(port), "--workers", "2", "--batch-window-ms", "1"]  # fmt: skip
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=run_env(), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        pids = set()
        while time.monotonic() < deadline and len(pids) < 2:
            try:
                pids.add(httpx.get(f"{url}/health", timeout=2).json()["pid"])
            except httpx.HTTPError:
                time.sleep(0.5)
        assert len(pids) == 2, (tmp_path / "serve.log").read_text()[-3000:]
        big = [{**ROW, "I1": i % 50} for i in range(2000)]
        expected = httpx.post(f"{url}/predict", json=big, timeout=60).json()["probabilities"]
        # a request in flight: headers and half the body sent, then SIGTERM, then the rest
        body = json.dumps(big).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
            conn.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body[: len(body) // 2])
            time.sleep(0.5)
            server.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            conn.sendall(body[len(body) // 2 :])
            answer = b""
            while chunk := conn.recv(1 << 16):
                answer += chunk
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), answer[:500]
        assert json.loads(payload)["probabilities"] == expected
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
