"""The paper's nine baselines (Table 2), each against its defining equation and as a trainable model.

Every equation check compares the model with a naive reference written here with explicit Python
loops over samples, fields and pairs ``i < j``, reading the module's own weights, in float64.
The reference knows only the original papers' formulas and where each weight lives:

* tables: ``ebc.embedding_bags[<table>].weight``; ``v_m``: ``embedding_arch.dense_embedding[m]``;
* first order: the dimension-1 tables of ``first_order_arch.embedding_bag_collection``,
  ``first_order_arch.dense_weight`` (``w_m``) and ``first_order_arch.bias`` (``w_0``);
* a deep tower: the ``torch.nn.Linear`` layers of its ``mlp`` in order (each + ReLU), then
  ``output_arch.linear``.
"""

import dataclasses
import json
from typing import Any, Dict, List, Sequence

import pytest
import torch
import torchrec.fx
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from iarm_torchrec.features import FeatureConfig, SparseFeature
from iarm_torchrec.models import (
    AFM,
    DCN,
    FM,
    IARM,
    NFM,
    PNN,
    AutoInt,
    CTRTrain,
    DeepCrossing,
    DeepFM,
    IARMConfig,
    WideAndDeep,
)
from iarm_torchrec.models.registry import config_from_dict, make_config, model_config_dict, MODEL_NAMES
from iarm_torchrec.modules.deep import DeepArch
from iarm_torchrec.modules.linear import FirstOrderArch, first_order_embedding_bag_collection

ATOL = 1e-5
D = 4
FEATURES = FeatureConfig(
    [SparseFeature("user", 10), SparseFeature("item", 8), SparseFeature("genres", 6, multi_hot=True)],
    dense_feature_names=["age", "price"],
    user_feature_names=["user"],
    embedding_dim=D,
)
SPARSE_KEYS = ["user", "item", "genres"]

# Three samples; "genres" is multi-hot: several values, one value, none.
Sample = Dict[str, List[int]]
SAMPLES: List[Sample] = [
    {"user": [1], "item": [7], "genres": [0, 2, 5]},
    {"user": [4], "item": [3], "genres": [4]},
    {"user": [9], "item": [0], "genres": []},
]
DENSE = torch.tensor([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]], dtype=torch.float64)

# Small settings per model (name, variant) -> (registry name, settings, model class).
SMALL: Dict[str, Any] = {
    "fm": ("fm", {}, FM),
    "wide_deep": ("wide_deep", {"deep_layer_sizes": [6, 5]}, WideAndDeep),
    "deepfm": ("deepfm", {"deep_layer_sizes": [6, 5]}, DeepFM),
    "afm": ("afm", {"attention_dim": 3}, AFM),
    "dcn": ("dcn", {"deep_layer_sizes": [6, 5], "num_cross_layers": 2}, DCN),
    "dcn_matrix": ("dcn", {"deep_layer_sizes": [6], "num_cross_layers": 2, "cross_type": "matrix"}, DCN),
    "nfm": ("nfm", {"deep_layer_sizes": [6, 5]}, NFM),
    "pnn_inner": ("pnn", {"deep_layer_sizes": [6, 5], "product": "inner"}, PNN),
    "pnn_outer": ("pnn", {"deep_layer_sizes": [6, 5], "product": "outer"}, PNN),
    "autoint": ("autoint", {"num_layers": 2, "num_heads": 2, "head_dim": 3}, AutoInt),
    "deep_crossing": ("deep_crossing", {"residual_hidden_sizes": [6, 5]}, DeepCrossing),
}
BASELINES = ["fm", "wide_deep", "deepfm", "afm", "dcn", "nfm", "pnn", "autoint", "deep_crossing"]


def make_kjt(samples: Sequence[Sample], keys: Sequence[str] = SPARSE_KEYS) -> KeyedJaggedTensor:
    values = [v for key in keys for s in samples for v in s[key]]
    lengths = [len(s[key]) for key in keys for s in samples]
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(keys), values=torch.tensor(values, dtype=torch.long), lengths=torch.tensor(lengths)
    )


