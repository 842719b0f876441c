"""IARM as a model: ablation switches, fx tracing, batch sizes, gradients, extension by subclass."""

import dataclasses
from typing import Dict, Sequence, Set

import pytest
import torch
import torchrec
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from iarm_torchrec.features import FeatureConfig, SparseFeature
from iarm_torchrec.models.ctr_train import CTRTrain
from iarm_torchrec.models.iarm import IARM, IARMConfig

FEATURES = FeatureConfig(
    [SparseFeature("user", 20), SparseFeature("item", 30), SparseFeature("genres", 8, multi_hot=True)],
    dense_feature_names=["age", "price"],
    user_feature_names=["user", "age"],
    embedding_dim=4,
)
CONFIG = IARMConfig(FEATURES, interest_layer_sizes=[8, 8, 6, 5], num_layers=2, num_heads=2, head_dim=3)
K = 5  # interest output size
M = 5  # fields
HD = 2 * 3  # H d'


def build(seed: int = 0, model_class: type = IARM, **changes: object) -> IARM:
    torch.manual_seed(seed)
    return dataclasses.replace(CONFIG, **changes).build(model_class=model_class)


def random_batch(batch_size: int, seed: int = 1) -> Batch:
    """Random one-hot user/item, 0-3 genres per sample, two dense values."""
    g = torch.Generator().manual_seed(seed)
    sizes = {f.name: f.num_embeddings for f in FEATURES.sparse_features}
    lengths = torch.cat(
        [torch.ones(batch_size, dtype=torch.long)] * 2 + [torch.randint(0, 4, (batch_size,), generator=g)]
    )
    per_key = lengths.view(3, batch_size).sum(1).tolist()
    values = torch.cat(
        [torch.randint(0, sizes[k], (n,), generator=g) for k, n in zip(["user", "item", "genres"], per_key)]
    )
    return Batch(
        dense_features=torch.randn(batch_size, 2, generator=g),
        sparse_features=KeyedJaggedTensor.from_lengths_sync(
            keys=["user", "item", "genres"], values=values, lengths=lengths
        ),
        labels=torch.randint(0, 2, (batch_size,), generator=g),
    )


def names(model: nn.Module) -> Set[str]:
    return {n for n, _ in model.named_parameters()}


def share_weights(src: IARM, dst: IARM) -> None:
    """Copy every same-named, same-shaped parameter; an output layer narrowed by ``use_interest=False``
    takes the columns that read the interacting part (the last ``M H d'``)."""
    dst_params = dict(dst.named_parameters())
    with torch.no_grad():
        for name, p in src.named_parameters():
            if name not in dst_params:
                continue
            q = dst_params[name]
            q.copy_(p if p.shape == q.shape else p[:, -q.shape[1] :])


# --------------------------------------------------------------------------- ablations


@pytest.mark.parametrize(
    "switch,removed,output_width",
    [
        ({"use_interest": False}, {"interest_arch."}, M * HD),
        ({"use_attention": False}, {".qkv."}, K + M * HD),
        ({"use_residual": False}, {".residual."}, K + M * HD),
        ({"num_layers": 0}, {"interacting_arch."}, K + M * FEATURES.embedding_dim),
    ],
    ids=["IARM*", "IRM", "IARM-", "0-layers"],
)
def test_ablation_removes_exactly_its_parameters_and_changes_output(
    switch: Dict[str, object], removed: Set[str], output_width: int
) -> None:
    full, ablated = build(), build(**switch)
    full_names = names(full)
    gone = {n for n in full_names if any(r in n for r in removed)}
    assert gone, "the switch must remove something that exists"
    assert names(ablated) == full_names - gone
    assert full.output_arch.linear.in_features == K + M * HD
    assert ablated.output_arch.linear.in_features == output_width

    share_weights(full, ablated)
    batch = random_batch(16)
    full_logits = full(batch.dense_features, batch.sparse_features)
    ablated_logits = ablated(batch.dense_features, batch.sparse_features)
    assert ablated_logits.shape == (16,)
    assert not torch.allclose(full_logits, ablated_logits, atol=1e-4)


def test_zero_layers_output_reads_raw_embeddings() -> None:
    model = build(num_layers=0)
    batch = random_batch(8)
    fields = model.embedding_arch(batch.dense_features, batch.sparse_features)  # B x M x D
    users = fields[:, [model.field_names.index(n) for n in FEATURES.user_feature_names]]
    z = torch.cat([model.interest_arch(users), fields.flatten(1)], dim=1)
    expected = z @ model.output_arch.linear.weight[0] + model.output_arch.linear.bias[0]
    torch.testing.assert_close(model(batch.dense_features, batch.sparse_features), expected)


# --------------------------------------------------------------------------- tracing, batch sizes, gradients


def test_fx_trace_gives_same_output_for_batch_sizes_1_and_64() -> None:
    model = build()
    traced = torchrec.fx.symbolic_trace(model)
    assert isinstance(traced, torch.fx.GraphModule)
    for batch_size in (1, 64):
        batch = random_batch(batch_size)
        eager = model(batch.dense_features, batch.sparse_features)
        assert eager.shape == (batch_size,)
        assert torch.isfinite(eager).all()
        torch.testing.assert_close(traced(batch.dense_features, batch.sparse_features), eager)


def test_every_parameter_gets_a_nonzero_gradient() -> None:
    model = build()
    batch = random_batch(64)
    loss, _ = CTRTrain(model)(batch)
    loss.backward()
    params = dict(model.named_parameters())
    assert any("embedding_bags.t_genres" in n for n in params)  # tables are included
    no_grad = [n for n, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad}"


# --------------------------------------------------------------------------- extension by subclass


class GatedInterest(nn.Module):
    """``U = (W_v u) * sigmoid(W_g u)``: a one-layer gated replacement of Eq. 6's MLP."""

    def __init__(self, in_features: int, output_dim: int) -> None:
        super().__init__()
        self.output_dim: int = output_dim
        self.value: nn.Linear = nn.Linear(in_features, output_dim)
        self.gate: nn.Linear = nn.Linear(in_features, output_dim)

    def forward(self, user_embeddings: torch.Tensor) -> torch.Tensor:
        u = user_embeddings.flatten(1)
        return self.value(u) * torch.sigmoid(self.gate(u))


class GatedIARM(IARM):
    def build_interest_arch(self, in_features: int, layer_sizes: Sequence[int]) -> nn.Module:
        return GatedInterest(in_features, layer_sizes[-1])


def test_subclass_with_own_interest_arch_builds_traces_and_learns() -> None:
    model = build(model_class=GatedIARM)
    assert isinstance(model.interest_arch, GatedInterest)
    assert not any(n.startswith("interest_arch.mlp") for n in names(model))
    assert model.output_arch.linear.in_features == K + M * HD

    # learnable: a click depends on the user's taste and the item's quality
    g = torch.Generator().manual_seed(3)
    batch = random_batch(256, seed=3)
    users, items = batch.sparse_features["user"].values(), batch.sparse_features["item"].values()
    score = torch.randn(20, generator=g)[users] + torch.randn(30, generator=g)[items]
    batch = dataclasses.replace(batch, labels=(score > 0).long())

    train = CTRTrain(model)
    optimizer = torch.optim.Adam(train.parameters(), lr=0.02)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss, _ = train(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    traced = torchrec.fx.symbolic_trace(model)
    torch.testing.assert_close(
        traced(batch.dense_features, batch.sparse_features), model(batch.dense_features, batch.sparse_features)
    )
