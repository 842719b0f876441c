#!/bin/bash
# Every search space tuned with the same budget on the validation split (`iarm tune`: TRIALS trials,
# the first at the defaults), then its best settings trained with seeds 0, 1, 2 and scored on test.
# Resumable: finished studies and runs are kept. The table: python scripts/tuned_report.py ROOT.
#
#   scripts/tuned_study.sh ROOT "SPACES" TRIALS -- DATA AND BUDGET FLAGS OF iarm tune
#   e.g. scripts/tuned_study.sh runs/tuned-ml1m "iarm iarm_variants pnn" 6 -- --dataset movielens-1m \
#          --data-dir ../shared/data/movielens-1m --field-set paper --test-ratio 0.2 --valid-ratio 0.1 --epochs 5
set -u
ROOT=$1 SPACES=$2 TRIALS=$3
shift 4
IARM=${IARM:-$(dirname "$0")/../.venv/bin/iarm}
mkdir -p "$ROOT"
for space in $SPACES; do
  "$IARM" tune --model "$space" --trials "$TRIALS" --out "$ROOT/tune/$space" --seed 0 "$@" > "$ROOT/tune-$space.log" 2>&1
  echo "tune $space rc=$? $(date +%T)"
  mkdir -p "$ROOT/final/$space"
  for seed in 0 1 2; do
    out=$ROOT/final/$space/seed-$seed
    [ -f "$out/metrics.json" ] && continue
    "$IARM" train --config "$ROOT/tune/$space/best.json" --seed $seed --out "$out" > "$out.log" 2>&1 || echo "final $space seed $seed failed: $out.log"
  done
done
