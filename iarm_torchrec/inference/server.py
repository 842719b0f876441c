"""``iarm serve ARTIFACT``: click probabilities over HTTP (FastAPI on uvicorn) from a serving artifact.

Endpoints:

* ``POST /predict``: a JSON list of raw rows, each an object ``{field: value}`` (the artifact's
  fields, ``GET /metadata``; missing fields and ``null`` are the missing value, unseen values get
  the out-of-vocabulary id, a multi-hot field takes a list or a ``|``-separated string; a schema's
  time column, kind ``time``, stands for the fields derived from it) ->
  ``{"probabilities": [p_0, p_1, ...]}`` in row order. Rows are encoded by the package's own
  encoders (:class:`~iarm_torchrec.data.encoders.RowEncoder`) with the vocabularies, hashing and
  numeric statistics stored in the artifact, then scored by the artifact's TorchScript module.
* ``GET /health``: ``{"status": "ok", ...}`` with the queue and batch counters.
* ``GET /metadata``: the model, its training run, the encoders' version, the quantization, the fields
  (and time columns) with their kinds.

Requests arriving within ``--batch-window-ms`` are scored as one batch
(:class:`~iarm_torchrec.inference.batcher.MicroBatcher`, one per worker process). Refusals, all JSON
``{"detail": message}`` and never fatal to the server: 400 (not JSON), 413 (body over
``--max-body-mb`` or more than ``--max-rows`` rows), 422 (not a list of objects, an unknown field or a
bad value: the message names the row and the field), 503 (``--max-queue`` requests waiting; retry).
``--workers N`` runs N processes (uvicorn's supervisor) on one port, each with ``--threads`` (1) torch
threads; SIGINT/SIGTERM stops accepting, finishes the requests in flight, then exits (with one worker,
uvicorn re-raises the signal after the clean shutdown, so the exit status is the signal's).
"""

import argparse
import contextlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Dict, List, Tuple

import numpy as np
import torch

from iarm_torchrec.data.encoders import RowEncoder, RowError
from iarm_torchrec.inference.batcher import MicroBatcher, QueueFull

logger = logging.getLogger("iarm_torchrec.serve")
CONFIG_ENV = "IARM_SERVE_CONFIG"  # the settings, as JSON, for each worker process's app factory

Encoded = Tuple[np.ndarray, np.ndarray, Dict[str, Tuple[np.ndarray, np.ndarray]]]


@dataclass
class ServeSettings:
    """What a server process needs; ``iarm serve``'s flags."""

    artifact: str
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int = 1  # torch threads per worker: one, and more workers for more cores (intra-op threads
    # on a busy machine turn a 1 ms batch into hundreds of ms: measured in docs/serving.md)
    max_batch_rows: int = 4096
    batch_window_ms: float = 2.0
    max_queue: int = 256
    max_rows: int = 4096
    max_body_mb: float = 8.0
    graceful_timeout_s: float = 30.0
    log_level: str = "info"


class Scorer:
    """The artifact's module and row encoder: encoded requests -> probabilities per request."""

    def __init__(self, artifact_path: str, work_dir: Path) -> None:
        from iarm_torchrec.inference.serving import ServingArtifact

        self.artifact = ServingArtifact.load(artifact_path)
        self.encoder: RowEncoder = self.artifact.row_encoder(work_dir / "data")
        inputs = self.artifact.metadata["inputs"]
        self.keys: List[str] = inputs["sparse_keys"]
        self.one_hot_column = {name: j for j, name in enumerate(inputs["one_hot_fields"])}
        if self.encoder.one_hot_fields != inputs["one_hot_fields"] or list(self.encoder.dense_fields) != inputs["dense_fields"]:
            raise ValueError(f"{artifact_path}: its spec and its input description disagree; export it again")

    def encode(self, rows: List[Any]) -> Encoded:
        return self.encoder.encode(rows)

    def score(self, items: List[Encoded]) -> List[np.ndarray]:
        """One forward pass over the requests' rows together; the probabilities split per request."""
        from iarm_torchrec.data.loader import sparse_features

        dense = np.concatenate([item[0] for item in items])
        one_hot = np.concatenate([item[1] for item in items])
        multi = {
            name: (np.concatenate([item[2][name][0] for item in items]), np.concatenate([item[2][name][1] for item in items]))
            for name in self.encoder.multi_hot_fields
        }
        kjt = sparse_features(self.keys, self.one_hot_column, one_hot, multi)
        with torch.inference_mode():
            probabilities = self.artifact.module(torch.from_numpy(dense), kjt).numpy()
        sizes = np.cumsum([len(item[0]) for item in items])[:-1]
        return np.split(probabilities, sizes)

    def metadata(self) -> Dict[str, Any]:
        meta = self.artifact.metadata
        return {
            "model": meta["model"],
            "quantization": meta["quantization"],
            "training_run": meta["training_run"],
            "dataset": meta["dataset"],
            "encoders_version": meta["encoders"]["version"],
            "format": meta["format"],
            "fields": self.encoder.fields,
            "model_config": meta["model_config"],
            "versions": meta["versions"],
            "artifact": str(self.artifact.path),
        }


