"""IARM under ``DistributedModelParallel``: sharded = unsharded, forward and one training step.

Two gloo ranks on CPU run every scenario in one spawn (a spawn costs more than the scenarios):
tables forced table-wise, column-wise, data-parallel, a mix of the three, table- and
column-wise with row-wise Adagrad, a mix without gradient division, and the planner's own
plan. Each rank saves what it computed; this process checks it against the unsharded model,
built on CPU from the same seeded weights.

What one training step must do, with ``W`` ranks each holding ``B`` samples and ``g`` the
gradient of the mean loss over the global ``W B`` batch:

* dense parameters and data-parallel tables are wrapped in DDP, which **averages** the ranks'
  gradients of their local-mean losses: they see ``g``;
* table-wise / column-wise tables receive, through the all-to-all of pooled embeddings, every
  rank's gradient of its own local-mean loss; the all-to-all's backward **sums** them and then
  divides by ``W`` (``torchrec.distributed.comm_ops.set_gradient_division``, on by default), so
  they also see ``g``, and the fused optimizer (applied in backward by FBGEMM) steps with it.
  With gradient division off they see ``W g``: one scenario checks that factor too.

Data-parallel tables are plain dense parameters after sharding: the fused in-backward
optimizer does not apply to them, so they are stepped by the dense optimizer, as every
TorchRec trainer does (``KeyedOptimizerWrapper`` over ``in_backward_optimizer_filter``,
combined with ``dmp.fused_optimizer``).

Row-wise Adagrad keeps one accumulator per row of each shard: a column-wise table therefore
steps differently from the unsharded one (each shard averages ``g^2`` over its own columns);
table-wise it matches exactly.
"""

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch
import torch.distributed as dist
from torchrec.datasets.utils import Batch
from torchrec.distributed.comm_ops import set_gradient_division
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.sharding_plan import (
    column_wise,
    construct_module_sharding_plan,
    data_parallel,
    get_default_sharders,
    table_wise,
)
from torchrec.distributed.types import ShardingPlan, ShardingType
from torchrec.modules.embedding_configs import PoolingType
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from dist_utils import load_global_state, local_shards, run_ranks
from iarm_torchrec.features import FeatureConfig, SparseFeature
from iarm_torchrec.models.ctr_train import CTRTrain
from iarm_torchrec.models.iarm import IARMConfig

WORLD_SIZE = 2
LOCAL_BATCH = 4
LR = 0.5
ADAGRAD_EPS = 1e-8
EBC_PATH = "model.embedding_arch.embedding_bag_collection"
# Input keys deliberately in another order than the tables: fields are matched by name.
INPUT_KEYS = ["tags", "genres", "item", "user"]


@dataclass(frozen=True)
class Scenario:
    """How to shard and step: ``tables`` maps each table to ``tw0``/``tw1`` (table-wise on
    rank 0/1), ``cw`` (column-wise over both ranks) or ``dp`` (data-parallel); ``None`` lets
    the planner choose. ``optimizer`` is the fused one: ``sgd`` or ``rowwise_adagrad``."""

    tables: Optional[Dict[str, str]]
    optimizer: str = "sgd"
    gradient_division: bool = True


def _all(kind: str) -> Dict[str, str]:
    return {f"t_{name}": kind for name in ("user", "item", "genres", "tags")}


SCENARIOS: Dict[str, Scenario] = {
    "table_wise": Scenario({"t_user": "tw1", "t_item": "tw0", "t_genres": "tw1", "t_tags": "tw0"}),
    "column_wise": Scenario(_all("cw")),
    "data_parallel": Scenario(_all("dp")),
    "mixed": Scenario({"t_user": "tw1", "t_item": "cw", "t_genres": "dp", "t_tags": "cw"}),
    "table_wise_rowwise_adagrad": Scenario(
        {"t_user": "tw0", "t_item": "tw1", "t_genres": "tw0", "t_tags": "tw1"}, optimizer="rowwise_adagrad"
    ),
    "column_wise_rowwise_adagrad": Scenario(_all("cw"), optimizer="rowwise_adagrad"),
    "mixed_no_gradient_division": Scenario(
        {"t_user": "cw", "t_item": "tw0", "t_genres": "dp", "t_tags": "tw1"}, gradient_division=False
    ),
    "planner_default": Scenario(None),
}
ROW_WISE_TYPES = {ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value, ShardingType.GRID_SHARD.value}


