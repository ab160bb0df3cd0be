#!/usr/bin/env bash
# Make DiffQ (diffq 0.2.4, Defossez et al. 2021) runnable beside CPU torch 2.13.0, in a venv of its own,
# for benchmarks/diffq_baseline.py. Never installs into the project's own .venv.
#
#     bash benchmarks/diffq_setup.sh                         # venv at /work/diffq-venv
#     DIFFQ_VENV=/tmp/dq bash benchmarks/diffq_setup.sh      # elsewhere
#     $DIFFQ_VENV/bin/python benchmarks/diffq_baseline.py --help
#
# Why it is not a plain `pip install diffq`:
# - diffq 0.2.4 is an sdist: pip builds its Cython extension (diffq.bitpack) here, which needs a C
#   compiler (gcc) and pulls Cython as a build and run dependency; its only other runtime deps are
#   numpy and torch.
# - An unpinned torch would pull a multi-GB CUDA build; torch is pinned to 2.13.0 (CPU here), installed
#   first, and every later install runs under a constraints file that holds it there.
# - mixbits goes in with --no-deps (editable) plus its own runtime deps, as in mct_setup.sh.
set -euo pipefail

VENV="${DIFFQ_VENV:-/work/diffq-venv}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/benchmarks/_peer_venv.sh"

peer_venv "$VENV" 'torch==2.13.0'
peer_install_mixbits "$REPO"
"${PIP[@]}" install -q -c "$CONSTRAINTS" diffq==0.2.4   # builds its Cython bitpack extension with gcc

# Checks: torch is still the pinned build, DiffQ's compiled bitpack loads, and mixbits imports.
cd "$REPO/benchmarks"
OMP_NUM_THREADS=1 "$VENV/bin/python" - <<'EOF'
import torch
assert torch.__version__.split("+")[0] == "2.13.0", f"torch was replaced: {torch.__version__}"
import diffq
from diffq import DiffQuantizer, bitpack  # bitpack: the Cython extension built from the sdist
import mixbits
import diffq_baseline  # noqa: F401
m = torch.nn.Sequential(torch.nn.Linear(8, 4))
q = DiffQuantizer(m, min_size=0.0, group_size=0)
q.no_optimizer()
m.eval()
m(torch.zeros(1, 8))  # DiffQ's true quantized forward
print(f"ok: torch {torch.__version__}, diffq {diffq.__version__}, mixbits {mixbits.__version__}")
EOF
