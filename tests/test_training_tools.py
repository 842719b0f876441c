"""The training tools act, not only parse: dropout, normalization, attention departures, IARM's
product, deep and cross arches, weight decay (dense and on the touched embedding rows), gradient
clipping, the learning-rate schedule on every optimizer (fused tables included), the monitored
metric, bucketized numeric fields."""

from typing import Dict

import numpy as np
import pytest
import torch
from torchrec.datasets.utils import Batch

from iarm_torchrec.data.cache import cache_dir
from iarm_torchrec.data.numeric import BUCKETS, bucketize
from iarm_torchrec.features import FeatureConfig, SparseFeature
from iarm_torchrec.models.ctr_train import CTRTrain
from iarm_torchrec.models.iarm import IARM
from iarm_torchrec.models.registry import make_config
from iarm_torchrec.models.toy import toy_inputs
from iarm_torchrec.modules.interacting import InteractingLayer
from iarm_torchrec.modules.tower import Tower
from iarm_torchrec.train.builder import data_source
from iarm_torchrec.train.schedule import LearningRateSchedule
from iarm_torchrec.train.settings import TrainSettings
from iarm_torchrec.train.trainer import score
from dist_utils import run_ranks


def test_tower_dropout_acts_in_training_only() -> None:
    torch.manual_seed(0)
    tower, plain = Tower(6, [32, 8], dropout=0.5), Tower(6, [32, 8])
    plain.load_state_dict(tower.state_dict())
    x = torch.rand(16, 6)
    assert not torch.equal(tower(x), tower(x))  # a new mask per forward
    tower.eval(), plain.eval()
    assert torch.equal(tower(x), plain(x))


@pytest.mark.parametrize("norm, layer", [("batch", torch.nn.BatchNorm1d), ("layer", torch.nn.LayerNorm)])
def test_tower_normalizes_each_layer(norm: str, layer: type) -> None:
    torch.manual_seed(0)
    tower = Tower(6, [16, 4], norm=norm)
    assert sum(isinstance(m, layer) for m in tower.modules()) == 2
    first = tower.layers[0]
    normalized = first.norm(first.linear(torch.rand(64, 6) * 50 + 7))  # before the ReLU
    axis = 0 if norm == "batch" else 1
    assert normalized.mean(axis).abs().max() < 1e-4
    assert normalized.std(axis, unbiased=False).sub(1).abs().max() < 1e-2


def test_attention_dropout_acts_in_training_only() -> None:
    torch.manual_seed(0)
    layer, plain = InteractingLayer(4, 2, 8, attention_dropout=0.5), InteractingLayer(4, 2, 8)
    plain.load_state_dict(layer.state_dict())
    x = torch.rand(8, 5, 4)
    assert not torch.equal(layer(x), layer(x))
    layer.eval(), plain.eval()
    assert torch.allclose(layer(x), plain(x), atol=1e-6)


def test_attention_layer_norm_normalizes_before_the_relu() -> None:
    layer = InteractingLayer(4, 2, 8, layer_norm=True)
    assert isinstance(layer.layer_norm, torch.nn.LayerNorm) and layer.layer_norm.normalized_shape == (16,)


def test_iarm_product_and_deep_towers_join_the_output_layer() -> None:
    torch.manual_seed(0)
    ebc, dense, kjt = toy_inputs()
    base = IARM(ebc, 2, user_feature_names=["user"], interest_layer_sizes=[4], num_layers=1, head_dim=4)
    inner = IARM(ebc, 2, user_feature_names=["user"], interest_layer_sizes=[4], num_layers=1, head_dim=4, product="inner")
    tower = IARM(ebc, 2, user_feature_names=["user"], interest_layer_sizes=[4], num_layers=1, head_dim=4,
                 product="outer", product_layer_sizes=[6], deep_layer_sizes=[5])  # fmt: skip
    m = base.num_fields  # 4 fields of 8 dims, 2 heads of 4
    assert base.output_arch.linear.in_features == 4 + m * 8
    assert inner.output_arch.linear.in_features == 4 + m * 8 + m * (m - 1) // 2
    assert tower.output_arch.linear.in_features == 4 + m * 8 + 6 + 5
    loss = CTRTrain(tower)(Batch(dense, kjt, torch.tensor([1.0, 0.0])))[0]
    loss.backward()
    for arch in (tower.product_tower, tower.deep_arch):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in arch.parameters())
    with pytest.raises(ValueError, match=r"product must be one of \['none', 'inner', 'outer'\]"):
        IARM(ebc, 2, user_feature_names=["user"], product="kernel")