def build(variant: str, randomize: bool = False, dtype: torch.dtype = torch.float32) -> nn.Module:
    name, settings, _ = SMALL[variant]
    torch.manual_seed(0)
    model = make_config(name, FEATURES, **settings).build().to(dtype)
    if randomize:  # make ReLU gates, biases and zero-initialised weights non-trivial
        with torch.no_grad():
            for p in model.parameters():
                p.uniform_(-0.8, 0.8)
    return model


def random_batch(batch_size: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    sizes = {f.name: f.num_embeddings for f in FEATURES.sparse_features}
    samples = [
        {
            "user": [int(torch.randint(sizes["user"], (1,), generator=g))],
            "item": [int(torch.randint(sizes["item"], (1,), generator=g))],
            "genres": torch.randint(sizes["genres"], (int(torch.randint(4, (1,), generator=g)),), generator=g).tolist(),
        }
        for _ in range(batch_size)
    ]
    return Batch(
        dense_features=torch.randn(batch_size, 2, generator=g),
        sparse_features=make_kjt(samples),
        labels=torch.randint(2, (batch_size,), generator=g),
    )


# --------------------------------------------------------------------------- the naive reference

Vector = torch.Tensor


def pooled_row(weight: torch.Tensor, values: List[int]) -> Vector:
    """One field's pooled row: the value's row, the mean of several (Eq. 3), zero for none."""
    acc = torch.zeros(weight.shape[1], dtype=weight.dtype)
    for v in values:
        acc = acc + weight[v]
    return acc / len(values) if values else acc


def table_of(ebc: EmbeddingBagCollection, feature: str) -> torch.Tensor:
    for c in ebc.embedding_bag_configs():
        if feature in c.feature_names:
            return ebc.embedding_bags[c.name].weight
    raise KeyError(feature)


def ref_fields(model: nn.Module, sample: Sample, dense: Vector) -> List[Vector]:
    """The ``M`` field vectors ``v_i`` in the model's field order."""
    arch = model.embedding_arch
    out = [pooled_row(table_of(arch.embedding_bag_collection, n), sample[n]) for n in arch.sparse_feature_names]
    out += [arch.dense_embedding[m] * dense[m] for m in range(len(arch.dense_feature_names))]
    return out


def ref_first_order(arch: FirstOrderArch, sample: Sample, dense: Vector) -> Vector:
    """``w_0 + sum_i w_i x_i + sum_m w_m x_m``."""
    y = arch.bias[0]
    for name in ["user", "item", "genres"]:
        y = y + pooled_row(table_of(arch.embedding_bag_collection, name), sample[name])[0]
    for m in range(dense.numel()):
        y = y + arch.dense_weight[m] * dense[m]
    return y


def ref_mlp(mlp: nn.Module, x: Vector) -> Vector:
    for lin in [m for m in mlp.modules() if isinstance(m, nn.Linear)]:
        x = torch.relu(lin.weight @ x + lin.bias)
    return x


def ref_linear(lin: nn.Linear, x: Vector) -> Vector:
    return lin.weight[0] @ x + (lin.bias[0] if lin.bias is not None else 0.0)


def ref_deep(arch: DeepArch, x: Vector) -> Vector:
    return ref_linear(arch.output_arch.linear, ref_mlp(arch.mlp, x))


def pairs(v: List[Vector]) -> List[tuple]:
    return [(i, j) for i in range(len(v)) for j in range(i + 1, len(v))]


def ref_fm(model: nn.Module, s: Sample, x: Vector, v: List[Vector]) -> Vector:
    """FM (Rendle 2010): ``w_0 + sum w_i x_i + sum_{i<j} <v_i, v_j>``."""
    return ref_first_order(model.first_order_arch, s, x) + sum(torch.dot(v[i], v[j]) for i, j in pairs(v))


def ref_wide_deep(model: nn.Module, s: Sample, x: Vector, v: List[Vector]) -> Vector:
    return ref_first_order(model.first_order_arch, s, x) + ref_deep(model.deep_arch, torch.cat(v))


def ref_deepfm(model: nn.Module, s: Sample, x: Vector, v: List[Vector]) -> Vector:
    return ref_fm(model, s, x, v) + ref_deep(model.deep_arch, torch.cat(v))


def ref_afm(model: nn.Module, s: Sample, x: Vector, v: List[Vector]) -> Vector:
    """AFM Eq. 4-5: softmax over pairs of ``h^T ReLU(W p_ij + b)``, then ``p^T sum a_ij p_ij``."""
    arch = model.attention_arch
    products = [v[i] * v[j] for i, j in pairs(v)]
    scores = [ref_linear(arch.attention_score, torch.relu(arch.attention.weight @ p + arch.attention.bias)) for p in products]
    total = sum(torch.exp(e) for e in scores)
    pooled = sum(torch.exp(e) / total * p for e, p in zip(scores, products))
    return ref_first_order(model.first_order_arch, s, x) + ref_linear(arch.projection, pooled)


def ref_dcn(model: nn.Module, s: Sample, x: Vector, v: List[Vector]) -> Vector:
    """DCN Eq. 3 (vector ``w_l``: ``x_0 x_l^T w_l + b_l + x_l``) or DCN-V2 (``x_0 * (W_l x_l + b_l) + x_l``)."""
    x0 = torch.cat(v)
    xl = x0
    net = model.cross_net
    for l in range(len(net.kernels)):
        w, b = net.kernels[l], net.bias[l]
        if w.shape == (x0.numel(), 1):  # vector kernel
            xl = x0 * torch.dot(xl, w[:, 0]) + b[:, 0] + xl
        else:
            xl = x0 * (w @ xl + b[:, 0]) + xl
    return ref_linear(model.output_arch.linear, torch.cat([xl, ref_mlp(model.deep_net, x0)]))


def ref_nfm(model: nn.Module, s: Sample, x: Vector, v: List[Vector]) -> Vector:
    """NFM Eq. 2-4: the deep tower over ``sum_{i<j} v_i (*) v_j``."""
    bi = sum(v[i] * v[j] for i, j in pairs(v))
    return ref_first_order(model.first_order_arch, s, x) + ref_deep(model.deep_arch, bi)


def ref_pnn(model: nn.Module, s: Sample, x: Vector, v: List[Vector]) -> Vector:
    """IPNN: ``p = (<v_i, v_j>)_{i<j}``; OPNN: ``p = sum_i sum_j v_i v_j^T``; deep tower over ``[z; p]``."""
    if model.product_arch.__class__.__name__ == "InnerProductArch":
        p = torch.stack([torch.dot(v[i], v[j]) for i, j in pairs(v)])
    else:
        p = sum(torch.outer(v[i], v[j]) for i in range(len(v)) for j in range(len(v))).flatten()
    return ref_deep(model.deep_arch, torch.cat([torch.cat(v), p]))


def ref_autoint(model: nn.Module, s: Sample, x: Vector, v: List[Vector]) -> Vector:
    """AutoInt Eq. 5-9: per head ``softmax_k <W_Q e_m, W_K e_k>`` weighting ``W_V e_k``; heads
    concatenated; ``ReLU(. + W_Res e_m)``; output ``w^T [e_1; ...; e_M] + b``."""
    e = v
    for layer in model.interacting_arch.layers:
        hd, wide = layer.head_dim, layer.output_dim
        W = layer.qkv.weight
        new = []
        for m in range(len(e)):
            heads = []
            for h in range(layer.num_heads):
                W_q, W_k, W_v = (W[o + h * hd : o + (h + 1) * hd] for o in (0, wide, 2 * wide))
                scores = [torch.exp(torch.dot(W_q @ e[m], W_k @ e[k])) for k in range(len(e))]
                heads.append(sum(a / sum(scores) * (W_v @ e[k]) for k, a in enumerate(scores)))
            new.append(torch.relu(torch.cat(heads) + layer.residual.weight @ e[m]))
        e = new
    return ref_linear(model.output_arch.linear, torch.cat(e))


def ref_deep_crossing(model: nn.Module, s: Sample, x: Vector, v: List[Vector]) -> Vector:
    """Deep Crossing Eq. 1: ``x + ReLU(W_2 ReLU(W_1 x + b_1) + b_2)`` per unit, then linear."""
    z = torch.cat(v)
    for unit in model.residual_units:
        z = z + torch.relu(unit.outer.weight @ torch.relu(unit.inner.weight @ z + unit.inner.bias) + unit.outer.bias)
    return ref_linear(model.output_arch.linear, z)


REFERENCES = {
    "fm": ref_fm,
    "wide_deep": ref_wide_deep,
    "deepfm": ref_deepfm,
    "afm": ref_afm,
    "dcn": ref_dcn,
    "dcn_matrix": ref_dcn,
    "nfm": ref_nfm,
    "pnn_inner": ref_pnn,
    "pnn_outer": ref_pnn,
    "autoint": ref_autoint,
    "deep_crossing": ref_deep_crossing,
}


# --------------------------------------------------------------------------- equations


@pytest.mark.parametrize("variant", list(SMALL))
def test_logits_match_the_naive_reference_of_the_defining_equation(variant: str) -> None:
    model = build(variant, randomize=True, dtype=torch.float64)
    got = model(DENSE, make_kjt(SAMPLES))
    with torch.no_grad():
        want = torch.stack(
            [REFERENCES[variant](model, s, DENSE[b], ref_fields(model, s, DENSE[b])) for b, s in enumerate(SAMPLES)]
        )
    assert got.shape == (len(SAMPLES),)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=ATOL)


