#!/usr/bin/env bash
# The first-contact GPU check: one command, under 5 minutes on one H100/H200, everything under $OUT.
#
#     bash scripts/gpu_check.sh            # on a GPU machine
#     bash scripts/gpu_check.sh --dry      # anywhere: every GPU part reports "skipped: no CUDA"
#
# Parts (each isolated: a failure or a timeout in one is recorded and the next still runs):
#   env          nvidia-smi, versions, what torch sees                     -> env.txt
#   gpu_tests    pytest -m gpu tests/test_gpu.py: SDPA vs the looped reference, NCCL DMP with
#                table-/column-/row-wise plans (row-wise MEAN included) vs the unsharded model,
#                fused Adam on the tables, TrainPipelineSparseDist, checkpoint round trip,
#                bf16/fp16 training                                          -> gpu_tests.{log,xml}
#   gpu_bench    benchmarks/gpu_train_bench.py: IARM (fp32, bf16) and FuxiCTR's AutoInt at
#                batch 8,192 and 65,536 on Criteo-shaped vocabularies of ~1M ids, samples/s and
#                peak GPU memory                                              -> train_gpu.{json,md}
#   bench_smoke  dry mode only: the same benchmark code, tiny, on the CPU (keeps it working in CI)
# and summary.md (one line per part: ok / FAILED (rc) / skipped: no CUDA), summary.json.
# Exit status: 0 when no part failed. OUT defaults to ./gpu-check-out; PYTHON to .venv/bin/python.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
for arg in "$@"; do
    case "$arg" in
        --dry) dry=1 ;;
        *) echo "usage: bash scripts/gpu_check.sh [--dry]" >&2; exit 64 ;;
    esac
done
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
py="${PYTHON:-.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
if [ "$dry" = 1 ]; then
    export CUDA_VISIBLE_DEVICES=""  # as a CPU-only machine, even where a GPU is present
fi
started=$(date +%s)
summary="$out/summary.md"
json_rows=()
printf '# GPU check\n\nStarted %s, dry=%s, commit %s\n\n| part | status | seconds |\n|---|---|---|\n' \
    "$(date -u +%FT%TZ)" "$dry" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" > "$summary"

record() {  # record PART STATUS SECONDS
    printf '| %s | %s | %s |\n' "$1" "$2" "$3" >> "$summary"
    json_rows+=("{\"part\": \"$1\", \"status\": \"$2\", \"seconds\": $3}")
    echo "gpu_check: $1: $2 (${3}s)"
}

part() {  # part NAME TIMEOUT_S COMMAND...: run, log to $out/NAME.log, record ok / FAILED
    local name="$1" limit="$2"; shift 2
    local t0 rc status
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
    if [ "$rc" = 0 ]; then status=ok
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="FAILED (timed out after ${limit}s)"
    else status="FAILED (exit $rc)"; fi
    record "$name" "$status" "$(( $(date +%s) - t0 ))"
}

# --- env (always)
{
    echo "== nvidia-smi"; nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    echo "== python"; "$py" - <<'EOF' 2>&1
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("cuda available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    print(" ", i, torch.cuda.get_device_name(i), round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1), "GiB")
for name in ("fbgemm_gpu", "torchrec", "fuxictr", "iarm_torchrec"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"), module.__file__)
    except Exception as error:
        print(name, "not importable:", type(error).__name__, error)
EOF
} > "$out/env.txt" 2>&1
record env ok 0
cuda=$("$py" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)

# --- gpu_tests: pytest decides the skips itself, so the dry run checks that they skip
if [ "$cuda" = 1 ]; then
    part gpu_tests 150 "$py" -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider -q -rs \
        --junitxml="$out/gpu_tests.xml" --timeout 120
else
    t0=$(date +%s)
    "$py" -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider -q -rs --junitxml="$out/gpu_tests.xml" \
        > "$out/gpu_tests.log" 2>&1
    rc=$?
    if [ "$rc" = 0 ] && grep -q "skipped: no CUDA" "$out/gpu_tests.log" && ! grep -qE "[0-9]+ passed" "$out/gpu_tests.log"; then
        record gpu_tests "skipped: no CUDA" "$(( $(date +%s) - t0 ))"
    else
        record gpu_tests "FAILED (exit $rc; expected every test skipped: no CUDA)" "$(( $(date +%s) - t0 ))"
    fi
fi

# --- gpu_bench
if [ "$cuda" = 1 ]; then
    part gpu_bench 200 "$py" benchmarks/gpu_train_bench.py --out "$out" --name train_gpu
else
    record gpu_bench "skipped: no CUDA" 0
fi

# --- bench_smoke (dry mode): the benchmark's code path on the CPU, tiny
if [ "$dry" = 1 ] && [ "${GPU_CHECK_SMOKE:-1}" = 1 ]; then
    part bench_smoke 240 "$py" benchmarks/gpu_train_bench.py --device cpu --vocab-total 20000 --batch-sizes 128 \
        --steps 5 --warmup 1 --sparse-optimizer rowwise_adagrad --sparse-lr 0.05 --out "$out" --name bench_smoke
fi

total=$(( $(date +%s) - started ))
printf '\nTotal %ss.\n' "$total" >> "$summary"
(IFS=,; printf '{"dry": %s, "cuda": %s, "total_seconds": %s, "parts": [%s]}\n' "$dry" "$cuda" "$total" "${json_rows[*]}") \
    > "$out/summary.json"
cat "$summary"
if grep -q "FAILED" "$summary"; then exit 1; fi
if [ "$cuda" != 1 ] && [ "$dry" != 1 ]; then
    echo "gpu_check: no CUDA device here, so nothing GPU-specific was checked (use --dry on CPU machines)" >&2
    exit 3
fi
exit 0