@pytest.mark.parametrize("cross_type", ["matrix", "vector"])
def test_iarm_cross_variant_joins_dcn_crosses_before_the_output_layer(cross_type: str) -> None:
    torch.manual_seed(0)
    ebc, dense, kjt = toy_inputs()
    model = IARM(ebc, 2, user_feature_names=["user"], interest_layer_sizes=[4], num_layers=1, head_dim=4,
                 num_cross_layers=2, cross_type=cross_type)  # fmt: skip
    m, d = model.num_fields, model.embedding_dim
    assert model.output_arch.linear.in_features == 4 + m * 8 + m * d
    for b in model.cross_arch.bias:  # TorchRec starts them at zero: make them count
        torch.nn.init.normal_(b)
    fields = model.embedding_arch(dense, kjt)
    x0 = fields.flatten(1)  # B x M D
    xl = x0
    for w, b in zip(model.cross_arch.kernels, model.cross_arch.bias):  # DCN Eq. 3 / DCN-V2, by hand
        xl = x0 * (xl @ w) + b[:, 0] + xl if w.shape[1] == 1 else x0 * (xl @ w.T + b[:, 0]) + xl
    users = model.interest_arch(fields[:, :1])
    expected = model.output_arch(torch.cat([users, model.interacting_arch(fields).flatten(1), xl], dim=1))
    assert torch.allclose(model(dense, kjt), expected, atol=1e-6)
    CTRTrain(model)(Batch(dense, kjt, torch.tensor([1.0, 0.0])))[0].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.cross_arch.parameters())
    with pytest.raises(ValueError, match=r"cross_type must be one of \['vector', 'matrix'\], got 'low_rank'"):
        IARM(ebc, 2, user_feature_names=["user"], num_cross_layers=1, cross_type="low_rank")
    assert IARM(ebc, 2, user_feature_names=["user"]).cross_arch is None  # the paper's model by default


def test_the_variants_are_model_settings_of_iarm_train() -> None:
    s = TrainSettings.from_args(["--model-config", '{"product": "inner", "product_layer_sizes": [400], '
                                 '"deep_layer_sizes": [64], "dropout": 0.1, "attention_dropout": 0.1}'])  # fmt: skip
    features = FeatureConfig([SparseFeature("user", 5), SparseFeature("item", 5)], user_feature_names=["user"], embedding_dim=4)
    model = make_config("iarm", features, **s.model_config).build()
    assert model.product_tower is not None and model.deep_arch is not None
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\), got 1.5"):
        TrainSettings(model_config={"dropout": 1.5})


def test_the_monitored_metric_is_a_score_where_higher_is_better() -> None:
    a, b = {"valid_auc": 0.80, "valid_logloss": 0.45}, {"valid_auc": 0.79, "valid_logloss": 0.44}
    assert score(a, "auc") > score(b, "auc") and score(b, "logloss") > score(a, "logloss")
    with pytest.raises(ValueError, match="monitor must be one of"):
        TrainSettings(monitor="ne")


def test_bucketized_numerics_are_a_preprocessing_choice_with_its_own_cache() -> None:
    assert bucketize(np.array([np.nan, 0.0, 3.0, 1e300])).tolist() == [0, 11, 15, BUCKETS - 1]
    plain, buckets = TrainSettings(), TrainSettings(numeric="bucketize")
    assert data_source(buckets).options == {"numeric": "bucketize"}
    assert cache_dir(data_source(plain)) != cache_dir(data_source(buckets))


def test_the_schedule_warms_up_then_reduces_on_plateaus() -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.Adam(params, lr=0.01)
    schedule = LearningRateSchedule(optimizer, warmup_steps=10, plateau_factor=0.1, plateau_patience=2)
    rates = []
    for step in (0, 4, 9, 50):
        schedule.apply(step, 1.0)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([0.001, 0.005, 0.01, 0.01])
    scale = 1.0
    for stalled in (1, 2, 0, 1, 2, 3, 4):
        scale = schedule.next_plateau_scale(scale, stalled)
    assert scale == pytest.approx(0.001)  # reduced at 2, at 2 again, at 4


# ------------------------------------------------------------------ optimizers, on one gloo rank


def _one_step(rank: int, world_size: int, optimizer_settings: Dict, result: Dict) -> None:
    from iarm_torchrec.train.distributed import DistEnv
    from iarm_torchrec.train.sharding import OptimizerSettings, shard_model

    torch.manual_seed(0)
    features = FeatureConfig([SparseFeature("user", 6), SparseFeature("item", 6)], ["price"], ["user"], embedding_dim=4)
    model = CTRTrain(make_config("iarm", features, interest_layer_sizes=[4], num_layers=1, head_dim=4).build(torch.device("meta")))
    env = DistEnv.from_environment("cpu")
    sharded = shard_model(model, env, OptimizerSettings(**optimizer_settings))
    state = sharded.model.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            tensor = value.local_shards()[0].tensor if hasattr(value, "local_shards") else value
            if tensor.is_floating_point():
                tensor.copy_(torch.linspace(-0.2, 0.3, tensor.numel()).reshape(tensor.shape))
    before = {k: (v.local_shards()[0].tensor if hasattr(v, "local_shards") else v).clone() for k, v in state.items()}
    schedule = LearningRateSchedule(sharded.optimizer, warmup_steps=4)
    schedule.apply(step=0, plateau_scale=1.0)
    result["rates"] = [float(g["lr"]) for g in sharded.optimizer.param_groups]
    from torchrec import KeyedJaggedTensor

    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["user", "item"], values=torch.tensor([1, 2]), lengths=torch.tensor([1, 1]))
    batch = Batch(torch.tensor([[1.0]]), kjt, torch.tensor([0.0]))
    loss, _ = sharded.model(batch)
    (loss * 1000).backward()
    sharded.optimizer.step()
    after = sharded.model.state_dict()
    result["delta"] = {
        k: ((after[k].local_shards()[0].tensor if hasattr(after[k], "local_shards") else after[k]) - before[k]).tolist()
        for k in before
        if before[k].is_floating_point()
    }
    result["dense_optimizers"] = [type(o).__name__ for _, o in sharded.optimizer.optimizers]


