# Every target goes through scripts/setup.sh, which builds .venv from nothing (seconds when nothing changed).
PY := .venv/bin/python

.PHONY: setup test run bench clean

setup:
	bash scripts/setup.sh

test: setup
	$(PY) -m pytest

# 2 ranks under TorchX (-s local_cwd iarm.train, see .torchxconfig) on the synthetic default, the
# dense arches in bf16 where the CPU or GPU computes it natively (--precision auto; else fp32).
# The ranks start torchrun from PATH, hence the venv first on PATH.
run: setup
	PATH="$(CURDIR)/.venv/bin:$$PATH" torchx run iarm.train -- --precision auto

# Training throughput next to DeepCTR-Torch and FuxiCTR (benchmarks/train_bench.py, ~40 min on 2 cores);
# results in benchmarks/results/train.{json,md}. The peers come with the bench extra (torch stays pinned).
bench: setup
	.venv/bin/pip install -q -e '.[bench]'
	$(PY) benchmarks/train_bench.py --seeds 0,1,2 --ranks 1,2 --loader --predict

clean:
	rm -rf .venv runs