def create_app(settings: ServeSettings) -> Any:
    """The FastAPI application of one worker process."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    state: Dict[str, Any] = {}
    max_body = int(settings.max_body_mb * 2**20)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        work_dir = Path(tempfile.mkdtemp(prefix="iarm-serve-"))
        try:
            scorer = Scorer(settings.artifact, work_dir)
            batcher = MicroBatcher(
                scorer.score, settings.max_batch_rows, settings.batch_window_ms / 1000.0, settings.max_queue
            )
            await batcher.start()
            state.update(scorer=scorer, batcher=batcher)
            logger.info("serving %s (%s, %s) pid %d", settings.artifact, scorer.artifact.metadata["model"],
                        scorer.artifact.metadata["quantization"], os.getpid())
            yield
            await batcher.stop()  # uvicorn has finished the requests in flight; score what is queued
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)

    app = FastAPI(title="iarm serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def refuse(status: int, message: str, **extra: Any) -> JSONResponse:
        return JSONResponse({"detail": message, **extra}, status_code=status)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:  # never a dead server
        logger.exception("internal error on %s", request.url.path)
        return refuse(500, f"internal error: {type(error).__name__}: {error}")

    @app.get("/health")
    async def health() -> Dict[str, Any]:
        batcher: MicroBatcher = state["batcher"]
        return {"status": "ok", "pid": os.getpid(), "queued": batcher.waiting, "batches": batcher.batches, "rows": batcher.rows}

    @app.get("/metadata")
    async def metadata() -> Dict[str, Any]:
        return state["scorer"].metadata()

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return refuse(400, f"bad Content-Length {declared!r}")
            if int(declared) > max_body:
                return refuse(413, f"request body of {declared} bytes is over the limit of {max_body} bytes")
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > max_body:
                return refuse(413, f"request body is over the limit of {max_body} bytes")
        try:
            rows = json.loads(body)
        except (ValueError, RecursionError) as error:
            return refuse(400, f"body is not JSON: {error}")
        if not isinstance(rows, list):
            return refuse(422, f"expected a JSON list of row objects, got {type(rows).__name__}")
        if len(rows) > settings.max_rows:
            return refuse(413, f"{len(rows)} rows are over the limit of {settings.max_rows} rows per request")
        if not rows:
            return {"probabilities": []}
        scorer: Scorer = state["scorer"]
        try:
            encoded = scorer.encode(rows)
        except RowError as error:
            return refuse(422, str(error), row=error.row, field=error.field)
        try:
            probabilities = await state["batcher"].submit(encoded, len(rows))
        except QueueFull as error:
            return JSONResponse({"detail": f"server busy: {error}; retry later"}, status_code=503, headers={"Retry-After": "1"})
        return {"probabilities": probabilities.tolist()}

    return app


def app_from_env() -> Any:
    """uvicorn's app factory in each worker process: the settings come in :data:`CONFIG_ENV`."""
    settings = ServeSettings(**json.loads(os.environ[CONFIG_ENV]))
    _set_threads(settings)
    return create_app(settings)


def _set_threads(settings: ServeSettings) -> None:
    torch.set_num_threads(settings.threads)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ServeSettings("")
    parser.add_argument("artifact", help="a serving artifact (iarm export RUN --serving --out FILE)")
    parser.add_argument("--host", default=d.host, help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=d.port, help="default %(default)s")
    parser.add_argument("--workers", type=int, default=d.workers, help="worker processes (default %(default)s)")
    parser.add_argument("--threads", type=int, default=d.threads, help="torch threads per worker (default %(default)s; use --workers for more cores)")
    parser.add_argument("--max-batch-rows", type=int, default=d.max_batch_rows, help="a micro-batch's rows at most")
    parser.add_argument("--batch-window-ms", type=float, default=d.batch_window_ms, help="how long a batch waits for more requests")
    parser.add_argument("--max-queue", type=int, default=d.max_queue, help="requests waiting at most per worker; more get 503")
    parser.add_argument("--max-rows", type=int, default=d.max_rows, help="rows per request at most (413 beyond)")
    parser.add_argument("--max-body-mb", type=float, default=d.max_body_mb, help="request body size at most (413 beyond)")
    parser.add_argument("--graceful-timeout-s", type=float, default=d.graceful_timeout_s,
                        help="on SIGTERM/SIGINT, how long requests in flight may take to finish")
    parser.add_argument("--log-level", default=d.log_level, choices=["critical", "error", "warning", "info", "debug"])


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    names = set(asdict(ServeSettings("")))
    settings = ServeSettings(**{k: v for k, v in vars(args).items() if k in names})
    for name in ("workers", "max_batch_rows", "max_queue", "max_rows"):
        if getattr(settings, name) < 1:
            raise SystemExit(f"iarm serve: --{name.replace('_', '-')} must be >= 1, got {getattr(settings, name)}")
    if settings.threads < 1 or settings.batch_window_ms < 0 or settings.max_body_mb <= 0:
        raise SystemExit("iarm serve: --threads must be >= 1, --batch-window-ms >= 0, --max-body-mb > 0")
    return settings


def serve(args: argparse.Namespace) -> int:
    """Run the server until SIGINT/SIGTERM (``iarm serve``)."""
    import uvicorn

    from iarm_torchrec.inference.serving import ServingArtifact, is_serving_artifact

    settings = settings_from_args(args)
    artifact = Path(settings.artifact)
    if not is_serving_artifact(artifact):
        raise SystemExit(f"iarm serve: {artifact}: not a serving artifact; make one with iarm export RUN --serving --out FILE")
    settings.artifact = str(artifact.resolve())
    ServingArtifact.load(settings.artifact)  # fail here, once, rather than in every worker
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s: %(message)s")
    os.environ[CONFIG_ENV] = json.dumps(asdict(settings))
    uvicorn.run(
        "iarm_torchrec.inference.server:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s) or None,
        limit_max_requests=None,
    )
    return 0
