# Every target goes through scripts/setup.sh, which builds .venv from nothing (seconds when nothing changed).
PY := .venv/bin/python

.PHONY: setup test run bench clean

setup:
	bash scripts/setup.sh

test: setup
	$(PY) -m pytest

# 2 ranks under TorchX (-s local_cwd iarm.train, see .torchxconfig) on the synthetic default.
# The ranks start torchrun from PATH, hence the venv first on PATH.
run: setup
	PATH="$(CURDIR)/.venv/bin:$$PATH" torchx run

clean:
	rm -rf .venv runs
