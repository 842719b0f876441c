# Every target goes through scripts/setup.sh, which builds .venv from nothing (seconds when nothing changed).
PY := .venv/bin/python

.PHONY: setup test run bench clean

setup:
	bash scripts/setup.sh

test: setup
	$(PY) -m pytest

run: setup
	$(PY) -m iarm_torchrec.demo

clean:
	rm -rf .venv runs
