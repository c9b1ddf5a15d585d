#!/usr/bin/env bash
# Create /work/main/.venv-mace (gitignored): an isolated environment with mace-torch,
# used only by the comparison benchmarks (scripts/bench_model.py and friends).
# mace-torch is never a dependency of forcefield. The venv sees the system site-packages
# (torch, ase, numpy are already installed there) but gets its own e3nn (mace pins it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MACE_VENV:-$ROOT/.venv-mace}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv --system-site-packages "$VENV"
fi
# torch first, pinned to the system version, so pip never pulls a CUDA build.
TORCH_VERSION="$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || echo 2.13.0)"
"$VENV/bin/python" -m pip install --quiet "torch==${TORCH_VERSION}"
"$VENV/bin/python" -m pip install --quiet mace-torch
# e3nn 0.4.4 (pinned by mace-torch) torch.load()s its bundled constants.pt, which torch >= 2.6
# refuses under the weights_only default: run mace code with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1.
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 "$VENV/bin/python" -c 'import mace, e3nn, e3nn.o3, mace.modules; print("mace-torch", getattr(mace, "__version__", "?"), "e3nn", e3nn.__version__)'
echo "mace venv ready: $VENV/bin/python (run it with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1)"