def model_config() -> IARMConfig:
    """Two one-hot (SUM) and two multi-hot (MEAN) tables, two dense fields. One table of each
    pooling is large enough for the default planner to shard it table-wise instead of
    replicating it, so the planner scenario checks both kinds."""
    features = FeatureConfig(
        [
            SparseFeature("user", 20),
            SparseFeature("item", 10_000),
            SparseFeature("genres", 10, multi_hot=True),
            SparseFeature("tags", 10_000, multi_hot=True),
        ],
        dense_feature_names=["age", "hour"],
        user_feature_names=["user", "genres", "age"],
        embedding_dim=8,
    )
    return IARMConfig(features, interest_layer_sizes=[16, 8], num_layers=2, num_heads=2, head_dim=4)


def make_batch(start: int, size: int) -> Batch:
    """Samples ``start .. start+size-1`` of a fixed global batch (same on every process).
    Multi-hot bags have 0-3 values; an empty bag pools to zeros under MEAN."""
    total = WORLD_SIZE * LOCAL_BATCH
    g = torch.Generator().manual_seed(1234)
    features = model_config().features
    sizes = {f.name: f.num_embeddings for f in features.sparse_features}
    values: Dict[str, List[torch.Tensor]] = {}
    for key in INPUT_KEYS:
        if key in features.multi_hot_feature_names:
            lengths = torch.randint(0, 4, (total,), generator=g)
        else:
            lengths = torch.ones(total, dtype=torch.long)
        values[key] = [torch.randint(0, sizes[key], (int(n),), generator=g) for n in lengths]
    dense = torch.rand(total, 2, generator=g)
    labels = torch.randint(0, 2, (total,), generator=g)
    rows = slice(start, start + size)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=INPUT_KEYS,
        values=torch.cat([v for key in INPUT_KEYS for v in values[key][rows]]),
        lengths=torch.tensor([len(v) for key in INPUT_KEYS for v in values[key][rows]]),
    )
    return Batch(dense_features=dense[rows], sparse_features=kjt, labels=labels[rows])


def _fused_optimizer(name: str) -> Tuple[type, Dict[str, Any]]:
    if name == "sgd":
        return torch.optim.SGD, {"lr": LR}
    return RowWiseAdagrad, {"lr": LR, "eps": ADAGRAD_EPS}


def _module_plan(ebc: torch.nn.Module, spec: Dict[str, str]) -> Any:
    makers = {
        "tw0": lambda: table_wise(rank=0),
        "tw1": lambda: table_wise(rank=1),
        "cw": lambda: column_wise(ranks=[0, 1]),
        "dp": data_parallel,
    }
    per_table = {table: makers[kind]() for table, kind in spec.items()}
    return construct_module_sharding_plan(
        ebc, per_table, local_size=WORLD_SIZE, world_size=WORLD_SIZE, device_type="cpu"
    )


def _run_scenario(rank: int, scenario: Scenario, full: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    model = CTRTrain(model_config().build(torch.device("meta")))
    ebc = model.model.embedding_arch.embedding_bag_collection
    opt_class, opt_kwargs = _fused_optimizer(scenario.optimizer)
    apply_optimizer_in_backward(opt_class, ebc.parameters(), opt_kwargs)
    if scenario.tables is None:
        planner = EmbeddingShardingPlanner(topology=Topology(world_size=WORLD_SIZE, compute_device="cpu"))
        plan = planner.collective_plan(model, get_default_sharders(), dist.GroupMember.WORLD)
    else:
        plan = ShardingPlan({EBC_PATH: _module_plan(ebc, scenario.tables)})
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan)
    load_global_state(dmp.state_dict(), full)

    batch = make_batch(rank * LOCAL_BATCH, LOCAL_BATCH)
    with torch.no_grad():
        pooled = dmp.module.model.embedding_arch.embedding_bag_collection(batch.sparse_features)
        output_keys = list(pooled.wait().keys())  # a sharded module returns an awaitable

    dense_optimizer = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda params: torch.optim.SGD(params, lr=LR),
    )
    step = CombinedOptimizer([dmp.fused_optimizer, dense_optimizer])
    step.zero_grad()
    loss, (_, logits, _) = dmp(batch)
    loss.backward()
    step.step()

    state = dmp.state_dict()
    return {
        "logits": logits,
        "output_keys": output_keys,
        "sharding_types": {t: p.sharding_type for t, p in plan.plan[EBC_PATH].items()},
        "fused_tables": sorted(
            n.split(".")[-2] for n, _ in in_backward_optimizer_filter(dmp.named_parameters(), include=True)
        ),
        "after_step": {n: [(o, t.detach().clone()) for o, t in local_shards(v)] for n, v in state.items()},
    }


