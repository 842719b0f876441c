"""The peers: DeepCTR-Torch and FuxiCTR, each trained by its own ``fit`` on our preprocessed data.

Both read the same preprocessed split as our side (the same ids, the same transformed
numbers), so the AUCs compare. Each is trained by its own training loop and data loader:

* DeepCTR-Torch 0.3.0: ``model.compile("adam", "binary_crossentropy")`` then
  ``model.fit(x, y, batch_size, epochs=1, verbose=0)`` (its ``DataLoader`` over a
  ``TensorDataset``; ``verbose=0`` skips its per-batch training metrics, in its favour);
* FuxiCTR 2.3.10: ``model.fit(train_gen, epochs=1, validation_data=valid_gen)`` with its
  ``NpzDataLoader`` over ``.npz`` files in its own column layout.

Steps are timed by wrapping each framework's optimizer step (DeepCTR) or ``train_step``
(FuxiCTR), so their loops run unchanged. The FuxiCTR wheel ships the building blocks but no
AutoInt (its models live in a separate model zoo), so :class:`FuxiAutoInt` assembles AutoInt
from FuxiCTR's own ``BaseModel``, ``FeatureEmbedding``, ``ScaledDotProductAttention`` and
``MLP_Block`` the way FuxiCTR's models are written: separate query/key/value/residual
projections per layer, unscaled attention, a linear head over the flattened fields.
"""

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from torch import nn

from _common import StepClock, auc, peak_rss_mib, window_rates
from iarm_torchrec.data.loader import ShardedSplit
from iarm_torchrec.data.spec import FeatureSpec