def test_fm_second_order_uses_field_vectors_not_scalars() -> None:
    """Pairs within one field's vector must not interact: with one field, FM is its first order."""
    model = FM(EmbeddingBagCollection(tables=[EmbeddingBagConfig(name="t_a", embedding_dim=3, num_embeddings=4, feature_names=["a"])]), 0)
    with torch.no_grad():
        model.first_order_arch.bias.fill_(0.25)
        for p in model.first_order_arch.embedding_bag_collection.parameters():
            p.zero_()
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a"], values=torch.tensor([1, 2]), lengths=torch.tensor([1, 1]))
    torch.testing.assert_close(model(torch.zeros(2, 0), kjt), torch.tensor([0.25, 0.25]))


def test_autoint_is_iarm_without_interest_under_its_own_name() -> None:
    autoint = build("autoint", randomize=True)
    iarm = IARMConfig(FEATURES, num_layers=2, num_heads=2, head_dim=3, use_interest=False).build()
    assert isinstance(autoint, IARM) and autoint.interest_arch is None
    iarm.load_state_dict(autoint.state_dict())  # same arches, same parameter names
    batch = random_batch(5)
    torch.testing.assert_close(autoint(batch.dense_features, batch.sparse_features), iarm(batch.dense_features, batch.sparse_features))