def _rank_main(rank: int, world_size: int, out_dir: str) -> None:
    full = torch.load(Path(out_dir) / "reference.pt", weights_only=True)
    for name, scenario in SCENARIOS.items():
        set_gradient_division(scenario.gradient_division)
        try:
            result = _run_scenario(rank, scenario, full)
        except Exception:
            result = {"error": traceback.format_exc()}
        finally:
            set_gradient_division(True)
        torch.save(result, Path(out_dir) / f"{name}.rank{rank}.pt")


def reference_model(state: Optional[Dict[str, torch.Tensor]] = None) -> CTRTrain:
    torch.manual_seed(0)
    model = CTRTrain(model_config().build(torch.device("cpu")))
    if state is not None:
        model.load_state_dict(state)
    return model


@pytest.fixture(scope="module")
def sharded_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[Dict[str, Any]]]]:
    """The reference weights, and per scenario what each rank computed from them."""
    out_dir = tmp_path_factory.mktemp("sharding")
    full = {k: v.clone() for k, v in reference_model().state_dict().items()}
    torch.save(full, out_dir / "reference.pt")
    run_ranks(_rank_main, str(out_dir), world_size=WORLD_SIZE)
    results = {
        name: [torch.load(out_dir / f"{name}.rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
        for name in SCENARIOS
    }
    return full, results


def _scenario(sharded_runs: Any, name: str) -> List[Dict[str, Any]]:
    per_rank = sharded_runs[1][name]
    for rank, result in enumerate(per_rank):
        if "error" in result:
            pytest.fail(f"scenario {name!r} failed on rank {rank}:\n{result['error']}")
    return per_rank


def test_iarm_accepts_meta_ebc_and_finds_fields_by_name() -> None:
    model = model_config().build(torch.device("meta"))
    ebc = model.embedding_arch.embedding_bag_collection
    assert all(p.is_meta for p in ebc.parameters())
    assert {c.name: c.pooling for c in ebc.embedding_bag_configs()} == {
        "t_user": PoolingType.SUM, "t_item": PoolingType.SUM,
        "t_genres": PoolingType.MEAN, "t_tags": PoolingType.MEAN,
    }
    assert model.field_names == ["user", "item", "genres", "tags", "age", "hour"]
    assert model.user_feature_names == ["user", "genres", "age"]
    assert model.user_field_index.tolist() == [0, 2, 4]

    class PermutedKeys(torch.nn.Module):
        """An EBC whose output keys come in reverse order, as a sharded one's may."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, features: KeyedJaggedTensor) -> Any:
            kt = self.inner(features)
            keys = kt.keys()[::-1]
            d = kt.to_dict()
            return KeyedTensor.from_tensor_list(keys, [d[k] for k in keys])

    reference = reference_model().model
    batch = make_batch(0, WORLD_SIZE * LOCAL_BATCH)
    expected = reference(batch.dense_features, batch.sparse_features)
    arch = reference.embedding_arch
    arch.embedding_bag_collection = PermutedKeys(arch.embedding_bag_collection)
    torch.testing.assert_close(reference(batch.dense_features, batch.sparse_features), expected)


def _global_gradients(full: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``g``: the unsharded model's gradient of the mean loss over the global batch."""
    model = reference_model(full)
    loss, _ = model(make_batch(0, WORLD_SIZE * LOCAL_BATCH))
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}


def _expected_step(weight: torch.Tensor, grad: torch.Tensor, fused: bool, scenario: Scenario) -> torch.Tensor:
    """One step of ``weight`` (a 2-D shard, or a whole tensor) as DMP takes it: with ``g``
    (DDP averages; the all-to-all sums and divides by ``W``), or ``W g`` for sharded tables
    when gradient division is off. Row-wise Adagrad keeps one accumulator per row **of each
    shard** (FBGEMM's state lives with the shard), so it is applied to the shard alone."""
    if fused and not scenario.gradient_division:
        grad = grad * WORLD_SIZE
    if fused and scenario.optimizer == "rowwise_adagrad":
        param = torch.nn.Parameter(weight.clone())
        param.grad = grad
        opt_class, opt_kwargs = _fused_optimizer(scenario.optimizer)
        opt_class([param], **opt_kwargs).step()
        return param.detach()
    return weight - LR * grad


def _check_step(full: Dict[str, torch.Tensor], per_rank: List[Dict[str, Any]], scenario: Scenario) -> None:
    """Every shard on every rank equals the unsharded step of its window; shards cover all."""
    grads = _global_gradients(full)
    sharding_types = per_rank[0]["sharding_types"]
    fused_tables = {t for t, kind in sharding_types.items() if kind != ShardingType.DATA_PARALLEL.value}
    assert set(per_rank[0]["fused_tables"]) == fused_tables  # data-parallel tables are stepped densely
    for name, grad in grads.items():
        fused = name.startswith(EBC_PATH) and name.split(".")[-2] in fused_tables
        weight, grad = full[name].view(grad.shape[0], -1), grad.view(grad.shape[0], -1)
        assert grad.abs().sum() > 0, f"{name} gets no gradient from the batch: the check would be vacuous"
        covered = torch.zeros_like(weight, dtype=torch.bool)
        for rank, result in enumerate(per_rank):
            for (row, col), shard in result["after_step"][name]:
                shard = shard.view(shard.shape[0], -1)
                window = (slice(row, row + shard.shape[0]), slice(col, col + shard.shape[1]))
                torch.testing.assert_close(
                    shard, _expected_step(weight[window], grad[window], fused, scenario), atol=1e-5, rtol=0,
                    msg=lambda m: f"{name} rows {row}.., cols {col}.. on rank {rank}: {m}",
                )
                covered[window] = True
        assert covered.all(), f"{name}: the ranks' shards do not cover the whole tensor"


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sharded_forward_matches_unsharded(sharded_runs: Any, scenario: str) -> None:
    full, _ = sharded_runs
    per_rank = _scenario(sharded_runs, scenario)
    batch = make_batch(0, WORLD_SIZE * LOCAL_BATCH)
    with torch.no_grad():
        expected = reference_model(full).model(batch.dense_features, batch.sparse_features)
    empty_bags = batch.sparse_features["genres"].lengths().view(WORLD_SIZE, LOCAL_BATCH) == 0
    assert empty_bags.any(dim=1).all(), "every rank's batch should hold an empty MEAN bag (it pools to zeros)"
    for rank, result in enumerate(per_rank):
        local = expected[rank * LOCAL_BATCH : (rank + 1) * LOCAL_BATCH]
        torch.testing.assert_close(result["logits"], local, atol=1e-5, rtol=0, msg=lambda m: f"rank {rank}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sharded_training_step_matches_unsharded(sharded_runs: Any, scenario: str) -> None:
    full, _ = sharded_runs
    _check_step(full, _scenario(sharded_runs, scenario), SCENARIOS[scenario])


@pytest.mark.slow
def test_column_wise_rowwise_adagrad_differs_from_unsharded(sharded_runs: Any) -> None:
    """What a trainer must know: row-wise Adagrad over column-wise shards is not the
    unsharded optimizer (each shard averages ``g^2`` over its own columns); the per-shard
    reference above matches it, the whole-table one does not."""
    full, _ = sharded_runs
    per_rank = _scenario(sharded_runs, "column_wise_rowwise_adagrad")
    name = f"{EBC_PATH}.embedding_bags.t_user.weight"
    grad = _global_gradients(full)[name]
    want = _expected_step(full[name], grad, fused=True, scenario=SCENARIOS["column_wise_rowwise_adagrad"])
    got = torch.zeros_like(want)
    for result in per_rank:
        for (row, col), shard in result["after_step"][name]:
            got[row : row + shard.shape[0], col : col + shard.shape[1]] = shard
    assert (got - want).abs().max() > 1e-2


@pytest.mark.slow
def test_sharded_ebc_output_order_differs_from_config(sharded_runs: Any) -> None:
    """Why fields are looked up by name: the sharded EBC groups its output keys by sharding."""
    config_order = [f.name for f in model_config().features.sparse_features]
    orders = {name: _scenario(sharded_runs, name)[0]["output_keys"] for name in SCENARIOS}
    assert all(sorted(keys) == sorted(config_order) for keys in orders.values()), orders
    assert any(keys != config_order for keys in orders.values()), orders


@pytest.mark.slow
def test_default_plan_never_shards_mean_tables_row_wise(sharded_runs: Any) -> None:
    per_rank = _scenario(sharded_runs, "planner_default")
    types = per_rank[0]["sharding_types"]
    assert types == per_rank[1]["sharding_types"], "ranks disagree on the plan"
    mean_tables = {f"t_{n}" for n in model_config().features.multi_hot_feature_names}
    assert mean_tables <= set(types)
    sharded_mean = {t for t in mean_tables if types[t] != ShardingType.DATA_PARALLEL.value}
    assert sharded_mean, f"the planner replicated every MEAN table, so this check says nothing: {types}"
    row_wise_mean = {t: types[t] for t in mean_tables if types[t] in ROW_WISE_TYPES}
    assert not row_wise_mean, f"MEAN-pooled tables placed row-wise: {row_wise_mean} (plan: {types})"
