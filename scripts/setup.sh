#!/usr/bin/env bash
# Create .venv in the repository root and install iarm-torchrec with the pinned
# torch / fbgemm / torchrec triple. Picks the CUDA fbgemm build when an NVIDIA GPU
# is visible (nvidia-smi lists one), the CPU build otherwise. IARM_FBGEMM=cpu|cuda overrides.
# A second run with nothing changed returns in about a second (stamp file).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv="$root/.venv"
py="${PYTHON:-python3}"

variant="${IARM_FBGEMM:-}"
if [ -z "$variant" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
        variant=cuda
    else
        variant=cpu
    fi
fi
case "$variant" in cpu|cuda) ;; *) echo "IARM_FBGEMM must be cpu or cuda, got '$variant'" >&2; exit 2;; esac

stamp="$venv/.iarm-setup-stamp"
want="$variant $(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
    exit 0
fi

[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
torchrec_pin=$("$venv/bin/python" -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["tool"]["iarm_torchrec"]["pins"]["torchrec"])')
echo "setup: installing iarm-torchrec ($variant fbgemm) into $venv" >&2
# 1. the package with its pinned deps and the matching fbgemm build
"${pip[@]}" install -e ".[$variant,dev,plots,serve]" 2> >(grep -v "^WARNING: Location .* is ignored" >&2)
# 2. torchrec without its metadata's CUDA fbgemm-gpu requirement
"${pip[@]}" install --no-deps "$torchrec_pin"
# 3. prove the triple imports together before declaring success
"$venv/bin/python" - <<'PY'
import torch, fbgemm_gpu, torchrec  # noqa: F401
import iarm_torchrec  # noqa: F401
print(f"setup: torch {torch.__version__}, torchrec {torchrec.__version__ if hasattr(torchrec, '__version__') else 'ok'}")
PY
# 4. build the CPU attention kernel now (cached by torch) instead of in the first training step;
#    without a C++ compiler this only warns and training uses ATen's slower path
"$venv/bin/python" -c 'import logging; logging.basicConfig(level=logging.INFO, format="setup: %(message)s"); from iarm_torchrec.kernels.field_attention import load; load()'
echo "$want" > "$stamp"