def _arrays(data_dir: Path, split: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(sparse ids n x F, dense n x N, labels n)`` of a preprocessed split, in memory."""
    data = ShardedSplit(data_dir, split)
    index = np.arange(len(data))
    if data.spec.multi_hot_fields:
        raise ValueError(f"{data_dir}: the peers' runners take one-hot fields only, got {data.spec.multi_hot_fields}")
    return data.sparse.take(index), data.dense.take(index).astype(np.float32), data.labels.take(index)


def run(job: Dict[str, Any]) -> Dict[str, Any]:
    runner = {"deepctr_autoint": _deepctr, "deepctr_deepfm": _deepctr, "fuxictr_autoint": _fuxictr}[job["model"]]
    torch.manual_seed(job["seed"])
    np.random.seed(job["seed"])
    return runner(job)


def _device(job: Dict[str, Any]) -> str:
    return "cuda:0" if job.get("device") == "cuda" else "cpu"


def _deepctr(job: Dict[str, Any]) -> Dict[str, Any]:
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models import AutoInt, DeepFM

    data_dir = Path(job["data_dir"])
    spec = FeatureSpec.load(data_dir)
    columns = [SparseFeat(f.name, f.vocab_size, embedding_dim=job["embedding_dim"]) for f in spec.sparse]
    columns += [DenseFeat(name, 1) for name in spec.dense]
    if job["model"] == "deepctr_autoint":
        if job["num_heads"] * job["head_dim"] != job["embedding_dim"]:
            raise ValueError("DeepCTR-Torch's AutoInt fixes num_heads * head_dim = embedding_dim: set --head-dim accordingly")
        model = AutoInt(
            columns, columns, att_layer_num=job["num_layers"], att_head_num=job["num_heads"],
            dnn_hidden_units=tuple(job["peer_dnn"]), seed=job["seed"], device=_device(job),
        )
    else:
        model = DeepFM(columns, columns, seed=job["seed"], device=_device(job))
    model.compile("adam", "binary_crossentropy")
    for group in model.optim.param_groups:
        group["lr"] = job["lr"]

    def inputs(split: str) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
        sparse, dense, labels = _arrays(data_dir, split)
        x = {f.name: sparse[:, j] for j, f in enumerate(spec.sparse)}
        x.update({name: dense[:, j] for j, name in enumerate(spec.dense)})
        return x, labels

    x, y = inputs("train")
    steps = len(y) // job["batch_size"]  # drop the last partial batch, as our loader does
    rows = steps * job["batch_size"] if not job.get("max_steps") else min(steps, job["max_steps"]) * job["batch_size"]
    x = {k: v[:rows] for k, v in x.items()}
    clock = StepClock()
    step = model.optim.step

    def timed_step(*args: Any, **kwargs: Any) -> Any:
        out = step(*args, **kwargs)
        clock.tick()
        return out

    model.optim.step = timed_step
    model.fit(x, y[:rows], batch_size=job["batch_size"], epochs=1, verbose=0, shuffle=True)
    epoch_s = time.perf_counter() - clock.start
    xv, yv = inputs("valid")
    start = time.perf_counter()
    scores = model.predict(xv, batch_size=4096)
    out = window_rates(clock.times, job["batch_size"], job["warmup"], cpu=clock.cpu)
    out.update(epoch_seconds=epoch_s, valid_auc=auc(scores, yv), valid_rows=len(yv),
               eval_seconds=time.perf_counter() - start, peak_rss_mib=peak_rss_mib())
    return out


def _without_ray() -> None:
    """FuxiCTR 2.3.10 imports ``ray`` at import time for its parquet loader and its preprocessing,
    neither of which the benchmark uses (it feeds ``.npz`` through ``NpzDataLoader``). Where ray
    (a large install) is absent, empty stand-in modules let ``import fuxictr...`` succeed; any
    actual use of ray would fail loudly (AttributeError)."""
    import importlib.machinery
    import importlib.util
    import sys
    import types

    if "ray" in sys.modules or importlib.util.find_spec("ray") is not None:
        return
    names = ["ray", "ray.data", "ray.data.datasource", "ray.data.datasource.filename_provider"]
    modules = {name: types.ModuleType(name) for name in names}
    for name, module in modules.items():
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        # `from ray.data import SaveMode` and the like: a placeholder class per imported name
        module.__getattr__ = lambda attr, _n=name: type(attr, (), {"__module__": _n})  # type: ignore[attr-defined]
    for parent, child in zip(names, names[1:]):
        setattr(modules[parent], child.rsplit(".", 1)[1], modules[child])
    sys.modules.update(modules)


def _fuxictr_model_class() -> Any:
    _without_ray()
    from fuxictr.pytorch.layers import FeatureEmbedding, MLP_Block, ScaledDotProductAttention
    from fuxictr.pytorch.models import BaseModel

    class SelfAttention(nn.Module):
        """One AutoInt layer in FuxiCTR's style: ``relu(attention(Q, K, V) + W_res x)``."""

        def __init__(self, in_dim: int, num_heads: int, head_dim: int) -> None:
            super().__init__()
            width = num_heads * head_dim
            self.num_heads, self.head_dim = num_heads, head_dim
            self.query = nn.Linear(in_dim, width, bias=False)
            self.key = nn.Linear(in_dim, width, bias=False)
            self.value = nn.Linear(in_dim, width, bias=False)
            self.res = nn.Linear(in_dim, width, bias=False) if in_dim != width else None
            self.attention = ScaledDotProductAttention()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b = x.size(0)
            heads = [p(x).view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
                     for p in (self.query, self.key, self.value)]
            out, _ = self.attention(*heads, scale=None)
            out = out.transpose(1, 2).contiguous().view(b, -1, self.num_heads * self.head_dim)
            return (out + (x if self.res is None else self.res(x))).relu()

    class FuxiAutoInt(BaseModel):
        def __init__(self, feature_map: Any, embedding_dim: int, num_layers: int, num_heads: int, head_dim: int,
                     dnn_hidden_units: List[int], learning_rate: float, **kwargs: Any) -> None:
            super().__init__(feature_map, model_id="AutoInt", **kwargs)
            self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
            dims = [embedding_dim] + [num_heads * head_dim] * num_layers
            self.self_attention = nn.Sequential(*[SelfAttention(dims[i], num_heads, head_dim) for i in range(num_layers)])
            self.fc = nn.Linear(feature_map.num_fields * dims[-1], 1)
            self.dnn = (MLP_Block(input_dim=feature_map.sum_emb_out_dim(), output_dim=1, hidden_units=dnn_hidden_units,
                                  hidden_activations="ReLU") if dnn_hidden_units else None)
            self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
            self.reset_parameters()
            self.model_to_device()

        def forward(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
            fields = self.embedding_layer(self.get_inputs(inputs))
            y = self.fc(self.self_attention(fields).flatten(start_dim=1))
            if self.dnn is not None:
                y = y + self.dnn(fields.flatten(start_dim=1))
            return {"y_pred": self.output_activation(y)}

    return FuxiAutoInt


def _fuxictr(job: Dict[str, Any]) -> Dict[str, Any]:
    _without_ray()
    from fuxictr.features import FeatureMap
    from fuxictr.pytorch.dataloaders import RankDataLoader

    logging.getLogger().setLevel(logging.WARNING)
    data_dir = Path(job["data_dir"])
    spec = FeatureSpec.load(data_dir)
    tmp = Path(tempfile.mkdtemp(prefix="fuxictr-bench-"))
    features = [{name: {"source": "", "type": "numeric"}} for name in spec.dense]
    features += [{f.name: {"source": "", "type": "categorical", "vocab_size": f.vocab_size}} for f in spec.sparse]
    (tmp / "feature_map.json").write_text(json.dumps({
        "dataset_id": "bench", "num_fields": len(features), "total_features": sum(f.vocab_size for f in spec.sparse),
        "input_length": len(features), "labels": ["label"], "features": features,
    }))
    feature_map = FeatureMap("bench", str(tmp))
    feature_map.load(str(tmp / "feature_map.json"), {"embedding_dim": job["embedding_dim"]})
    rows: Dict[str, int] = {}
    for split in ("train", "valid"):
        sparse, dense, labels = _arrays(data_dir, split)
        if split == "train":
            n = (len(labels) // job["batch_size"]) * job["batch_size"]
            if job.get("max_steps"):
                n = min(n, job["max_steps"] * job["batch_size"])
            sparse, dense, labels = sparse[:n], dense[:n], labels[:n]
        rows[split] = len(labels)
        columns = {name: dense[:, j] for j, name in enumerate(spec.dense)}
        columns.update({f.name: sparse[:, j] for j, f in enumerate(spec.sparse)})
        np.savez(tmp / f"{split}.npz", label=labels, **columns)
    train_gen, valid_gen = RankDataLoader(
        feature_map, stage="train", train_data=str(tmp / "train.npz"), valid_data=str(tmp / "valid.npz"),
        batch_size=job["batch_size"], shuffle=True, data_format="npz",
    )
    (tmp / "models" / "bench").mkdir(parents=True)  # FuxiCTR saves its best checkpoint there
    model = _fuxictr_model_class()(
        feature_map, embedding_dim=job["embedding_dim"], num_layers=job["num_layers"], num_heads=job["num_heads"],
        head_dim=job["head_dim"], dnn_hidden_units=list(job["peer_dnn"]), learning_rate=job["lr"],
        gpu=0 if job.get("device") == "cuda" else -1,
        optimizer="adam", loss="binary_crossentropy", metrics=["AUC", "logloss"], verbose=0,
        model_root=str(tmp / "models"), early_stop_patience=2,
    )
    clock = StepClock()
    train_step = model.train_step

    def timed_step(batch: Any) -> Any:
        loss = train_step(batch)
        clock.tick()
        return loss

    model.train_step = timed_step
    model.fit(train_gen, epochs=1, validation_data=valid_gen)
    epoch_s = clock.times[-1] - clock.start
    start = time.perf_counter()
    scores = model.predict(valid_gen)
    out = window_rates(clock.times, job["batch_size"], job["warmup"], cpu=clock.cpu)
    out.update(epoch_seconds=epoch_s, valid_auc=auc(scores, np.load(tmp / "valid.npz")["label"]),
               valid_rows=rows["valid"], eval_seconds=time.perf_counter() - start, peak_rss_mib=peak_rss_mib())
    return out
