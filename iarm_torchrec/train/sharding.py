"""From a model built on ``meta`` to a sharded ``DistributedModelParallel`` and its optimizer.

The steps, as in TorchRec's DLRM example:

1. the sparse optimizer is attached to every ``EmbeddingBagCollection``'s tables with
   ``apply_optimizer_in_backward``; the sharder turns it into an FBGEMM kernel that updates
   the rows inside the backward pass (no table gradient is ever materialised);
2. ``EmbeddingShardingPlanner`` plans over a ``Topology`` of this job (world size, CPU or
   CUDA) under constraints: no data-parallel copies (tables stay on the fused kernel) and
   no row-wise splits of ``MEAN``-pooled tables (a mean over ids split across ranks would be
   a sum of partial means);
3. ``DistributedModelParallel`` shards the tables and wraps the rest in DDP;
4. the fused optimizer is combined with a dense one over every other parameter
   (``KeyedOptimizerWrapper`` + ``CombinedOptimizer``).

FBGEMM's CPU kernels fuse SGD, Adagrad and row-wise Adagrad only. ``adam`` for the tables on
CPU therefore keeps them on the non-fused ``dense`` compute kernel, where they are ordinary
parameters stepped by a ``torch.optim.Adam`` of their own (``sparse_lr``).

Regularization (:class:`OptimizerSettings`): the dense parameters take decoupled weight decay
(``AdamW`` for ``adam``; ``Adagrad``/``SGD`` take it as L2 in the gradient) and optional
gradient-norm clipping (TorchRec's ``GradientClippingOptimizer`` around the dense optimizer).
The tables take an L2 penalty (``embedding_weight_decay``): on GPU FBGEMM's fused kernels
apply ``weight_decay`` with ``WeightDecayMode.L2`` to the rows a batch looks up, as FuxiCTR's
``embedding_regularizer`` regularizes the embeddings in use. FBGEMM's CPU kernels (checked with
fbgemm-gpu-cpu 1.8.0: SGD, Adagrad and row-wise Adagrad) accept the argument and ignore it, so
on CPU a fused table optimizer with ``embedding_weight_decay`` is refused with that message
rather than silently unregularized; there, sparse ``adam`` (the non-fused dense kernel) takes
Adam's own L2 ``weight_decay``, which reaches every row.

Table precision (``embedding_precision``): ``fp16`` stores the tables on FBGEMM's kernels in
float16, half the bytes of float32. TorchRec takes a table's FBGEMM ``weights_precision`` from
its config's ``data_type``, so :func:`shard_model` sets that on the tables the fused kernel
will hold; the kernel still pools into float32 (TBE's ``output_dtype``, FP32 by default), so
the dense arches see float32 as before, and the fused optimizers keep their state in float32.
Tables on the dense kernel (widths FBGEMM cannot take, such as the 1-wide first-order tables
of FM or Wide&Deep) stay float32: a torch optimizer would step them in float16. With a
non-fused sparse optimizer (``adam`` on CPU) every table is on the dense kernel, so ``fp16`` is
refused there: a float16 ``torch.optim.Adam`` underflows its second moment (rows moved by ~57
in three steps at ``lr`` 0.05, checked with fbgemm-gpu-cpu 1.8.0). ``bf16`` is not offered:
that version's CPU table forward has no bfloat16 kernel, fused or dense.
"""

import logging
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Tuple, Type

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec import optim as trec_optim
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
from torchrec.distributed.types import ShardingPlan, ShardingType
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.clipping import GradientClipping, GradientClippingOptimizer
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from iarm_torchrec.train.distributed import DistEnv

logger = logging.getLogger(__name__)

# torchrec's wrappers: the sharder maps each to its FBGEMM EmbOptimType.
SPARSE_OPTIMIZER_CLASSES: Dict[str, Type[torch.optim.Optimizer]] = {
    "adam": trec_optim.Adam,
    "rowwise_adagrad": trec_optim.RowWiseAdagrad,
    "adagrad": trec_optim.Adagrad,
    "sgd": trec_optim.SGD,
}
DENSE_OPTIMIZER_CLASSES: Dict[str, Type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
}
CPU_FUSED_SPARSE_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd")
# FBGEMM's table-batched kernels take tables whose width is a multiple of 4 columns only.
FBGEMM_COLUMN_MULTIPLE = 4
TABLE_DATA_TYPES: Dict[str, DataType] = {"fp32": DataType.FP32, "fp16": DataType.FP16}
"""``embedding_precision`` -> the tables' ``data_type`` (FBGEMM's ``weights_precision``)."""
_ROW_SPLITTING = {ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value, ShardingType.GRID_SHARD.value}


def sparse_optimizer_is_fused(name: str, device: torch.device) -> bool:
    """Whether FBGEMM can apply optimizer ``name`` inside backward on ``device``."""
    return device.type != "cpu" or name in CPU_FUSED_SPARSE_OPTIMIZERS


def embedding_bag_collections(model: nn.Module) -> List[Tuple[str, EmbeddingBagCollection]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, EmbeddingBagCollection)]


