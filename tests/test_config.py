"""Construction-time validation of IARM, IARMConfig and FeatureConfig; config round trips; meta device."""

import dataclasses
import json
from typing import Callable, Dict, List, Sequence

import pytest
import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from iarm_torchrec.features import FeatureConfig, SparseFeature
from iarm_torchrec.models.iarm import IARM, IARMConfig

FEATURES = FeatureConfig(
    [SparseFeature("user", 20), SparseFeature("item", 30), SparseFeature("genres", 8, multi_hot=True)],
    dense_feature_names=["age"],
    user_feature_names=["user", "age"],
    embedding_dim=4,
)
CONFIG = IARMConfig(FEATURES, interest_layer_sizes=[8, 6, 6, 5], num_layers=2, num_heads=2, head_dim=3)


def ebc(
    dims: Sequence[int] = (4, 4), poolings: Sequence[PoolingType] = (PoolingType.SUM, PoolingType.MEAN)
) -> EmbeddingBagCollection:
    return EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(name=f"t_{n}", embedding_dim=d, num_embeddings=10, feature_names=[n], pooling=p)
            for n, d, p in zip(["user", "genres"], dims, poolings)
        ]
    )


def iarm(**kwargs: object) -> IARM:
    args: Dict[str, object] = dict(
        embedding_bag_collection=ebc(),
        dense_in_features=1,
        user_feature_names=["user"],
        dense_feature_names=["age"],
        multi_hot_feature_names=["genres"],
        interest_layer_sizes=[4, 4, 4, 4],
        num_layers=1,
        num_heads=2,
        head_dim=2,
    )
    args.update(kwargs)
    return IARM(**args)  # type: ignore[arg-type]


def shapes(model: nn.Module) -> Dict[str, List[int]]:
    return {n: list(p.shape) for n, p in model.named_parameters()}


