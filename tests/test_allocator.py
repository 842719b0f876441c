"""``allocator.reuse_freed_memory``: freed large tensors are reused instead of faulting in fresh pages."""

import os
import subprocess
import sys
from typing import Dict

import pytest

# a step's pattern: a 40 MB product and its ReLU, freed, ten times; the pages the last four fault in
# (glibc's heap settles within four steps)
PROBE = """
import resource, torch
from iarm_torchrec.allocator import reuse_freed_memory
applied = reuse_freed_memory()
a, w = torch.rand(40000, 64), torch.rand(64, 256)
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = a @ w
    z = torch.relu(y)
    del y, z
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sum(faults[-4:]))
"""

PAGES = 4 * 2 * 40000 * 256 * 4 // 4096  # the last four steps' two 40 MB tensors


def _probe(**env: str) -> tuple:
    clean = {k: v for k, v in os.environ.items() if not (k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "IARM_MALLOC"))}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True)
    applied, faults = done.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_memory_is_reused_without_page_faults() -> None:
    applied, faults = _probe()
    assert applied
    assert faults < PAGES // 20  # freed blocks reused: (almost) no fresh pages
    off, faults_off = _probe(IARM_MALLOC="default")
    assert not off
    assert faults_off > PAGES // 3  # glibc's default maps each 40 MB tensor fresh: its pages fault


@pytest.mark.parametrize("env", [{"IARM_MALLOC": "default"}, {"MALLOC_ARENA_MAX": "2"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}])
def test_the_users_own_allocator_settings_win(env: Dict[str, str]) -> None:
    applied, _ = _probe(**env)
    assert not applied

