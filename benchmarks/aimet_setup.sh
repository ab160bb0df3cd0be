#!/usr/bin/env bash
# Make Qualcomm AIMET's AMP (aimet-torch 2.42.0) runnable beside CPU torch 2.13.0, in a venv of its own, for
# benchmarks/peer_allocation.py --peer aimet_amp. Never installs into the project's own .venv.
#
#     bash benchmarks/aimet_setup.sh                         # venv at /work/aimet-venv
#     AIMET_VENV=/tmp/aimet bash benchmarks/aimet_setup.sh   # elsewhere
#
# aimet-torch 2.42.0 is a pure-Python wheel (py3-none-any) that installs with pip under a torch==2.13.0
# constraint (about 10 minutes: cvxpy, holoviews, bokeh, tensorboard... come with it). It pulls PyPI's
# torchvision 0.28.0, the CUDA build: as for MCT (see mct_setup.sh), its C++ extension does not load beside
# CPU torch, and peer_allocation declares the torchvision::nms/qnms schemas before aimet_torch imports it.
set -euo pipefail

VENV="${AIMET_VENV:-/work/aimet-venv}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/benchmarks/_peer_venv.sh"

peer_venv "$VENV" 'torch==2.13.0' 'torchvision==0.28.0'
"${PIP[@]}" install -q -c "$CONSTRAINTS" aimet-torch==2.42.0
peer_install_mixbits "$REPO"

# Checks: torch is still the pinned build, and AIMET's AMP + mixbits import (with the torchvision shim).
cd "$REPO/benchmarks"
OMP_NUM_THREADS=1 "$VENV/bin/python" - <<'PY'
import torch
assert torch.__version__.split("+")[0] == "2.13.0", f"torch was replaced: {torch.__version__}"
import mct_baseline
mct_baseline.declare_torchvision_ops()
import aimet_torch
from aimet_torch.mixed_precision import choose_mixed_precision
import mixbits
print(f"ok: torch {torch.__version__}, aimet-torch {aimet_torch.__version__}, mixbits {mixbits.__version__}")
PY
