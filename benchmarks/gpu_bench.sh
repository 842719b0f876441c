#!/usr/bin/env bash
# The training benchmark on one GPU (H100/H200), one command, under 5 minutes:
#
#     bash benchmarks/gpu_bench.sh
#
# Writes train_gpu.{json,md} (and nvidia-smi.txt) into $OUT when set, else benchmarks/results.
# Needs a Python with torch 2.13 (CUDA), the CUDA fbgemm-gpu 1.8.0 and torchrec 1.8.0 (.venv from
# `bash scripts/setup.sh` on a GPU machine; PYTHON=... to use another); the peers run too when the
# bench extra is installed. Our runners use the fused FBGEMM kernels on the GPU (Adam fuses there).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
py="${PYTHON:-.venv/bin/python}"
[ -x "$py" ] || py=python3
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
if ! "$py" -c 'import torch, fbgemm_gpu, torchrec, iarm_torchrec; assert torch.cuda.is_available(), "no CUDA device"' \
    > "$out/gpu_bench_check.txt" 2>&1; then
    echo "gpu_bench: the environment cannot run it (see $out/gpu_bench_check.txt)" >&2
    cat "$out/gpu_bench_check.txt" >&2
    exit 2
fi
runners=iarm_rwadagrad,iarm_adam,autoint_adam
if "$py" -c 'import deepctr_torch' 2>/dev/null; then runners="$runners,deepctr_autoint"; fi
# 200k rows as on CPU; one seed and both batch sizes fit the 5 minutes (data generation ~1 min).
timeout 280 "$py" benchmarks/train_bench.py --device cuda --threads 4 --seeds 0 --batch-sizes 1024,4096 \
    --runners "$runners" --data-root "${TMPDIR:-/tmp}/iarm-bench" --out "$out" --name train_gpu
