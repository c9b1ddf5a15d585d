#!/usr/bin/env bash
# Create .venv-fairchem (gitignored): fairchem-core 1.10 (the reference EquiformerV2) for
# scripts/bench_equiformer.py only; never a dependency of forcefield.  fairchem-core 1.10
# pins an old torch, so it is installed with --no-deps next to the runtime imports it needs
# (the system torch, ase and numpy are seen through --system-site-packages), plus a tiny
# `torch_scatter` shim mapping `scatter` to PyG's (no torch_scatter wheel exists for this
# torch).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FAIRCHEM_VENV:-$ROOT/.venv-fairchem}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv --system-site-packages "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --no-deps "fairchem-core==1.10.0"
# one at a time: resolving them together failed on a machine whose system site-packages
# hold a distribution without a version (pip: "expected string or bytes-like object")
for package in e3nn huggingface_hub pymatgen torchtnt wandb tensorboard pydantic orjson \
        numba lmdb submitit; do
    "$VENV/bin/python" -m pip install --quiet "$package"
done
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$SITE/torch_scatter"
cat > "$SITE/torch_scatter/__init__.py" <<'PY'
"""Minimal torch_scatter shim for fairchem-core on a torch without torch_scatter wheels."""
from torch_geometric.utils import scatter as _scatter


def scatter(src, index, dim=-1, out=None, dim_size=None, reduce="sum"):
    result = _scatter(src, index, dim=dim, dim_size=dim_size, reduce=reduce)
    if out is not None:
        out.copy_(result)
        return out
    return result


def segment_coo(src, index, out=None, dim_size=None, reduce="sum"):
    return scatter(src, index, dim=0, out=out, dim_size=dim_size, reduce=reduce)


def segment_csr(*args, **kwargs):
    raise NotImplementedError("segment_csr is not provided by this shim")
PY
"$VENV/bin/python" -c 'from fairchem.core.models.equiformer_v2.equiformer_v2 import EquiformerV2Backbone; print("fairchem EquiformerV2Backbone importable")'
echo "fairchem venv ready: $VENV/bin/python"
