#!/usr/bin/env bash
# Set up a fresh Debian 12/13 machine for exitc (idempotent; run as root or with apt rights):
#   system build tools + ONNX Runtime headers (scripts/setup_runtime.sh), the venv, and exitc
#   itself installed in editable mode with its C++ runtime module and the test dependencies.
# Env: EXITC_VENV (default: <repo>/.venv).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${EXITC_VENV:-$root/.venv}"
export EXITC_VENV="$venv"
log() { echo "[setup] $*"; }

if [[ ! -x "$venv/bin/python" ]]; then
    log "creating venv $venv"
    python3 -m venv "$venv"
fi
py="$venv/bin/python"
# Build requirements first: exitc is installed without build isolation so that the C++ module
# links the same onnxruntime wheel that the venv uses at run time.
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.11" "onnxruntime>=1.17" "onnx>=1.15" numpy ninja cmake
bash "$root/scripts/setup_runtime.sh"
log "installing exitc (editable, with the C++ runtime) into $venv"
(cd "$root" && "$py" -m pip install -q --no-build-isolation -e ".[test]")
"$py" -c "import exitc, exitc.cpp_runtime; print('[setup] exitc', exitc.__version__, 'with C++ runtime')"
