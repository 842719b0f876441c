"""Where a result came from: this package's git commit, the library versions, the machine.

Run folders, experiment reports and benchmark results record it, so that a figure can be
traced to the code and the machine that produced it.

Example::

    >>> info = provenance()
    >>> sorted(info)
    ['cores', 'cpu', 'git_commit', 'python', 'versions']
    >>> "torch" in info["versions"]
    True
"""

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Dict, Optional, Sequence

PACKAGES = ("torch", "torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu", "torchx", "numpy")
"""The libraries whose versions decide a result."""


def git_commit() -> Optional[str]:
    """The short commit of this package's checkout, or ``None`` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions(packages: Sequence[str] = PACKAGES) -> Dict[str, str]:
    """``{package: version}`` of the installed ones among ``packages``."""
    found: Dict[str, str] = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def provenance(packages: Sequence[str] = PACKAGES) -> Dict[str, object]:
    """The commit, versions and machine, JSON-ready."""
    return {
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "versions": versions(packages),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
    }


def describe(packages: Sequence[str] = PACKAGES) -> str:
    """One line: ``python X, torch Y, ..., iarm-torchrec COMMIT``."""
    parts = [f"python {platform.python_version()}"]
    parts += [f"{name} {version}" for name, version in versions(packages).items()]
    commit = git_commit()
    if commit:
        parts.append(f"iarm-torchrec {commit}")
    return ", ".join(parts)
