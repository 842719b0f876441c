"""IARM's attention explains: on synthetic data whose interacting field pairs are known, the
test-split attention map (the paper's Fig. 5) ranks the planted pairs above the others.

The data are designed so that the planted pairs are the only interactions there are: pair
effects are large (std 1.5) over small vocabularies (5 x 5 value pairs, each seen hundreds of
times), the per-value effects small and the user block and numerical effects off. The
numerical fields are left almost always empty: a numerical field's vector is ``v_m x_m``
(Eq. 4), whose size follows the raw value, and such large keys draw attention whatever they
interact with (with the Criteo-like integers present, the planted pairs still come first
among categorical pairs, but numerical fields crowd the top of the full ranking in a run this
short).
"""

import json
from pathlib import Path

import pytest
import torch

from iarm_torchrec.data.loader import ShardedBatchLoader
from iarm_torchrec.data.spec import FeatureSpec
from iarm_torchrec.data.synthetic import GROUND_TRUTH_FILE, make_synthetic_dataset
from iarm_torchrec.experiments.attention import mean_attention, pair_scores, ranked_pairs
from iarm_torchrec.models.iarm import IARMConfig

PLANTED_VOCAB = 5
EPOCHS = 6


def _vocab_sizes() -> list:
    # C1-C4 users, C5-C10 the three planted pairs (small, so every value pair is seen often)
    return [40, 20, 8, 4] + [PLANTED_VOCAB] * 6 + [3, 5, 10, 60, 100, 150, 250, 400, 600, 1000, 1500, 2000, 3000,
                                                   4000, 6, 300]


@pytest.mark.slow
def test_attention_ranks_the_planted_field_pairs_first(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = make_synthetic_dataset(
        tmp_path / "data", rows=30_000, seed=0, workers=1, vocab_sizes=_vocab_sizes(), pair_effect_std=1.5,
        effect_std=0.05, user_effect_std=0.0, dense_effects=[], integer_missing_rate=0.95,
    )
    truth = json.loads((data / GROUND_TRUTH_FILE).read_text())
    planted = {frozenset(pair) for pair in truth["planted_pairs"]}
    assert len(planted) == 3

    features = FeatureSpec.load(data).to_feature_config(embedding_dim=16)
    model = IARMConfig(features, interest_layer_sizes=[64, 32], num_layers=1, num_heads=2, head_dim=16).build()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    train = ShardedBatchLoader(data, "train", batch_size=256, shuffle=True, seed=0, drop_last=True, pin_memory=False)
    for epoch in range(EPOCHS):
        train.set_epoch(epoch)
        for batch in train:
            logits = model(batch.dense_features, batch.sparse_features)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    test = ShardedBatchLoader(data, "test", batch_size=2048, drop_last=False, pin_memory=False)
    maps = mean_attention(model, test)
    names = model.field_names
    assert maps.shape == (1, 2, len(names), len(names)) == (1, 2, 39, 39)
    torch.testing.assert_close(maps.sum(-1), torch.ones(1, 2, 39, dtype=torch.float64))

    ranked = ranked_pairs(pair_scores(maps))
    assert len(ranked) == 39 * 38 // 2
    is_planted = [frozenset((names[i], names[j])) in planted for i, j, _ in ranked]
    ranks = [r + 1 for r, hit in enumerate(is_planted) if hit]
    planted_scores = [s for (_, _, s), hit in zip(ranked, is_planted) if hit]
    other_scores = [s for (_, _, s), hit in zip(ranked, is_planted) if not hit]
    top = [(names[i], names[j], s) for i, j, s in ranked[:5]]
    # every planted pair in the top 10% of the 741 pairs, two of them in the top 5
    assert max(ranks) <= len(ranked) // 10, (ranks, top)
    assert sum(r <= 5 for r in ranks) >= 2, (ranks, top)
    # and on average they draw several times the attention of an unplanted pair
    mean_planted = sum(planted_scores) / len(planted_scores)
    mean_other = sum(other_scores) / len(other_scores)
    assert mean_planted > 3 * mean_other, (mean_planted, mean_other, top)