# --------------------------------------------------------------------------- IARM constructor


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"embedding_bag_collection": ebc(dims=(4, 6))}, r"share one embedding_dim.*'t_user': 4, 't_genres': 6"),
        ({"embedding_bag_collection": EmbeddingBagCollection(tables=[])}, "has no tables"),
        ({"user_feature_names": ["user", "nope"]}, r"user_feature_names \['nope'\] are not fields of the model"),
        (
            {"embedding_bag_collection": ebc(poolings=(PoolingType.SUM, PoolingType.SUM))},
            r"multi-hot field 'genres' is pooled by SUM.*pooling=PoolingType.MEAN",
        ),
        ({"multi_hot_feature_names": ["tags"]}, "multi-hot field 'tags' is not a feature of any table"),
        ({"user_feature_names": []}, "interest arch needs user fields.*use_interest=False"),
        ({"use_attention": False, "use_residual": False}, "computes nothing.*num_layers=0"),
        ({"num_heads": 0}, "must be positive"),
        ({"head_dim": -1}, "must be positive"),
        ({"num_layers": -1}, "num_layers must be >= 0"),
        ({"interest_layer_sizes": []}, "interest_layer_sizes must be one or more positive layer sizes"),
        ({"interest_layer_sizes": [4, 0, 4, 4]}, "interest_layer_sizes must be one or more positive layer sizes"),
        ({"dense_in_features": 2}, "dense_feature_names has 1 names but dense_in_features=2"),
        ({"dense_in_features": -1, "dense_feature_names": []}, "dense_in_features must be >= 0"),
        ({"dense_feature_names": ["user"]}, "field names must be unique"),
    ],
)
def test_iarm_rejects_bad_arguments_with_a_message_saying_what_to_change(
    kwargs: Dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        iarm(**kwargs)


def test_iarm_accepts_the_allowed_corners() -> None:
    assert iarm(user_feature_names=[], use_interest=False).interest_arch is None
    zero = iarm(use_attention=False, use_residual=False, num_layers=0)
    assert len(zero.interacting_arch.layers) == 0


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"num_layers": -1}, "num_layers must be >= 0"),
        ({"num_heads": 0}, "num_heads( and head_dim)? must be positive"),
        ({"head_dim": 0}, "head_dim must be positive"),
        ({"use_attention": False, "use_residual": False}, "use num_layers=0"),
        ({"interest_layer_sizes": []}, "interest_layer_sizes must be .*positive"),
        ({"interest_layer_sizes": [8, -2]}, "interest_layer_sizes must be .*positive"),
        (
            {"features": dataclasses.replace(FEATURES, user_feature_names=[])},
            r"interest arch needs user fields.*use_interest=False",
        ),
        (
            {"features": dataclasses.replace(FEATURES, user_feature_names=["nope"])},
            r"user_feature_names \['nope'\] are not fields of the model",
        ),
        (
            {"features": dataclasses.replace(FEATURES, dense_feature_names=["user"])},
            r"field names must be unique.*repeated: \['user'\]",
        ),
    ],
)
def test_iarm_config_rejects_bad_settings(changes: Dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(CONFIG, **changes)


def test_iarm_config_allows_zero_layers_without_attention_and_residual() -> None:
    cfg = dataclasses.replace(CONFIG, num_layers=0, use_attention=False, use_residual=False)
    assert cfg.build().interacting_arch.output_dim == FEATURES.embedding_dim


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: SparseFeature("", 5), "non-empty name"),
        (lambda: SparseFeature("user", 0), "feature 'user': num_embeddings must be positive, got 0"),
        (lambda: FeatureConfig([]), "at least one sparse feature"),
        (lambda: FeatureConfig([SparseFeature("a", 2)], embedding_dim=0), "embedding_dim must be positive"),
    ],
)
def test_feature_config_rejects_bad_fields(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_feature_config_tables_pool_multi_hot_by_mean() -> None:
    configs = FEATURES.embedding_bag_configs()
    assert [(c.name, c.feature_names, c.pooling, c.embedding_dim) for c in configs] == [
        ("t_user", ["user"], PoolingType.SUM, 4),
        ("t_item", ["item"], PoolingType.SUM, 4),
        ("t_genres", ["genres"], PoolingType.MEAN, 4),
    ]
    assert FEATURES.field_names == ["user", "item", "genres", "age"]
    assert FEATURES.multi_hot_feature_names == ["genres"]


def test_configs_round_trip_through_json_and_build_the_same_model() -> None:
    features = FeatureConfig.from_dict(json.loads(json.dumps(FEATURES.to_dict())))
    assert features == FEATURES
    assert all(isinstance(f, SparseFeature) for f in features.sparse_features)

    cfg = dataclasses.replace(CONFIG, use_residual=False, num_layers=3)
    text = json.dumps(cfg.to_dict())
    again = IARMConfig.from_dict(json.loads(text))
    assert again == cfg
    assert json.dumps(again.to_dict()) == text
    torch.manual_seed(0)
    a = cfg.build()
    torch.manual_seed(0)
    b = again.build()
    assert shapes(a) == shapes(b)
    assert a.field_names == b.field_names == FEATURES.field_names
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_configs_given_tuples_round_trip_equal() -> None:
    """Sequences given as tuples come back from JSON as lists; the configs must still be equal."""
    features = FeatureConfig(
        (SparseFeature("a", 3),), dense_feature_names=("x",), user_feature_names=("a", "x"), embedding_dim=4
    )
    cfg = IARMConfig(features, interest_layer_sizes=(4, 2))
    assert FeatureConfig.from_dict(json.loads(json.dumps(features.to_dict()))) == features
    assert IARMConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# --------------------------------------------------------------------------- devices and subclasses


def test_builds_on_meta_device_without_touching_table_weights() -> None:
    meta = CONFIG.build(torch.device("meta"))
    tables = meta.embedding_arch.embedding_bag_collection
    weights = [t.weight for t in tables.embedding_bags.values()]
    assert weights and all(w.is_meta for w in weights)
    torch.manual_seed(0)
    assert shapes(meta) == shapes(CONFIG.build())

    direct = IARM(
        EmbeddingBagCollection(tables=FEATURES.embedding_bag_configs(), device=torch.device("meta")),
        dense_in_features=1,
        user_feature_names=["item"],
        dense_feature_names=["age"],
        multi_hot_feature_names=["genres"],
    )
    assert direct.field_names == ["user", "item", "genres", "age"]


class WideIARM(IARM):
    """A subclass with a one-layer interest arch."""

    def build_interest_arch(self, in_features: int, layer_sizes: Sequence[int]) -> nn.Module:
        arch = nn.Sequential(nn.Flatten(1), nn.Linear(in_features, 3), nn.ReLU())
        arch.output_dim = 3  # type: ignore[assignment]
        return arch


def test_build_with_model_class_subclass() -> None:
    model = CONFIG.build(model_class=WideIARM)
    assert type(model) is WideIARM
    assert isinstance(model.interest_arch, nn.Sequential)
    assert model.output_arch.linear.in_features == 3 + len(FEATURES.field_names) * 2 * 3
