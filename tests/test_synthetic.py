"""The synthetic Criteo: honest ground truth, the planted structure matters, reproducible, real format."""

import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

from iarm_torchrec.data.loader import ShardedBatchLoader
from iarm_torchrec.data.spec import FeatureSpec
from iarm_torchrec.data.synthetic import (
    GROUND_TRUTH_FILE,
    TEST_PROBABILITIES_FILE,
    TSV_DIR,
    SyntheticConfig,
    SyntheticCriteo,
    bayes_optimal,
    generate,
    make_synthetic_dataset,
)


@pytest.fixture(scope="module")
def data() -> SyntheticCriteo:
    return generate(SyntheticConfig(rows=100_000, seed=0))


def _fit_logistic(data: SyntheticCriteo, interactions: bool) -> Dict[str, float]:
    """MAP logistic regression on one-hot planted terms (per-value, and optionally user-tuple and
    pair indicators) with the planted prior stds, fitted on the train rows; test-row scores."""
    cfg = data.config
    terms, stds = [], []
    for j, v in enumerate(cfg.vocab_sizes):
        terms.append(np.where(data.categories[:, j] < 0, v, data.categories[:, j]))  # v: missing
        stds.append(cfg.value_effect_std(v))
    if interactions:
        terms += [data.user_tuple] + list(data.pair_codes.T)
        stds += [cfg.user_effect_std] + [cfg.pair_effect_std] * data.pair_codes.shape[1]
    sizes = [int(t.max()) + 1 for t in terms]
    index = torch.from_numpy(np.stack(terms, axis=1) + np.cumsum([0] + sizes[:-1]))
    scale = torch.from_numpy(np.repeat(stds, sizes)).float()
    dense = torch.from_numpy(np.concatenate([data.dense_z, data.integers[:, : data.dense_z.shape[1]] < 0], 1)).float()
    labels = torch.from_numpy(data.labels).float()
    w = torch.zeros(sum(sizes), requires_grad=True)  # standardised: effect = scale * w, prior N(0, 1)
    bias = torch.zeros(1, requires_grad=True)
    beta = torch.zeros(dense.shape[1], requires_grad=True)
    splits = cfg.split_rows()
    train, test = slice(*splits["train"]), slice(*splits["test"])

    def logits(rows: slice) -> torch.Tensor:
        return (w * scale)[index[rows]].sum(1) + bias + dense[rows] @ beta

    opt = torch.optim.LBFGS([w, bias, beta], max_iter=100, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits(train), labels[train], reduction="sum")
        loss = (loss + (w**2).sum() / 2) / len(labels[train])
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return bayes_optimal(torch.sigmoid(logits(test)).double().numpy(), data.labels[test])


def test_ground_truth_is_reachable_by_a_model_of_the_planted_terms(data: SyntheticCriteo) -> None:
    torch.manual_seed(0)
    test = slice(*data.config.split_rows()["test"])
    best = bayes_optimal(data.probabilities[test], data.labels[test])
    fitted = _fit_logistic(data, interactions=True)
    assert abs(fitted["auc"] - best["auc"]) < 0.01, (fitted, best)
    assert fitted["log_loss"] > best["log_loss"] - 0.005, (fitted, best)


def test_planted_interactions_carry_signal_beyond_per_value_effects(data: SyntheticCriteo) -> None:
    test = slice(*data.config.split_rows()["test"])
    best = bayes_optimal(data.probabilities[test], data.labels[test])
    additive = _fit_logistic(data, interactions=False)
    assert best["auc"] - additive["auc"] > 0.04, (additive, best)


def test_base_ctr_and_reproducibility(data: SyntheticCriteo) -> None:
    assert 0.2 <= data.labels.mean() <= 0.3 and 0.2 <= data.probabilities.mean() <= 0.3
    again = generate(SyntheticConfig(rows=100_000, seed=0))
    for name in ("integers", "categories", "labels", "probabilities"):
        np.testing.assert_array_equal(getattr(again, name), getattr(data, name))
    other = generate(SyntheticConfig(rows=100_000, seed=1))
    assert not np.array_equal(other.labels, data.labels)
    # Zipf: the most frequent value of a large field is far above the uniform share
    c20 = data.categories[:, 19]
    assert np.bincount(c20[c20 >= 0]).max() / (c20 >= 0).sum() > 20 / data.config.vocab_sizes[19]


def test_config_errors_say_what_to_change() -> None:
    with pytest.raises(ValueError, match="must name fields C1..C26, got \\['C99'\\]"):
        SyntheticConfig(user_fields=["C1", "C99"])
    with pytest.raises(ValueError, match="missing rate 0"):
        SyntheticConfig(planted_pairs=[("C5", "C19")])


def test_make_synthetic_dataset_writes_criteo_tsv_preprocessed_splits_and_ground_truth(tmp_path: Path) -> None:
    out = make_synthetic_dataset(tmp_path / "syn", rows=20_000, seed=3)
    truth = json.loads((out / GROUND_TRUTH_FILE).read_text())
    spec = FeatureSpec.load(out)
    config = SyntheticConfig(rows=20_000, seed=3)
    assert spec.user_fields == truth["user_fields"] == ["C1", "C2", "C3", "C4"]
    assert truth["planted_pairs"] == [["C5", "C6"], ["C7", "C8"], ["C9", "C10"]]
    assert spec.rows == {s: b - a for s, (a, b) in config.split_rows().items()} == {
        "train": 16_000, "valid": 2_000, "test": 2_000}
    assert all(0.2 <= rate <= 0.3 for rate in truth["click_rate"].values())

    # the raw file is Criteo TSV: label, 13 integers, 26 8-hex fields, some empty
    lines = (out / TSV_DIR / "train.txt").read_text().splitlines()
    assert len(lines) == 20_000
    cells = [line.split("\t") for line in lines[:500]]
    assert {len(c) for c in cells} == {40}
    hexes = [x for c in cells for x in c[14:]]
    assert all(len(x) == 8 and int(x, 16) >= 0 for x in hexes if x) and "" in hexes

    # the Bayes-optimal scores are those of the saved probabilities on the loader's test rows
    loader = ShardedBatchLoader(out, "test", batch_size=512, drop_last=False)
    labels = torch.cat([b.labels for b in loader])
    labels = labels[labels >= 0].numpy()
    probabilities = np.load(out / TEST_PROBABILITIES_FILE)
    assert bayes_optimal(probabilities, labels) == truth["bayes_optimal"]["test"]
    assert 0.75 < truth["bayes_optimal"]["test"]["auc"] < 0.95

    stamp = (out / "spec.json").stat().st_mtime_ns
    assert make_synthetic_dataset(out, rows=20_000, seed=3) == out  # reused, not rewritten
    assert (out / "spec.json").stat().st_mtime_ns == stamp
