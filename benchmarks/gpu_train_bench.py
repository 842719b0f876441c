"""Training throughput at GPU batch sizes on Criteo-size vocabularies: IARM next to FuxiCTR's AutoInt.

Data: in-memory synthetic batches, 26 categorical fields whose vocabularies follow Criteo's
shape and add up to about ``--vocab-total`` ids (default 1M; Zipf-distributed ids) and 13
numerical fields, generated on the device once per batch size (so the loader is not what is
timed: both frameworks read the same tensors). IARM trains as ``iarm train`` does
(``shard_model``: ``DistributedModelParallel`` over NCCL at world size 1 with FBGEMM's fused
table optimizer, ``TrainPipelineSparseDist``); FuxiCTR's AutoInt (``_peers``) with its own
``train_step`` and Adam. Reported per runner and batch size: median samples/s over windows
after a warm-up, peak GPU memory (``torch.cuda.max_memory_allocated``), the training loss.

``--device cpu --vocab-total 20000 --batch-sizes 256 --steps 6`` is a smoke run of the same code
on a CPU (``scripts/gpu_check.sh --dry`` runs it so CI keeps this script working).

Usage::

    python benchmarks/gpu_train_bench.py --out $OUT        # on an H100/H200: about 2 minutes
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

# Criteo Kaggle's 26 vocabulary sizes (after min_count 10 of the full data), to scale
CRITEO_SHAPE = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
                5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
NUM_DENSE = 13


def vocab_sizes(total: int) -> List[int]:
    """Criteo's 26 vocabulary sizes scaled so that they add up to about ``total`` (each >= 3)."""
    scale = total / sum(CRITEO_SHAPE)
    return [max(3, int(v * scale)) for v in CRITEO_SHAPE]


