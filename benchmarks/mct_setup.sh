#!/usr/bin/env bash
# Make Sony's Model Compression Toolkit (MCT 2.6.1) runnable beside CPU torch 2.13.0, in a venv of its own,
# for benchmarks/mct_baseline.py. Never installs into the project's own .venv.
#
#     bash benchmarks/mct_setup.sh                       # venv at /work/mct-venv
#     MCT_VENV=/tmp/mct bash benchmarks/mct_setup.sh     # elsewhere
#     $MCT_VENV/bin/python benchmarks/mct_baseline.py --help
#
# Why it is not a plain `pip install model-compression-toolkit`:
# - An unpinned torch would pull a multi-GB CUDA build; torch is pinned to 2.13.0 (CPU here) and every later
#   install runs under a constraints file that holds torch and torchvision where they are.
# - MCT's PyTorch front end imports edge-mdt-cl, which imports torchvision. The torchvision 0.28.0 wheel on PyPI
#   is the CUDA build: its C++ extension (_C.so) does not load against CPU torch (libc10_cuda.so missing), so it
#   is installed with --no-deps and its Python-side fake-kernel registrations need the torchvision::nms and
#   torchvision::qnms operator schemas declared first: mct_baseline.declare_torchvision_ops() does that before
#   anything imports torchvision. torchvision's C++ ops (nms, roi_align, ...) stay unusable; MCT does not need them.
# - MCT 2.6.1 pins matplotlib<3.10, networkx<3.6 and pydantic<2.12: fine in a venv of its own.
set -euo pipefail

VENV="${MCT_VENV:-/work/mct-venv}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/benchmarks/_peer_venv.sh"

peer_venv "$VENV" 'torch==2.13.0' 'torchvision==0.28.0'
"${PIP[@]}" install -q --no-deps torchvision==0.28.0
"${PIP[@]}" install -q -c "$CONSTRAINTS" model-compression-toolkit==2.6.1
peer_install_mixbits "$REPO"

# Checks: torch is still the pinned build, and MCT + mixbits import (with the torchvision shim).
cd "$REPO/benchmarks"
OMP_NUM_THREADS=1 "$VENV/bin/python" - <<'EOF'
import torch
assert torch.__version__.split("+")[0] == "2.13.0", f"torch was replaced: {torch.__version__}"
import mct_baseline
mct = mct_baseline.import_mct()  # declares the torchvision op schemas, then imports MCT
import torchvision
import mixbits
print(f"ok: torch {torch.__version__}, torchvision {torchvision.__version__}, MCT {mct.__version__}, "
      f"mixbits {mixbits.__version__}")
EOF