def sharding_constraints(model: nn.Module, fused: bool) -> Dict[str, ParameterConstraints]:
    """Per table: every sharding type but data-parallel, and none that splits rows of a
    ``MEAN``-pooled table. Two cases go data-parallel on the dense compute kernel (TorchRec
    offers that kernel for data-parallel tables only), where a non-fused optimizer steps them:
    every table when the sparse optimizer cannot be fused, and tables whose width FBGEMM's
    kernels cannot take (``embedding_dim`` not a multiple of 4: the 1-wide first-order weight
    tables of FM, Wide&Deep, DeepFM, AFM and NFM)."""
    constraints: Dict[str, ParameterConstraints] = {}
    for _, ebc in embedding_bag_collections(model):
        for config in ebc.embedding_bag_configs():
            if not fused or config.embedding_dim % FBGEMM_COLUMN_MULTIPLE:
                constraints[config.name] = ParameterConstraints(
                    sharding_types=[ShardingType.DATA_PARALLEL.value],
                    compute_kernels=[EmbeddingComputeKernel.DENSE.value],
                )
                continue
            types = [t.value for t in ShardingType if t != ShardingType.DATA_PARALLEL]
            if config.pooling == PoolingType.MEAN:
                types = [t for t in types if t not in _ROW_SPLITTING]
            constraints[config.name] = ParameterConstraints(sharding_types=types)
    return constraints


@dataclass(frozen=True)
class OptimizerSettings:
    """How the parameters are stepped.

    Args:
        dense: ``adam``, ``adagrad`` or ``sgd`` for every non-table parameter.
        lr: its learning rate.
        weight_decay: decoupled weight decay of the dense parameters (0: none).
        max_grad_norm: clip the dense gradients to this total L2 norm (0: no clipping).
        sparse: the tables' optimizer (fused into backward where FBGEMM can).
        sparse_lr: its learning rate.
        embedding_weight_decay: L2 penalty on the table rows a batch touches (0: none).
    """

    dense: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0
    sparse: str = "rowwise_adagrad"
    sparse_lr: float = 0.05
    embedding_weight_decay: float = 0.0

    def sparse_kwargs(self) -> Dict[str, Any]:
        """The fused optimizer's arguments (learning rate, L2 on touched rows)."""
        kwargs: Dict[str, Any] = {"lr": self.sparse_lr}
        if self.embedding_weight_decay:
            kwargs.update(weight_decay=self.embedding_weight_decay, weight_decay_mode=WeightDecayMode.L2)
        return kwargs


@dataclass
class ShardedModel:
    """The sharded model, its combined optimizer and the plan it was sharded by."""

    model: DistributedModelParallel
    optimizer: KeyedOptimizer
    plan: ShardingPlan
    sparse_fused: bool


def check_table_precision(precision: str, sparse_optimizer: str, device: torch.device) -> None:
    """Refuse tables in a reduced ``precision`` that a non-fused optimizer would step."""
    if precision != "fp32" and not sparse_optimizer_is_fused(sparse_optimizer, device):
        raise ValueError(
            f"embedding_precision {precision}: FBGEMM's CPU kernels cannot fuse {sparse_optimizer}, so the tables "
            f"would be {precision} parameters stepped by a torch.optim.Adam, whose {precision} moments underflow; "
            "use --sparse-optimizer rowwise_adagrad, adagrad or sgd, or --embedding-precision fp32"
        )


def set_table_precision(model: nn.Module, precision: str) -> None:
    """Store the tables of ``model`` (built on ``meta``, not sharded yet) that FBGEMM's fused
    kernel will hold (width a multiple of 4) in ``precision`` (a key of
    :data:`TABLE_DATA_TYPES`); the sharder reads it from each config's ``data_type``."""
    for _, ebc in embedding_bag_collections(model):
        for config in ebc.embedding_bag_configs():
            if config.embedding_dim % FBGEMM_COLUMN_MULTIPLE == 0:
                config.data_type = TABLE_DATA_TYPES[precision]


