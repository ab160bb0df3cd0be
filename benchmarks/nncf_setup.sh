#!/usr/bin/env bash
# Make NNCF's HAWQ precision initialisation runnable beside CPU torch 2.13.0, in a venv of its own, for
# benchmarks/peer_allocation.py --peer nncf_hawq. Never installs into the project's own .venv.
#
#     bash benchmarks/nncf_setup.sh                        # venv at /work/nncf-venv
#     NNCF_VENV=/tmp/nncf bash benchmarks/nncf_setup.sh    # elsewhere
#
# Why NNCF 2.19.0 and not the newest: NNCF 3.0.0 removed the legacy PyTorch API (create_compressed_model)
# and the NNCFNetwork-based algorithms with it, mixed-precision initialisation (HAWQ, AutoQ) included (its
# release notes, "Deprecations/Removals"); 3.4.0 installs here but has no HAWQ. 2.19.0 is the last release
# that has it (deprecated there); it installs beside torch 2.13.0 CPU and warns that it was tested with
# torch 2.9. pip replaces networkx 3.6 with 3.4.2 for it: fine in a venv of its own.
set -euo pipefail

VENV="${NNCF_VENV:-/work/nncf-venv}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/benchmarks/_peer_venv.sh"

peer_venv "$VENV" 'torch==2.13.0' 'numpy<2.3.0'  # nncf 2.19.0 requires numpy<2.3
"${PIP[@]}" install -q -c "$CONSTRAINTS" nncf==2.19.0
peer_install_mixbits "$REPO"

# Checks: torch is still the pinned build, and NNCF's legacy HAWQ initialiser + mixbits import.
OMP_NUM_THREADS=1 "$VENV/bin/python" - <<'PY'
import torch
assert torch.__version__.split("+")[0] == "2.13.0", f"torch was replaced: {torch.__version__}"
import nncf
from nncf.torch import create_compressed_model, register_default_init_args
from nncf.torch.quantization.precision_init.hawq_init import HAWQPrecisionInitializer
import mixbits
print(f"ok: torch {torch.__version__}, nncf {nncf.__version__}, mixbits {mixbits.__version__}")
PY
