#!/usr/bin/env bash
# Set up a real Triton Inference Server for the exitc backend tests (idempotent):
#   .triton/venv    a venv of its own (nvidia-pytriton pins numpy<2) with nvidia-pytriton and
#                   tritonclient[http,grpc]
#   .triton/server  a writable copy of the tritonserver tree bundled in the nvidia-pytriton wheel
#                   (2.51, runs on CPU), with the Python backend stub of this interpreter's
#                   version copied into backends/python/
#   .triton/env.sh  the environment the server needs (PATH, LD_LIBRARY_PATH), sourced by
#                   tests/triton_server.py's users and by hand:  . .triton/env.sh; tritonserver ...
#   tritonclient[http,grpc] is also installed into exitc's venv (EXITC_VENV, default <repo>/.venv)
#   when it exists: tests/test_triton.py runs there.
# Env: EXITC_TRITON_DIR (default: <repo>/.triton), EXITC_VENV, PYTHON (default: python3).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${EXITC_TRITON_DIR:-$root/.triton}"
venv="$dir/venv"
server="$dir/server"
log() { echo "[setup_triton] $*"; }

if [[ ! -x "$venv/bin/python" ]]; then
    log "creating venv $venv"
    "${PYTHON:-python3}" -m venv "$venv"
fi
py="$venv/bin/python"
if ! "$py" -c "import pytriton, tritonclient.http, tritonclient.grpc" 2>/dev/null; then
    log "installing nvidia-pytriton and tritonclient[http,grpc]"
    "$py" -m pip install -q --upgrade pip
    "$py" -m pip install -q "nvidia-pytriton==0.7.*" "tritonclient[http,grpc]"
fi

pkg="$("$py" -c 'import os, pytriton; print(os.path.dirname(pytriton.__file__))')"
pyver="$("$py" -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')"
src="$pkg/tritonserver"
if [[ ! -x "$src/bin/tritonserver" ]]; then
    echo "[setup_triton] error: $src/bin/tritonserver not found in the nvidia-pytriton wheel" >&2
    exit 1
fi
stub="$pkg/tritonserver/python_backend_stubs/$pyver/triton_python_backend_stub"
[[ -f "$stub" ]] || stub="$(find "$pkg" -path "*python_backend_stubs/$pyver/triton_python_backend_stub" | head -n1)"
if [[ -z "$stub" || ! -f "$stub" ]]; then
    echo "[setup_triton] error: no Python backend stub for Python $pyver in $pkg" >&2
    exit 1
fi

if [[ ! -x "$server/bin/tritonserver" ]]; then
    log "copying the server tree to $server"
    rm -rf "$server.tmp"
    cp -a "$src" "$server.tmp"
    # auditwheel put the server's shared libraries (libtritonserver, its CUDA runtime stub, ...)
    # beside the package as nvidia_pytriton.libs; the copied binary finds them through
    # LD_LIBRARY_PATH (env.sh), not through its wheel-relative RPATH.
    cp -a "$pkg/../nvidia_pytriton.libs" "$server.tmp/external_libs"
    mv "$server.tmp" "$server"
fi
mkdir -p "$server/backends/python"
cp -f "$stub" "$server/backends/python/triton_python_backend_stub"
chmod +x "$server/backends/python/triton_python_backend_stub"

pylib="$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
cat > "$dir/env.sh" <<EOF
# Written by scripts/setup_triton.sh: the environment tritonserver needs here.
export PATH="$venv/bin:$server/bin:\$PATH"
export LD_LIBRARY_PATH="$server/external_libs:$pylib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
EOF
cat > "$dir/paths.json" <<EOF
{"venv_python": "$py", "server": "$server", "tritonserver": "$server/bin/tritonserver",
 "path_prepend": ["$venv/bin", "$server/bin"], "ld_library_path": ["$server/external_libs", "$pylib"],
 "python_version": "$pyver"}
EOF
# Before env.sh: its LD_LIBRARY_PATH puts the server venv's libdir (Debian's /usr/lib) first, and
# a venv of another Python build then fails to import ssl ("pip is configured with locations that
# require TLS/SSL, however the ssl module in Python is not available"; seen with pyenv's 3.11.7).
main_py="${EXITC_VENV:-$root/.venv}/bin/python"
if [[ -x "$main_py" ]] && ! "$main_py" -c "import tritonclient.http, tritonclient.grpc" 2>/dev/null; then
    log "installing tritonclient[http,grpc] into $main_py's venv (for tests/test_triton.py)"
    "$main_py" -m pip install -q "tritonclient[http,grpc]"
fi
. "$dir/env.sh"
usage="$("$server/bin/tritonserver" --help 2>&1 || true)"
if [[ "$usage" != *"Usage: tritonserver"* ]]; then
    echo "[setup_triton] error: tritonserver does not start (. $dir/env.sh; tritonserver --help): ${usage:0:300}" >&2
    exit 1
fi
log "tritonserver ready at $server/bin/tritonserver (env: $dir/env.sh)"