def shard_model(
    model: nn.Module, env: DistEnv, optimizer: OptimizerSettings, embedding_precision: str = "fp32"
) -> ShardedModel:
    """Shard ``model`` (a ``*Train`` wrapper built on ``meta``) over the job in ``env``, its
    FBGEMM tables stored in ``embedding_precision`` (``fp32`` or ``fp16``)."""
    sparse_optimizer = optimizer.sparse
    fused = sparse_optimizer_is_fused(sparse_optimizer, env.device)
    check_table_precision(embedding_precision, sparse_optimizer, env.device)
    set_table_precision(model, embedding_precision)
    if fused and optimizer.embedding_weight_decay and env.device.type == "cpu":
        raise ValueError(
            f"embedding_weight_decay: FBGEMM's CPU kernels ignore weight_decay for the fused {sparse_optimizer} "
            "(fbgemm-gpu-cpu 1.8.0), so the tables would not be regularized; on CPU use --sparse-optimizer adam "
            "(non-fused, Adam's L2 weight decay) or train on a GPU"
        )
    tables: List[nn.Parameter] = [
        ebc.embedding_bags[c.name].weight
        for _, ebc in embedding_bag_collections(model)
        for c in ebc.embedding_bag_configs()
        if c.embedding_dim % FBGEMM_COLUMN_MULTIPLE == 0  # the rest go data-parallel, stepped densely
    ]
    if fused:
        apply_optimizer_in_backward(SPARSE_OPTIMIZER_CLASSES[sparse_optimizer], tables, optimizer.sparse_kwargs())
    else:
        logger.warning(
            "FBGEMM's CPU kernels cannot fuse %s: the tables use the dense compute kernel and a "
            "non-fused torch.optim.Adam (lr=%g)",
            sparse_optimizer,
            optimizer.sparse_lr,
        )
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=env.world_size, local_world_size=env.local_world_size),
        kernel_config=KernelConfig(compute_device=env.device.type),
    )
    sharders = [EmbeddingBagCollectionSharder()]
    planner = EmbeddingShardingPlanner(topology=topology, constraints=sharding_constraints(model, fused))
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    table_names = set(table_configs(model))
    dmp = DistributedModelParallel(module=model, device=env.device, plan=plan, sharders=sharders)
    dense_params = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    optimizers: List[KeyedOptimizer] = []
    if fused:
        optimizers.append(dmp.fused_optimizer)
    else:
        sparse_params = {k: v for k, v in dense_params.items() if k in table_names}
        dense_params = {k: v for k, v in dense_params.items() if k not in table_names}
        optimizers.append(_keyed(sparse_params, torch.optim.Adam, optimizer.sparse_lr, optimizer.embedding_weight_decay))
    dense: KeyedOptimizer = _keyed(
        dense_params,
        torch.optim.AdamW if optimizer.dense == "adam" and optimizer.weight_decay else DENSE_OPTIMIZER_CLASSES[optimizer.dense],
        optimizer.lr,
        optimizer.weight_decay,
    )
    if optimizer.max_grad_norm:
        dense = GradientClippingOptimizer(dense, GradientClipping.NORM, max_gradient=optimizer.max_grad_norm)
    optimizers.append(dense)
    return ShardedModel(dmp, CombinedOptimizer(optimizers), plan, fused)


def _keyed(
    params: Dict[str, nn.Parameter], cls: Type[torch.optim.Optimizer], lr: float, weight_decay: float = 0.0
) -> KeyedOptimizerWrapper:
    """``cls`` over ``params`` with its fused (single-kernel) step: Adam, Adagrad and SGD have one
    on CPU and CUDA, 3.6x faster than their per-tensor loop over IARM's ~30 dense tensors."""
    factory: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] = lambda ps: cls(
        ps, lr=lr, weight_decay=weight_decay, fused=True
    )
    return KeyedOptimizerWrapper(params, factory)


_INIT_CHUNK_ROWS = 1 << 20


@torch.no_grad()
def init_tables(sharded: DistributedModelParallel, configs: Dict[str, EmbeddingBagConfig], seed: int) -> None:
    """Fill every table shard with values that depend on ``seed`` and the table only, not on
    how the planner split the tables over ranks (each rank's own initialisation would), so
    one and N ranks start from the same model.

    Values follow the table's own init range (``uniform(weight_init_min, weight_init_max)``,
    TorchRec's default), drawn in float32 and rounded to the table's precision, in chunks of
    :data:`_INIT_CHUNK_ROWS` rows, each from a generator seeded by ``(seed, table, chunk)``: a
    rank draws only the chunks its shards overlap. ``configs`` maps state-dict keys of table
    weights to their configs.
    """
    state = sharded.state_dict()
    for key, config in configs.items():
        low, high = config.get_weight_init_min(), config.get_weight_init_max()
        for (row, col), shard in local_shards(state[key]):
            rows, cols = shard.shape
            for chunk in range(row // _INIT_CHUNK_ROWS, (row + rows - 1) // _INIT_CHUNK_ROWS + 1):
                first = chunk * _INIT_CHUNK_ROWS
                count = min(_INIT_CHUNK_ROWS, config.num_embeddings - first)
                generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{config.name}/{chunk}".encode()))
                values = torch.empty(count, config.embedding_dim).uniform_(low, high, generator=generator)
                lo, hi = max(row, first), min(row + rows, first + count)
                shard[lo - row : hi - row].copy_(values[lo - first : hi - first, col : col + cols])


def table_configs(model: nn.Module) -> Dict[str, EmbeddingBagConfig]:
    """State-dict key of each table weight of ``model`` -> its config."""
    return {
        f"{name}.embedding_bags.{c.name}.weight": c
        for name, ebc in embedding_bag_collections(model)
        for c in ebc.embedding_bag_configs()
    }


def local_shards(tensor: torch.Tensor) -> List[Tuple[Tuple[int, int], torch.Tensor]]:
    """``[((row, col), tensor)]`` of what this rank holds of a (possibly sharded) table."""
    if isinstance(tensor, ShardedTensor):
        return [((s.metadata.shard_offsets[0], s.metadata.shard_offsets[1]), s.tensor) for s in tensor.local_shards()]
    return [((0, 0), tensor)]
