"""Which fields attend to which: IARM's attention (Eq. 7) averaged over a split (the paper's Fig. 5).

:func:`mean_attention` runs the model over every real sample of a loader and averages each
interacting layer's ``alpha^h_{m,k}`` over the samples, giving ``L x H x M x M`` (row ``m``
of each map still sums to 1). :func:`pair_scores` folds that into one symmetric ``M x M``
score per field pair: layers, heads and both directions (``m`` attending to ``k`` and ``k``
to ``m``) averaged. :func:`ranked_pairs` lists the pairs ``m < k`` from the highest score down.
:func:`run_attention` does it for a finished training run (its best checkpoint, its test
split) and keeps the result as ``RUN/attention.pt``.

Example::

    >>> maps = torch.tensor([[[[0.5, 0.4, 0.1], [0.3, 0.6, 0.1], [0.2, 0.2, 0.6]]]])  # L=1, H=1, M=3
    >>> pair_scores(maps)
    tensor([[0.5000, 0.3500, 0.1500],
            [0.3500, 0.6000, 0.1500],
            [0.1500, 0.1500, 0.6000]])
    >>> ranked_pairs(pair_scores(maps))[0]
    (0, 1, 0.35)
"""

import json
import tempfile
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torchrec.datasets.utils import Batch

from iarm_torchrec.data.loader import PADDING_LABEL, ShardedBatchLoader
from iarm_torchrec.files import PathLike, atomic_path
from iarm_torchrec.inference.export import export_run, load_exported
from iarm_torchrec.train.layout import RUN_FILE

ATTENTION_FILE = "attention.pt"


@torch.no_grad()
def mean_attention(model: nn.Module, batches: Iterable[Batch]) -> torch.Tensor:
    """Each layer's attention averaged over the real (non-padding) samples of ``batches``.

    Args:
        model: an IARM (anything with ``forward_with_attention(dense, kjt) -> (logits,
            [B x H x M x M per layer])``), switched to eval mode here.
        batches: TorchRec ``Batch``\\ es; rows labelled :data:`PADDING_LABEL` are skipped.

    Returns:
        ``L x H x M x M`` float64 (``L`` interacting layers, ``H`` heads, ``M`` fields).
    """
    model.eval()
    total: Optional[torch.Tensor] = None
    count = 0
    for batch in batches:
        _, maps = model.forward_with_attention(batch.dense_features, batch.sparse_features)
        if not maps:
            raise ValueError("the model has no attention maps (num_layers=0 or use_attention=False)")
        real = batch.labels != PADDING_LABEL
        summed = torch.stack([m[real].double().sum(0) for m in maps])  # L x H x M x M
        total = summed if total is None else total + summed
        count += int(real.sum())
    if total is None or count == 0:
        raise ValueError("no samples to average the attention over")
    return total / count


def pair_scores(maps: torch.Tensor) -> torch.Tensor:
    """``L x H x M x M`` attention -> ``M x M`` symmetric pair scores (layers, heads and both
    directions averaged)."""
    mean = maps.mean(dim=(0, 1))
    return (mean + mean.T) / 2


def ranked_pairs(scores: torch.Tensor) -> List[Tuple[int, int, float]]:
    """The field pairs ``(m, k, score)`` with ``m < k``, highest score first."""
    m, k = torch.triu_indices(len(scores), len(scores), offset=1)
    values = scores[m, k]
    order = torch.argsort(values, descending=True, stable=True)
    return [(int(m[i]), int(k[i]), round(float(values[i]), 6)) for i in order]


def save_attention(run_dir: PathLike, maps: torch.Tensor, field_names: Sequence[str]) -> Path:
    """Write ``RUN/attention.pt`` (``{"maps": L x H x M x M, "fields": [...]}``) atomically;
    loadable with ``weights_only=True``."""
    path = Path(run_dir) / ATTENTION_FILE
    with atomic_path(path) as tmp:
        torch.save({"maps": maps, "fields": json.dumps(list(field_names))}, tmp)
    return path


def load_attention(run_dir: PathLike) -> Optional[Tuple[torch.Tensor, List[str]]]:
    """``(maps, field names)`` saved by :func:`save_attention`, or ``None`` when not computed yet."""
    path = Path(run_dir) / ATTENTION_FILE
    if not path.is_file():
        return None
    saved = torch.load(path, weights_only=True)
    return saved["maps"], json.loads(saved["fields"])


def run_attention(run_dir: PathLike, batch_size: int = 4096) -> Tuple[torch.Tensor, List[str]]:
    """The ``L x H x M x M`` test-split attention of a finished IARM run and its field names,
    computed from the run's best checkpoint on first use and kept in ``RUN/attention.pt``."""
    run_dir = Path(run_dir)
    cached = load_attention(run_dir)
    if cached is not None:
        return cached
    with tempfile.TemporaryDirectory(prefix="iarm-attention-") as tmp:
        model = load_exported(export_run(run_dir, Path(tmp) / "model.pt"))
    data_dir = Path(json.loads((run_dir / RUN_FILE).read_text())["data_dir"])
    loader = ShardedBatchLoader(data_dir, "test", batch_size=batch_size, drop_last=False, pin_memory=False)
    maps = mean_attention(model, loader)
    save_attention(run_dir, maps, model.field_names)
    return maps, list(model.field_names)