def _step_deltas(**optimizer_settings: object) -> Dict:
    import multiprocessing

    manager = multiprocessing.Manager()
    result = manager.dict()
    run_ranks(_one_step, dict(optimizer_settings), result, world_size=1)
    return dict(result)


@pytest.mark.slow
def test_weight_decay_clipping_and_the_schedule_reach_every_optimizer() -> None:
    base = dict(dense="adam", lr=0.01, sparse="rowwise_adagrad", sparse_lr=0.1)
    plain = _step_deltas(**base)
    clipped = _step_deltas(**base, weight_decay=0.5, max_grad_norm=1e-3)
    # the warm-up's first step scales both learning rates, the fused tables' included
    assert sorted(plain["rates"]) == pytest.approx([0.0025, 0.025])
    assert "GradientClippingOptimizer" in clipped["dense_optimizers"]
    dense = "model.output_arch.linear.weight"
    assert np.array(plain["delta"][dense]) != pytest.approx(np.array(clipped["delta"][dense]))
    # tables on CPU (sparse adam, non-fused): without L2 only the looked-up row (user 1) moves;
    # Adam's L2 weight decay pulls every row towards 0
    table = "model.embedding_arch.embedding_bag_collection.embedding_bags.t_user.weight"
    adam = dict(dense="adam", lr=0.01, sparse="adam", sparse_lr=0.1)
    rows = np.array(_step_deltas(**adam)["delta"][table])
    decayed = np.array(_step_deltas(**adam, embedding_weight_decay=0.5)["delta"][table])
    untouched = [0, 2, 3, 4, 5]
    assert np.abs(rows[untouched]).max() == 0 and np.abs(rows[1]).min() > 0
    weights = np.linspace(-0.2, 0.3, 24).reshape(6, 4)
    assert np.all(np.sign(decayed[untouched]) == -np.sign(weights[untouched]))


def _refused(rank: int, world_size: int) -> None:
    from iarm_torchrec.train.distributed import DistEnv
    from iarm_torchrec.train.sharding import OptimizerSettings, shard_model

    features = FeatureConfig([SparseFeature("user", 6)], user_feature_names=["user"], embedding_dim=4)
    model = CTRTrain(make_config("iarm", features, interest_layer_sizes=[4], num_layers=1, head_dim=4).build(torch.device("meta")))
    with pytest.raises(ValueError, match="FBGEMM's CPU kernels ignore weight_decay for the fused rowwise_adagrad"):
        shard_model(model, DistEnv.from_environment("cpu"), OptimizerSettings(embedding_weight_decay=1e-5))


@pytest.mark.slow
def test_fused_embedding_weight_decay_on_cpu_is_refused_not_dropped() -> None:
    run_ranks(_refused, world_size=1)


def test_bucketized_fields_encode_alike_in_preprocessing_and_serving(tmp_path) -> None:
    from iarm_torchrec.data.encoders import RowEncoder
    from iarm_torchrec.data.parts import read_part
    from iarm_torchrec.data.spec import FeatureSpec
    from iarm_torchrec.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset(tmp_path, rows=2000, numeric="bucketize")
    spec = FeatureSpec.load(tmp_path)
    assert spec.dense == [] and spec.options["bucketized"] == [f"I{i}" for i in range(1, 14)]
    raw = [line.rstrip("\n").split("\t") for line in (tmp_path / "tsv" / "train.txt").read_text().splitlines()]
    first_train = read_part(sorted((tmp_path / "train").iterdir())[0])
    rows = [{**{f"I{i}": (float(r[i]) if r[i] else None) for i in range(1, 14)},
             **{f"C{j}": r[13 + j] for j in range(1, 27) if r[13 + j]}} for r in raw[:50]]  # fmt: skip
    _, one_hot, _ = RowEncoder(spec, tmp_path / "vocab").encode(rows)
    assert np.array_equal(one_hot, first_train.sparse[:50])  # the time split keeps the file's order
