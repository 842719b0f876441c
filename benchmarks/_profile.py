"""Where a training step's time goes: ``torch.profiler`` over the real pipeline, per component.

Every op's *self* CPU time is charged to exactly one component, so the shares add up:

* forward ops to the arch whose forward they ran in (``record_function`` ranges opened by
  forward hooks on the model's arches);
* backward ops to the arch whose forward op created their autograd node (matched by the
  profiler's ``sequence_nr``), so "attention" covers its forward and its backward;
* everything else to the ``TrainPipelineSparseDist`` range it ran in: ``next_batch`` (data
  loading), ``start/wait_sparse_data_dist`` (input distribution), ``optimizer``, ...

The fused FBGEMM table update runs inside the embedding lookup's backward, so it counts
under "embedding lookup".
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

import _ours
from iarm_torchrec.allocator import reuse_freed_memory
from iarm_torchrec.data.loader import ShardedBatchLoader
from iarm_torchrec.train.distributed import DistEnv
from iarm_torchrec.train.settings import TrainSettings

ARCH_PREFIX = "arch: "
# model attribute path -> component name (the first match on an op's range stack wins)
ARCHES = {
    "embedding_arch.embedding_bag_collection": "embedding lookup (+ fused update in backward)",
    "embedding_arch": "field embedding (stack by name, dense v_m x_m)",
    "interest_arch": "interest MLP",
    "interacting_arch": "attention layers",
    "output_arch": "output layer",
    "loss_fn": "loss",
}
PIPELINE = {
    "## next_batch": "data loading",
    "## start_sparse_data_dist": "input distribution (KJT all-to-all)",
    "## wait_sparse_data_dist": "input distribution (KJT all-to-all)",
    "## optimizer": "dense optimizer (Adam) step",
    "## zero_grad": "zero_grad",
    "## copy_batch_to_gpu": "batch to device",
    "## backward": "backward, other",
    "## forward": "forward, other (IARM glue: concat, index_select)",
}


def _hook(module: nn.Module, name: str) -> None:
    ranges: List[Any] = []

    def pre(*_: Any) -> None:
        r = record_function(ARCH_PREFIX + name)
        r.__enter__()
        ranges.append(r)

    def post(*_: Any) -> None:
        ranges.pop().__exit__(None, None, None)

    module.register_forward_pre_hook(pre)
    module.register_forward_hook(post)


def _component(event: Any, seq_to_arch: Dict[int, str]) -> str:
    node: Optional[Any] = event
    while node is not None:
        name = node.name
        if name.startswith(ARCH_PREFIX):
            return name[len(ARCH_PREFIX):]
        if name.startswith("autograd::engine::evaluate_function") and node.sequence_nr in seq_to_arch:
            return seq_to_arch[node.sequence_nr]
        for prefix, component in PIPELINE.items():
            if name.startswith(prefix):
                return component
        node = node.cpu_parent
    return "other"


def _innermost_arch(event: Any) -> Optional[str]:
    node = event.cpu_parent
    while node is not None:
        if node.name.startswith(ARCH_PREFIX):
            return node.name[len(ARCH_PREFIX):]
        node = node.cpu_parent
    return None


def breakdown(events: Any, steps: int) -> Dict[str, Any]:
    """ms per step and share of each component, plus the top ops by self time."""
    seq_to_arch: Dict[int, str] = {}
    for e in events:
        if e.sequence_nr >= 0 and not e.name.startswith("autograd::"):
            arch = _innermost_arch(e)
            if arch is not None:
                seq_to_arch.setdefault(e.sequence_nr, arch)
    totals: Dict[str, float] = {}
    for e in events:
        if e.device_type != torch.autograd.DeviceType.CPU:
            continue
        c = _component(e, seq_to_arch)
        totals[c] = totals.get(c, 0.0) + e.self_cpu_time_total
    whole = sum(totals.values())
    components = {
        c: {"ms_per_step": t / 1000 / steps, "share": t / whole}
        for c, t in sorted(totals.items(), key=lambda kv: -kv[1])
    }
    return {"steps": steps, "ms_per_step": whole / 1000 / steps, "components": components}


def run(job: Dict[str, Any]) -> Dict[str, Any]:
    torch.set_num_threads(job["threads"])
    reuse_freed_memory()  # as iarm train does (unless IARM_MALLOC=default)
    env = DistEnv.from_environment("cpu")
    try:
        settings = TrainSettings(
            model=job["model"], embedding_dim=job["embedding_dim"],
            model_config={"num_layers": job["num_layers"], "num_heads": job["num_heads"], "head_dim": job["head_dim"]},
            precision=job.get("precision", "fp32"), batch_size=job["batch_size"], lr=job["lr"],
            sparse_optimizer=job["sparse_optimizer"], sparse_lr=job["sparse_lr"], seed=job["seed"],
        )
        sharded, pipeline = _ours.build(Path(job["data_dir"]), settings, env)
        train_module = sharded.model.module
        while not hasattr(train_module, "loss_fn"):  # DDP / DMP wrappers -> CTRTrain
            train_module = train_module.module
        for path, name in ARCHES.items():
            target: Any = train_module if path == "loss_fn" else train_module.model
            for part in path.split("."):
                target = getattr(target, part, None)
            if isinstance(target, nn.Module):
                _hook(target, name)
        loader = ShardedBatchLoader(job["data_dir"], "train", job["batch_size"], shuffle=True, drop_last=True)
        batches = iter(loader)
        for _ in range(job["warmup"]):
            pipeline.progress(batches)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(job["steps"]):
                pipeline.progress(batches)
        result = breakdown(prof.events(), job["steps"])
        result["top_ops"] = [
            {"op": a.key, "ms_per_step": a.self_cpu_time_total / 1000 / job["steps"], "calls_per_step": a.count / job["steps"]}
            for a in sorted(prof.key_averages(), key=lambda a: -a.self_cpu_time_total)[:15]
        ]
        return result
    finally:
        env.close()


def markdown(result: Dict[str, Any], title: str) -> str:
    lines = [f"| {title} | ms/step | share |", "|---|---|---|"]
    for c, v in result["components"].items():
        lines.append(f"| {c} | {v['ms_per_step']:.1f} | {v['share']:.0%} |")
    lines.append(f"| **total (profiled)** | **{result['ms_per_step']:.1f}** | |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="per-component profile of our training step")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--model", default="iarm")
    p.add_argument("--sparse-optimizer", default="rowwise_adagrad")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=32, help="per head (default 32: the model's default, the paper's size)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", help="JSON file to write")
    a = p.parse_args()
    job = {"model": a.model, "data_dir": a.data_dir, "batch_size": a.batch_size, "threads": a.threads, "seed": 0,
           "embedding_dim": 16, "num_layers": 3, "num_heads": 2, "head_dim": a.head_dim, "lr": 1e-3,
           "sparse_optimizer": a.sparse_optimizer, "sparse_lr": 1e-3 if a.sparse_optimizer == "adam" else 0.05,
           "warmup": 5, "steps": a.steps, "precision": a.precision}
    r = run(job)
    print(markdown(r, f"{a.model} B={a.batch_size} d'={a.head_dim} {a.precision} {a.sparse_optimizer} {a.threads} threads"))
    print("\ntop ops:")
    for o in r["top_ops"]:
        print(f"  {o['ms_per_step']:8.2f} ms/step  {o['calls_per_step']:6.1f} calls  {o['op']}")
    if a.out:
        Path(a.out).write_text(json.dumps({"job": job, **r}, indent=2))
