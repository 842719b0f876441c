"""Markdown reports of the studies, in the paper's table layouts with the paper's figures beside ours.

Each cell of ours is ``mean ± std`` over the seeds (sample standard deviation; no ``±``
for a single seed); the paper's figure follows in its own column, ``—`` where the paper
prints none.

Example::

    >>> from iarm_torchrec.experiments.results import Summary
    >>> rows = [Summary.of("IARM", None, [0, 1], [0.84, 0.83], [0.33, 0.34])]
    >>> print(render_table("ablation", "movielens-1m", rows))
    | Model | AUC (ours) | LOSS (ours) | AUC (paper) | LOSS (paper) | seeds |
    |---|---|---|---|---|---|
    | IARM | 0.8350 ± 0.0071 | 0.3350 ± 0.0071 | 0.8386 | 0.3296 | 2 |
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

from iarm_torchrec.experiments.paper import Figure, paper_figure
from iarm_torchrec.experiments.presets import TEST_RATIOS
from iarm_torchrec.experiments.results import Summary

TITLES: Dict[str, str] = {
    "table2": "Table 2: effectiveness comparison of the models",
    "ablation": "Tables 3-5: ablations (IARM* no interest, IRM no attention, IARM- no residual)",
    "layers": "Fig. 4: IARM against the number of interacting layers",
    "split": "Table 6: test ratio 0.2 against 0.3",
    "attention": "Fig. 5: average attention between fields (IARM)",
    "variants": "IARM's departures from the paper (products, IARM+ tower, layer norm) against the strongest baselines",
}


def _number(value: Optional[float], sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value:+.4f}" if sign else f"{value:.4f}"


def _mean_std(mean: float, std: float) -> str:
    return _number(mean) if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def _paper(figure: Optional[Figure], index: int) -> str:
    return _number(figure[index]) if figure else "—"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_table(preset: str, dataset: str, summaries: Sequence[Summary]) -> str:
    """The study's table: one row per model or variant (``split``: one row per model, the test
    ratios side by side as in Table 6, with the change from 0.2 to 0.3)."""
    if preset == "split":
        return _split_table(dataset, summaries)
    first = "Interacting layers" if preset == "layers" else "Model"
    rows = []
    for s in summaries:
        figure = paper_figure(preset, dataset, s.label, s.group)
        label = s.group if preset == "layers" and s.group is not None else s.label
        rows.append(
            [label, _mean_std(s.auc_mean, s.auc_std), _mean_std(s.loss_mean, s.loss_std), _paper(figure, 0),
             _paper(figure, 1), str(s.n)]
        )
    return _table([first, "AUC (ours)", "LOSS (ours)", "AUC (paper)", "LOSS (paper)", "seeds"], rows)


def _split_table(dataset: str, summaries: Sequence[Summary]) -> str:
    low, high = (str(r) for r in TEST_RATIOS)
    by_model: Dict[str, Dict[Optional[str], Summary]] = {}
    for s in summaries:
        by_model.setdefault(s.label, {})[s.group] = s
    header = ["Model"]
    for ratio in (low, high):
        header += [f"AUC {ratio} (ours)", f"LOSS {ratio} (ours)", f"AUC {ratio} (paper)", f"LOSS {ratio} (paper)"]
    header += ["AUC change (ours)", "LOSS change (ours)", "AUC change (paper)", "LOSS change (paper)", "seeds"]
    rows = []
    for label, groups in by_model.items():
        row = [label]
        figures: List[Optional[Figure]] = []
        for ratio in (low, high):
            s = groups.get(ratio)
            figure = paper_figure("split", dataset, label, ratio)
            figures.append(figure)
            row += [_mean_std(s.auc_mean, s.auc_std) if s else "—", _mean_std(s.loss_mean, s.loss_std) if s else "—"]
            row += [_paper(figure, 0), _paper(figure, 1)]
        ours = (groups.get(low), groups.get(high))
        for attr in ("auc_mean", "loss_mean"):
            row.append(_number(getattr(ours[1], attr) - getattr(ours[0], attr), sign=True) if all(ours) else "—")
        for i in range(2):
            row.append(_number(figures[1][i] - figures[0][i], sign=True) if all(figures) else "—")
        row.append("/".join(str(s.n) for s in ours if s is not None))
        rows.append(row)
    return _table(header, rows)


def render_attention_pairs(field_names: Sequence[str], pairs: Sequence[Tuple[int, int, float]], top: int = 10) -> str:
    """The ``top`` field pairs by average attention (both directions and all layers and heads
    averaged), as a table.

    Example::

        >>> print(render_attention_pairs(["sex", "age", "zip"], [(0, 1, 0.41), (1, 2, 0.2)], top=1))
        | Rank | Field pair | Mean attention |
        |---|---|---|
        | 1 | sex – age | 0.4100 |
    """
    rows = [[str(r + 1), f"{field_names[i]} – {field_names[j]}", f"{score:.4f}"] for r, (i, j, score) in enumerate(pairs[:top])]
    return _table(["Rank", "Field pair", "Mean attention"], rows)


def render_report(
    preset: str,
    dataset: str,
    summaries: Sequence[Summary],
    provenance: Dict[str, str],
    plots: Sequence[Tuple[str, str]] = (),
    extra: str = "",
) -> str:
    """The study's Markdown section: title, how it was run, the table, any ``extra`` text and
    the ``(caption, relative path)`` plots."""
    lines = [f"## {TITLES[preset]} — {dataset}", ""]
    lines += [f"- {key}: {value}" for key, value in provenance.items()]
    lines += ["", render_table(preset, dataset, summaries), ""]
    if extra:
        lines += [extra, ""]
    for caption, path in plots:
        lines += [f"![{caption}]({path})", ""]
    return "\n".join(lines)
