"""Click-through rates for a raw file, from an exported model or a serving artifact.

``iarm predict --model FILE --input RAW --out SCORES`` reads ``RAW`` in the dataset's own
format (labelled, or not with ``--unlabelled``, e.g. Criteo's ``test.txt``), encodes it with
the vocabulary and numeric statistics saved in ``FILE`` (the data side's
:func:`~iarm_torchrec.data.preprocess.encode`), runs the model in batches and writes one
click probability per input row, in input order: every input row gets its line. MovieLens rows
with rating 3, which the training protocol drops (no click label), are scored too; their count
is reported (a warning, and ``spec.options["neutral_rows"]`` of the encoded rows). A bad input row
stops with ``FILE:LINE: ...`` (there is no skipping, so no row can go missing).
``FILE`` is either ``iarm export``'s file
(float weights, the model rebuilt by this package) or ``iarm export --serving``'s artifact (the
quantized TorchScript module, :mod:`~iarm_torchrec.inference.serving`); the format is detected.

Scoring runs ``threads`` batches at once, each on its own thread computing with one core
(``--threads``, default torch's thread count: ``OMP_NUM_THREADS`` or the machine's cores),
rather than one batch at a time with every op split across the cores. A CTR forward is a chain
of short ops (GEMMs of a few milliseconds, the attention kernel, small element-wise passes): split
across cores each op ends in a barrier where the cores wait for the slowest, and on a machine
running anything else that wait dominates (a loaded 2-core machine: 2.5-4x end to end; a quiet one:
level within the noise, docs/performance.md). The scores are the same either
way; memory holds ``threads`` batches' activations instead of one.
"""

import logging
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Deque, Iterable, Iterator, Optional, Tuple

import torch
from torchrec.datasets.utils import Batch
from tqdm import tqdm

from iarm_torchrec.allocator import ResultBuffer
from iarm_torchrec.data.loader import PADDING_LABEL, ShardedBatchLoader
from iarm_torchrec.data.preprocess import encode
from iarm_torchrec.data.spec import FeatureSpec
from iarm_torchrec.files import PathLike, atomic_write_text
from iarm_torchrec.inference import SCORING_BATCH_SIZE
from iarm_torchrec.inference.export import model_from_payload, read_export, write_data_files
from iarm_torchrec.inference.serving import ServingArtifact, is_serving_artifact
from iarm_torchrec.models.ctr_train import resolve_precision

Scorer = Callable[[torch.Tensor, object], torch.Tensor]  # (dense, KJT) -> probabilities


PRECISIONS = ("fp32", "bf16", "auto")
"""``iarm predict --precision``; by default the model's training precision (:func:`scoring_precision`)."""


def _scorer(model_file: PathLike, data_dir: Path) -> Tuple[Scorer, str, str]:
    """The probability function of ``model_file``, its kind, and the precision it was trained in
    (``fp32`` where the file does not record it: serving artifacts, exports made before it was
    recorded); writes its data files to ``data_dir``."""
    if is_serving_artifact(model_file):
        artifact = ServingArtifact.load(model_file)
        artifact.write_data_files(data_dir)
        return artifact.module, "serving", "fp32"
    payload = read_export(model_file)
    model = model_from_payload(payload)
    write_data_files(payload, data_dir)
    trained = payload.get("training_run", {}).get("precision", "fp32")
    return (lambda dense, kjt: torch.sigmoid(model(dense, kjt).float())), "export", trained


def scoring_precision(asked: Optional[str], trained: str) -> str:
    """The dense arches' compute type for scoring on CPU: ``asked`` if given, else the model's
    training precision ``trained``; ``auto`` becomes bf16 where the CPU computes it natively
    (AVX512-BF16/AMX, as training's ``auto``), and ``fp16`` (CUDA training only) fp32.

    Example::

        >>> scoring_precision("fp32", "bf16"), scoring_precision(None, "bf16"), scoring_precision(None, "fp16")
        ('fp32', 'bf16', 'fp32')
    """
    if asked is not None and asked not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {asked!r}")
    resolved = resolve_precision(trained if asked is None else asked, "cpu")
    return "fp32" if resolved == "fp16" else resolved


def predict(
    model_file: PathLike,
    input_file: PathLike,
    out_file: PathLike,
    labelled: bool = True,
    batch_size: int = SCORING_BATCH_SIZE,
    progress: bool = True,
    precision: Optional[str] = None,
    threads: Optional[int] = None,
) -> torch.Tensor:
    """Write ``input_file``'s click probabilities to ``out_file`` (one per line, ``%.6g``, one
    line per input row) and return them. ``precision`` is the dense arches' compute type
    (:func:`scoring_precision`: by default the one the model was trained in; ``bf16`` scores under
    bf16 autocast, as training's ``--precision bf16``). ``threads`` batches are scored at once,
    one core each (default ``torch.get_num_threads()``)."""
    threads = torch.get_num_threads() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    with tempfile.TemporaryDirectory(prefix="iarm-predict-") as tmp:
        data_dir = Path(tmp) / "data"
        score, _, trained = _scorer(model_file, data_dir)
        precision = scoring_precision(precision, trained)
        logger.info("scoring in %s (the model was trained in %s)", precision, trained)
        encoded = Path(tmp) / "encoded"
        spec = encode(str(input_file), str(data_dir), str(encoded), labelled=labelled, split_name="test", keep_neutral=True)
        _report_neutral(spec, str(input_file))
        loader = ShardedBatchLoader(encoded, "test", batch_size=batch_size, drop_last=False, pin_memory=False)
        scores = ResultBuffer(loader.num_real_rows)  # not a list of small tensors: allocator.py
        batches = tqdm(loader, desc="predict", unit="batch", disable=not progress)
        for probabilities in scored_in_order(score, batches, threads, bf16=precision == "bf16"):
            scores.extend(probabilities)
        result = scores.values()
    atomic_write_text(out_file, "".join(f"{p:.6g}\n" for p in result.tolist()))
    return result


def scored_in_order(score: Scorer, batches: Iterable[Batch], threads: int, bf16: bool = False) -> Iterator[torch.Tensor]:
    """Each batch's probabilities (float32 ``[rows]``, padding rows dropped), in the batches'
    order, ``threads`` batches computed at once on as many threads with one core each (torch's
    intra-op thread count is 1 meanwhile, and restored after). Inference mode and bf16 autocast
    are per thread, so each scoring thread enters them itself."""

    def one(batch: Batch) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            probabilities = score(batch.dense_features, batch.sparse_features).float()
        return probabilities[batch.labels != PADDING_LABEL]

    with _one_core_per_op(), ThreadPoolExecutor(max_workers=threads, thread_name_prefix="iarm-score") as pool:
        pending: Deque[Future] = deque()  # at most 2 x threads batches loaded and not yet collected
        for batch in batches:
            pending.append(pool.submit(one, batch))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@contextmanager
def _one_core_per_op() -> Iterator[None]:
    """torch's intra-op threads set to 1 (threads started meanwhile take it), then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


logger = logging.getLogger(__name__)


def _report_neutral(spec: FeatureSpec, source: str) -> None:
    """Say how many MovieLens rating-3 rows were scored beside the labelled ones."""
    neutral = int(spec.options.get("neutral_rows", 0) or 0)
    if neutral:
        logger.warning(
            "%s: %d of %d rows have rating 3, which training drops (no click label): they are scored too",
            source, neutral, sum(spec.rows.values()),
        )
