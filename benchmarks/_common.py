"""What every benchmark runner shares: step clocks, windowed rates, peak memory, AUC, the machine.

Each runner (ours in :mod:`_ours`, the peers in :mod:`_peers`) trains one epoch in its own
process and records the time at the end of every optimizer step with a :class:`StepClock`;
:func:`window_rates` turns those into samples/s per window after a warm-up, so a noisy
neighbour on a shared machine shows up as one slow window instead of skewing the result.
"""

import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc

from iarm_torchrec.provenance import cpu_name, git_commit, versions

VERSIONED = ("torch", "torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu", "numpy", "deepctr-torch", "fuxictr")
"""The libraries whose versions the figures depend on (ours and the peers')."""


@dataclass
class StepClock:
    """``tick()`` after each optimizer step: ``times[i]`` is when step ``i`` ended
    (``perf_counter``), ``cpu[i]`` the calling thread's CPU time then (``thread_time``)."""

    start: float = field(default_factory=time.perf_counter)
    times: List[float] = field(default_factory=list)
    cpu: List[float] = field(default_factory=list)

    def tick(self) -> None:
        self.times.append(time.perf_counter())
        self.cpu.append(time.thread_time())


def window_rates(
    times: List[float], batch_size: int, warmup: int, windows: int = 8, cpu: Optional[List[float]] = None
) -> Dict[str, Any]:
    """Samples/s of ``windows`` equal windows of the steps after ``warmup``, their median, and
    the whole timed span's rate; with ``cpu`` (thread CPU times at the same ticks) also the
    median main-thread CPU ms per step, which a busy neighbour barely moves when the runner
    uses one thread.

    Example::

        >>> r = window_rates([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], batch_size=10, warmup=1, windows=2)
        >>> r["median_samples_per_s"], r["steps_timed"]
        (10.0, 4)
    """
    if len(times) <= warmup + 1:
        raise ValueError(f"{len(times)} steps leave nothing to time after {warmup} warm-up steps: lower --warmup")
    timed = times[warmup:]
    steps = len(timed) - 1
    per_window = max(1, steps // windows)
    starts = range(0, steps - per_window + 1, per_window)
    rates = [per_window * batch_size / (timed[i + per_window] - timed[i]) for i in starts]
    out: Dict[str, Any] = {
        "median_samples_per_s": statistics.median(rates),
        "window_samples_per_s": rates,
        "span_samples_per_s": steps * batch_size / (timed[-1] - timed[0]),
        "steps": len(times),
        "steps_timed": steps,
        "warmup_steps": warmup,
    }
    if cpu is not None:
        used = cpu[warmup:]
        out["main_thread_cpu_ms_per_step"] = statistics.median(
            (used[i + per_window] - used[i]) * 1000 / per_window for i in starts
        )
    return out


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def auc(probabilities: Any, labels: Any) -> float:
    """ROC AUC by the same function (torchmetrics) for every framework."""
    p = torch.as_tensor(np.asarray(probabilities, dtype=np.float64).reshape(-1))
    y = torch.as_tensor(np.asarray(labels).reshape(-1)).long()
    return float(binary_auroc(p, y))


def machine() -> Dict[str, Any]:
    """CPU model, cores, memory, load and the versions that matter for the figures."""
    gpu = None
    if torch.cuda.is_available():
        gpu = f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = None
    found = versions(VERSIONED)
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1) if mem_gib else None,
        "gpu": gpu,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "versions": {name: found.get(name) for name in VERSIONED},  # None: not installed
        "git_commit": git_commit(),
        "iarm_cpu_attention": _cpu_attention(),
    }


def _cpu_attention() -> str:
    """Which attention path our CPU runners take by default (the compiled kernel or ATen)."""
    from iarm_torchrec.kernels import field_attention

    if field_attention.kernel_enabled():
        return f"compiled kernel ({torch.backends.cpu.get_cpu_capability()})"
    return "ATen bmm + softmax"


def gemm_rates(size: int = 2048, seconds: float = 1.5) -> Dict[str, Any]:
    """This machine's arithmetic limit on torch's current threads: GFLOP/s of a ``size`` cubed
    matrix product (``2 size^3`` FLOP) in float32 and in bfloat16, each the best of the
    ~0.1 s windows in ``seconds`` (the best, because the limit is what the cores can do when the
    shared machine lets them; the median is kept too)."""
    out: Dict[str, Any] = {"size": size, "threads": torch.get_num_threads()}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        c = torch.mm(a, b)  # warm-up (MKL/oneDNN kernel selection)
        flop = 2.0 * size**3
        rates: List[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(rates) < 3:
            t0, n = time.perf_counter(), 0
            while n == 0 or time.perf_counter() - t0 < 0.1:
                torch.mm(a, b, out=c)
                n += 1
            rates.append(n * flop / (time.perf_counter() - t0) / 1e9)
        out[f"{name}_gflops"] = max(rates)
        out[f"{name}_gflops_median"] = statistics.median(rates)
    return out


def write_report(out: Path, report: Dict[str, Any], markdown: Callable[[Dict[str, Any]], str]) -> None:
    """``report`` as ``out.json`` and, rendered by ``markdown``, as ``out.md`` (printed too); the
    run's commit, CPU and torch version are added to it first."""
    report.update(commit=git_commit(), cpu=cpu_name(), versions=versions(("torch",)))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def alternation_summary(rounds: List[Dict[str, Dict[str, Dict[str, float]]]], measures: List[str], before: str,
                        after: str) -> Dict[str, Dict[str, float]]:
    """Medians of alternating A/B rounds (``round[route][measure][clock]``, clocks ``cpu_ms`` and
    ``wall_ms``): per measure, each route's median ``{route}_{clock}`` and ``speedup_{cpu|wall}``,
    the median of each round's ``before / after`` ratio (same moment, same load)."""
    summary: Dict[str, Dict[str, float]] = {}
    for m in measures:
        entry: Dict[str, float] = {}
        for clock in ("cpu_ms", "wall_ms"):
            for name in (before, after):
                entry[f"{name}_{clock}"] = statistics.median(rd[name][m][clock] for rd in rounds)
            entry[f"speedup_{clock.split('_')[0]}"] = statistics.median(rd[before][m][clock] / rd[after][m][clock] for rd in rounds)
        summary[m] = entry
    return summary