def test_afm_attention_weights_are_a_distribution_over_the_pairs() -> None:
    model = build("afm", randomize=True)
    fields = model.embedding_arch(DENSE.float(), make_kjt(SAMPLES))
    weights = model.attention_arch.attention_weights(fields)
    M = len(model.embedding_arch.field_names)
    assert weights.shape == (len(SAMPLES), M * (M - 1) // 2)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(SAMPLES)))


# --------------------------------------------------------------------------- registry, shapes, gradients, tracing


def test_every_baseline_is_registered_and_round_trips_through_json() -> None:
    assert set(BASELINES) <= set(MODEL_NAMES)
    for variant, (name, settings, cls) in SMALL.items():
        config = make_config(name, FEATURES, **settings)
        data = json.loads(json.dumps(model_config_dict(config)))
        assert data["model"] == name and data["config"]["features"] == FEATURES.to_dict()
        assert config_from_dict(data) == config, variant
        assert type(config.build()) is cls


@pytest.mark.parametrize("variant", list(SMALL))
@pytest.mark.parametrize("batch_size", [1, 32])
def test_b_logits_and_a_gradient_for_every_parameter(variant: str, batch_size: int) -> None:
    model = build(variant)
    batch = random_batch(batch_size)
    loss, (_, logits, _) = CTRTrain(model)(batch)
    assert logits.shape == (batch_size,) and torch.isfinite(logits).all()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    if batch_size == 32:
        zero = [n for n, p in model.named_parameters() if p.numel() and not p.grad.abs().sum() > 0]
        assert not zero, f"zero gradient for {zero}"


@pytest.mark.parametrize("variant", list(SMALL))
def test_traces_with_torchrec_fx_and_the_graph_computes_the_same(variant: str) -> None:
    model = build(variant)
    traced = torchrec.fx.symbolic_trace(model)
    batch = random_batch(4)
    torch.testing.assert_close(
        traced(batch.dense_features, batch.sparse_features), model(batch.dense_features, batch.sparse_features)
    )


@pytest.mark.parametrize("variant", list(SMALL))
def test_a_few_adam_steps_lower_the_loss_on_a_learnable_problem(variant: str) -> None:
    # click iff the user is even and age > 0: needs the categorical and the numerical field
    batch = random_batch(64, seed=1)
    users = batch.sparse_features.to_dict()["user"].values()
    batch = dataclasses.replace(batch, labels=((users % 2 == 0) & (batch.dense_features[:, 0] > 0)).long())
    model = CTRTrain(build(variant))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    first = float(model(batch)[1][0])  # the detached loss
    for _ in range(30):
        optimizer.zero_grad()
        loss = model(batch)[0]
        loss.backward()
        optimizer.step()
    assert float(model(batch)[1][0]) < 0.5 * first


def test_build_on_meta_puts_both_table_collections_on_meta() -> None:
    for variant in ["fm", "deepfm", "afm", "nfm", "wide_deep"]:
        name, settings, _ = SMALL[variant]
        model = make_config(name, FEATURES, **settings).build(torch.device("meta"))
        for ebc in [model.embedding_arch.embedding_bag_collection, model.first_order_arch.embedding_bag_collection]:
            assert all(p.is_meta for p in ebc.parameters()), variant


def test_first_order_tables_mirror_the_embedding_tables_with_one_weight_each() -> None:
    ebc = FEATURES.build_embedding_bag_collection()
    linear = first_order_embedding_bag_collection(ebc)
    assert [(c.name, c.embedding_dim, c.num_embeddings, c.feature_names, c.pooling) for c in linear.embedding_bag_configs()] == [
        (f"{c.name}_linear", 1, c.num_embeddings, c.feature_names, c.pooling) for c in ebc.embedding_bag_configs()
    ]
    given = first_order_embedding_bag_collection(ebc)
    model = DeepFM(
        ebc, 2, deep_layer_sizes=[4], linear_embedding_bag_collection=given,
        dense_feature_names=["age", "price"], multi_hot_feature_names=["genres"],
    )
    assert model.first_order_arch.embedding_bag_collection is given


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "name,settings,message",
    [
        ("wide_deep", {"deep_layer_sizes": []}, r"deep_layer_sizes must be one or more positive layer sizes, got \[\]"),
        ("deepfm", {"deep_layer_sizes": [4, 0]}, r"deep_layer_sizes must be one or more positive layer sizes, got \[4, 0\]"),
        ("nfm", {"deep_layer_sizes": [-1]}, "deep_layer_sizes must be one or more positive"),
        ("afm", {"attention_dim": 0}, "attention_dim must be positive, got 0"),
        ("dcn", {"num_cross_layers": -1}, "num_cross_layers must be >= 0, got -1"),
        ("dcn", {"cross_type": "low_rank"}, r"cross_type must be one of \['vector', 'matrix'\], got 'low_rank'"),
        ("pnn", {"product": "kernel"}, r"product must be one of \['inner', 'outer'\], got 'kernel'"),
        ("pnn", {"deep_layer_sizes": []}, "deep_layer_sizes must be one or more positive"),
        ("autoint", {"num_heads": 0}, "num_heads must be positive, got 0"),
        ("autoint", {"head_dim": -2}, "head_dim must be positive, got -2"),
        ("autoint", {"num_layers": -1}, "num_layers must be >= 0, got -1"),
        ("deep_crossing", {"residual_hidden_sizes": []}, "residual_hidden_sizes must be one or more positive"),
    ],
)
def test_configs_reject_bad_settings_saying_what_to_change(name: str, settings: Dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_config(name, FEATURES, **settings)


def test_unknown_setting_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="interest_layer_sizes"):
        make_config("fm", FEATURES, interest_layer_sizes=[4])


def test_first_order_arch_rejects_wide_or_incomplete_tables() -> None:
    ebc = FEATURES.build_embedding_bag_collection()
    with pytest.raises(ValueError, match=r"embedding_dim != 1.*embedding_dim=1"):
        FirstOrderArch(ebc, ["user"], 0)
    with pytest.raises(ValueError, match=r"lack features \['tags'\]"):
        FirstOrderArch(first_order_embedding_bag_collection(ebc), ["user", "tags"], 0)
