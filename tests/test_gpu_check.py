"""``scripts/gpu_check.sh --dry`` end to end on this (CPU) machine, as CI runs it: every GPU part
reports "skipped: no CUDA", the benchmark's code runs tiny on the CPU, the summary is written
under ``$OUT``, and the script exits 0."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    status = {p["part"]: p["status"] for p in summary["parts"]}
    assert summary["dry"] == 1 and summary["cuda"] == 0, summary
    assert status["gpu_tests"] == "skipped: no CUDA", status
    assert status["gpu_bench"] == "skipped: no CUDA", status
    assert status["bench_smoke"] == "ok", (status, (out / "bench_smoke.log").read_text()[-3000:])
    assert (out / "env.txt").is_file() and (out / "summary.md").is_file()
    smoke = json.loads((out / "bench_smoke.json").read_text())
    assert {r["runner"] for r in smoke["runs"] if r.get("median_samples_per_s")} >= {"iarm", "iarm_bf16"}, smoke["runs"]