def make_batches(vocab: List[int], batch: int, count: int, device: torch.device, seed: int) -> List[Dict[str, torch.Tensor]]:
    """``count`` batches of Zipf(1.1) ids per field, log-normal numbers and 1/4 clicks."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for _ in range(count):
        ids = []
        for v in vocab:
            u = torch.rand(batch, generator=g, dtype=torch.float64)
            ids.append(torch.clamp((torch.pow(torch.tensor(float(v)), u) - 1).long(), 0, v - 1))  # log-uniform ~ Zipf(1)
        out.append({
            "sparse": torch.stack(ids, dim=1).to(device),
            "dense": torch.log1p(torch.exp(torch.randn(batch, NUM_DENSE, generator=g))).float().to(device),
            "label": (torch.rand(batch, generator=g) < 0.25).float().to(device),
        })
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(step: Callable[[int], float], steps: int, warmup: int, batch: int, device: torch.device) -> Dict[str, Any]:
    times, losses = [], []
    for i in range(steps):
        losses.append(step(i))
        _sync(device)
        times.append(time.perf_counter())
    timed = times[warmup:]
    per = max(1, (len(timed) - 1) // 4)
    rates = [per * batch / (timed[i + per] - timed[i]) for i in range(0, len(timed) - per, per)]
    return {"median_samples_per_s": statistics.median(rates), "window_samples_per_s": rates,
            "first_loss": losses[0], "last_loss": losses[-1]}


def run_iarm(args: argparse.Namespace, vocab: List[int], batches: List[Dict[str, torch.Tensor]], device: torch.device,
             precision: str) -> Dict[str, Any]:
    from torchrec.datasets.utils import Batch
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from iarm_torchrec.features import FeatureConfig, SparseFeature
    from iarm_torchrec.models.ctr_train import CTRTrain
    from iarm_torchrec.models.iarm import IARMConfig
    from iarm_torchrec.train.distributed import DistEnv
    from iarm_torchrec.train.sharding import OptimizerSettings, init_tables, shard_model, table_configs

    env = DistEnv.from_environment(device.type)
    try:
        names = [f"C{i + 1}" for i in range(len(vocab))]
        features = FeatureConfig([SparseFeature(n, v) for n, v in zip(names, vocab)],
                                 dense_feature_names=[f"I{i + 1}" for i in range(NUM_DENSE)],
                                 user_feature_names=names[:6], embedding_dim=args.embedding_dim)
        config = IARMConfig(features, num_layers=3, num_heads=2, head_dim=args.head_dim)
        torch.manual_seed(0)
        model = CTRTrain(config.build(torch.device("meta")), precision, device.type)
        tables = table_configs(model)
        sharded = shard_model(model, env, OptimizerSettings(lr=1e-3, sparse=args.sparse_optimizer, sparse_lr=args.sparse_lr))
        init_tables(sharded.model, tables, 0)
        pipeline = TrainPipelineSparseDist(sharded.model, sharded.optimizer, env.device)
        b = batches[0]["sparse"].shape[0]
        lengths = torch.ones(b * len(vocab), dtype=torch.int32)

        def to_batch(d: Dict[str, torch.Tensor]) -> Any:
            kjt = KeyedJaggedTensor.from_lengths_sync(keys=names, values=d["sparse"].t().reshape(-1).cpu(), lengths=lengths)
            return Batch(dense_features=d["dense"].cpu(), sparse_features=kjt, labels=d["label"].cpu())

        host = [to_batch(d) for d in batches]  # the pipeline copies each batch to the device itself
        sharded.model.train()
        it = iter(host[i % len(host)] for i in range(args.steps + 2))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result = _timed(lambda i: float(pipeline.progress(it)[0]), args.steps, args.warmup, b, device)
        result["sparse_fused"] = sharded.sparse_fused
        return result
    finally:
        env.close()


def run_fuxictr(args: argparse.Namespace, vocab: List[int], batches: List[Dict[str, torch.Tensor]], device: torch.device) -> Dict[str, Any]:
    import tempfile

    import _peers

    _peers._without_ray()
    from fuxictr.features import FeatureMap

    tmp = Path(tempfile.mkdtemp(prefix="fuxictr-gpu-bench-"))
    dense = [f"I{i + 1}" for i in range(NUM_DENSE)]
    sparse = [f"C{i + 1}" for i in range(len(vocab))]
    features = [{n: {"source": "", "type": "numeric"}} for n in dense]
    features += [{n: {"source": "", "type": "categorical", "vocab_size": v}} for n, v in zip(sparse, vocab)]
    (tmp / "feature_map.json").write_text(json.dumps({
        "dataset_id": "gpu_bench", "num_fields": len(features), "total_features": sum(vocab),
        "input_length": len(features), "labels": ["label"], "features": features}))
    feature_map = FeatureMap("gpu_bench", str(tmp))
    feature_map.load(str(tmp / "feature_map.json"), {"embedding_dim": args.embedding_dim})
    torch.manual_seed(0)
    model = _peers._fuxictr_model_class()(
        feature_map, embedding_dim=args.embedding_dim, num_layers=3, num_heads=2, head_dim=args.head_dim,
        dnn_hidden_units=[], learning_rate=1e-3, gpu=0 if device.type == "cuda" else -1, optimizer="adam",
        loss="binary_crossentropy", metrics=["AUC"], verbose=0, model_root=str(tmp / "models"))
    inputs = []
    for d in batches:
        x = {n: d["dense"][:, j] for j, n in enumerate(dense)}
        x.update({n: d["sparse"][:, j] for j, n in enumerate(sparse)})
        x["label"] = d["label"]
        inputs.append(x)
    model.train()
    model._max_gradient_norm = 10.0  # what FuxiCTR's fit() sets (its default) before train_step
    b = batches[0]["sparse"].shape[0]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return _timed(lambda i: float(model.train_step(inputs[i % len(inputs)])), args.steps, args.warmup, b, device)


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--batch-sizes", default="8192,65536")
    p.add_argument("--vocab-total", type=int, default=1_000_000)
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=32, help="d' of 2 heads (32: the default, the paper's size)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=6)
    p.add_argument("--sparse-optimizer", default="adam", help="fused on CUDA (FBGEMM); on CPU the dense Adam")
    p.add_argument("--sparse-lr", type=float, default=1e-3)
    p.add_argument("--runners", default="iarm,iarm_bf16,fuxictr_autoint")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--name", default="train_gpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA")
        return 0
    from _common import machine

    vocab = vocab_sizes(args.vocab_total)
    runs: List[Dict[str, Any]] = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        batches = make_batches(vocab, batch, 4, device, seed=batch)
        for runner in args.runners.split(","):
            t0 = time.time()
            if runner == "fuxictr_autoint" and importlib.util.find_spec("fuxictr") is None:
                runs.append({"runner": runner, "batch_size": batch, "skipped": "fuxictr is not installed (pip install -e '.[bench]')"})
                print(f"B {batch:>6} {runner:<16} skipped: fuxictr is not installed", flush=True)
                continue
            try:
                if runner.startswith("iarm"):
                    result = run_iarm(args, vocab, batches, device, "bf16" if runner.endswith("bf16") else "fp32")
                elif runner == "fuxictr_autoint":
                    result = run_fuxictr(args, vocab, batches, device)
                else:
                    raise ValueError(f"unknown runner {runner}")
                if device.type == "cuda":
                    result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            except Exception as error:  # one runner's failure still lets the others run and report
                result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
            result.update(runner=runner, batch_size=batch, wall_s=round(time.time() - t0, 1))
            runs.append(result)
            rate = result.get("median_samples_per_s")
            print(f"B {batch:>6} {runner:<16} " + (f"{rate:>12,.0f} samples/s  peak GPU "
                  f"{result.get('peak_gpu_memory_gib', float('nan')):.2f} GiB  loss {result['first_loss']:.4f} -> "
                  f"{result['last_loss']:.4f}" if rate else f"FAILED {result['error']}"), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    report = {"command": "python benchmarks/gpu_train_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "settings": vars(args), "vocab_sizes": vocab, "vocab_total": sum(vocab), "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=1))
    lines = [f"# {args.name}: IARM vs FuxiCTR AutoInt, {sum(vocab):,} ids, d'={args.head_dim}", "",
             f"Command: `{report['command']}`", "", "| batch | runner | samples/s | x FuxiCTR | peak GPU GiB | loss first -> last |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        peer = next((x.get("median_samples_per_s") for x in runs
                     if x["runner"] == "fuxictr_autoint" and x["batch_size"] == r["batch_size"]), None)
        rate = r.get("median_samples_per_s")
        ratio = f"{rate / peer:.2f}" if rate and peer else "-"
        lines.append(f"| {r['batch_size']} | {r['runner']} | " + (f"{rate:,.0f} | {ratio} | {r.get('peak_gpu_memory_gib', float('nan')):.2f} | "
                     f"{r['first_loss']:.4f} -> {r['last_loss']:.4f} |" if rate
                     else f"{r.get('skipped') or 'FAILED: ' + r['error'][:200]} | | | |"))
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / (args.name + '.json')} and .md")
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(main())
