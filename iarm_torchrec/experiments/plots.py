"""PNG plots of the studies: AUC against interacting layers (Fig. 4) and attention heatmaps (Fig. 5).

Needs matplotlib (``pip install iarm-torchrec[plots]``); it is imported when a plot is
drawn, with a message saying how to install it when it is missing. Plots are small
(about 500 x 400 pixels) so they can live in the repository.

Example::

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from iarm_torchrec.experiments.results import Summary
    >>> folder = Path(tempfile.mkdtemp())
    >>> rows = [Summary.of(f"{n} layers", str(n), [0, 1], [0.80 + n / 100, 0.81 + n / 100], [0.4, 0.4]) for n in range(3)]
    >>> plot_layers(rows, folder / "layers.png", "synthetic").stat().st_size > 0
    True
    >>> plot_heatmap(torch.eye(3), ["a", "b", "c"], "toy", folder / "map.png").is_file()
    True
"""

from pathlib import Path
from typing import Any, Sequence

import torch

from iarm_torchrec.experiments.results import Summary
from iarm_torchrec.files import PathLike, atomic_path

DPI = 100


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'iarm-torchrec[plots]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:  # the temporary name has no image suffix: say the format
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    return path


def plot_layers(summaries: Sequence[Summary], path: PathLike, dataset: str) -> Path:
    """Test AUC (mean, with ± one standard deviation bars) against the number of interacting
    layers; ``summaries`` are the ``layers`` study's rows, whose ``group`` is the layer count."""
    plt = _pyplot()
    rows = sorted((int(s.group), s) for s in summaries if s.group is not None)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.errorbar(
        [n for n, _ in rows],
        [s.auc_mean for _, s in rows],
        yerr=[0.0 if s.n < 2 else s.auc_std for _, s in rows],
        marker="o",
        capsize=3,
    )
    ax.set_xticks([n for n, _ in rows])
    ax.set_xlabel("interacting layers")
    ax.set_ylabel("test AUC")
    ax.set_title(f"IARM on {dataset}: AUC against layers")
    ax.grid(alpha=0.3)
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def plot_heatmap(
    scores: torch.Tensor, field_names: Sequence[str], title: str, path: PathLike
) -> Path:
    """An ``M x M`` attention map (row: the attending field, column: the field attended to)
    with the field names on both axes and the values written in the cells."""
    plt = _pyplot()
    m = len(field_names)
    size = min(4 + 0.35 * m, 9)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    values = scores.double().numpy()
    image = ax.imshow(values, cmap="viridis")
    ax.set_xticks(range(m), labels=list(field_names), rotation=60, ha="right")
    ax.set_yticks(range(m), labels=list(field_names))
    if m <= 12:
        threshold = (values.max() + values.min()) / 2
        for i in range(m):
            for j in range(m):
                color = "black" if values[i, j] > threshold else "white"
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8, color=color)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)
