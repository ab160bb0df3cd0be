# Sourced by the peer baselines' setup scripts (diffq_setup.sh, mct_setup.sh): each peer gets a venv
# of its own, beside the CPU torch the project pins, never the project's venv.
#
#   peer_venv VENV CONSTRAINT...   create VENV if missing, write the constraints every later install
#                                  runs under (torch==2.13.0 first), install that torch; sets PIP and
#                                  CONSTRAINTS for the caller
#   peer_install_mixbits REPO      mixbits' runtime dependencies, then mixbits itself (editable,
#                                  --no-deps, so pip never touches torch)

peer_venv() {
    local venv=$1
    shift
    if [ ! -x "$venv/bin/python" ]; then
        "${PYTHON:-python3}" -m venv "$venv"
    fi
    PIP=("$venv/bin/python" -m pip --disable-pip-version-check)
    CONSTRAINTS="$venv/peer-constraints.txt"
    printf '%s\n' "$@" > "$CONSTRAINTS"
    "${PIP[@]}" install -q --upgrade pip
    "${PIP[@]}" install -q torch==2.13.0
}

peer_install_mixbits() {
    "${PIP[@]}" install -q -c "$CONSTRAINTS" numpy scipy scikit-learn tqdm mlxtend Pillow safetensors 'pydantic>=2'
    "${PIP[@]}" install -q --no-deps -e "$1"
}
