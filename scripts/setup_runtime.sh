#!/usr/bin/env bash
# Installs what the C++ runtime (libexitc) needs to build on Debian 12 or 13. Idempotent; run as root.
#
#  * compiler, cmake/ninja, nlohmann-json (system packages);
#  * ONNX Runtime headers. Debian 13 ships libonnxruntime-dev: used as is when installed (or
#    installable). Debian 12 has no such package, so we fetch the Debian 13 .debs with a PRIVATE
#    apt configuration (temporary sources list + state dir; /etc/apt is never touched) and unpack
#    them with `dpkg -x` into runtime/.deps/ (gitignored). We link against the library shipped in
#    the onnxruntime wheel of the project venv (newer C API, backwards compatible with the headers).
#  * pybind11 in the venv (for the optional Python module).
#
# Env: EXITC_VENV (default: <repo>/.venv), EXITC_SKIP_APT_INSTALL=1 to skip system package installs.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deps_dir="$repo_root/runtime/.deps"
venv="${EXITC_VENV:-$repo_root/.venv}"

log() { echo "[setup_runtime] $*"; }

export DEBIAN_FRONTEND=noninteractive
if [[ "${EXITC_SKIP_APT_INSTALL:-0}" != 1 ]]; then
    need=()
    for pkg in g++ make nlohmann-json3-dev dpkg-dev ca-certificates; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    command -v cmake >/dev/null 2>&1 || need+=(cmake)
    command -v ninja >/dev/null 2>&1 || need+=(ninja-build)
    if ((${#need[@]})); then
        log "apt-get install ${need[*]}"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}"
    fi
fi

# --- ONNX Runtime headers -------------------------------------------------------------------
if dpkg -s libonnxruntime-dev >/dev/null 2>&1; then
    log "system libonnxruntime-dev is installed; using it"
elif apt-cache show libonnxruntime-dev >/dev/null 2>&1 && [[ "${EXITC_SKIP_APT_INSTALL:-0}" != 1 ]]; then
    log "installing libonnxruntime-dev from the system's own suites"
    apt-get install -y -qq --no-install-recommends libonnxruntime-dev
elif [[ -f "$deps_dir/onnxruntime/include/onnxruntime_cxx_api.h" ]]; then
    log "ONNX Runtime headers already in $deps_dir/onnxruntime/include"
else
    log "fetching libonnxruntime-dev from Debian 13 (trixie) with a private apt configuration"
    work="$(mktemp -d)"
    chmod 755 "$work"   # apt's sandbox user (_apt) must be able to write the downloads
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/debs"
    cat >"$work/trixie.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    : >"$work/sources.list"
    apt_private=(
        -o "Dir::Etc::SourceList=$work/sources.list"
        -o "Dir::Etc::SourceParts=$work/parts"
        -o "Dir::State::Lists=$work/lists"
        -o "Dir::Cache::Archives=$work/archives"
        -o "Dir::Cache::pkgcache=$work/pkgcache.bin"
        -o "Dir::Cache::srcpkgcache=$work/srcpkgcache.bin"
        -o "APT::Architecture=amd64"
    )
    mkdir -p "$work/parts"
    cp "$work/trixie.sources" "$work/parts/trixie.sources"
    apt-get "${apt_private[@]}" update -qq
    # The -dev package holds the headers; its header-only dependencies (if any) come along.
    (cd "$work/debs" && apt-get "${apt_private[@]}" download libonnxruntime-dev)
    rm -rf "$deps_dir/onnxruntime" "$deps_dir/root"
    # The -dev package's libonnxruntime.so points at Debian's runtime package, which we do not
    # install; we link the venv wheel's library instead (see cmake/FindONNXRuntime.cmake).
    mkdir -p "$deps_dir/root"
    for deb in "$work"/debs/*.deb; do
        log "unpacking $(basename "$deb")"
        dpkg -x "$deb" "$deps_dir/root"
    done
    hdr="$(find "$deps_dir/root" -name onnxruntime_cxx_api.h -print -quit)"
    [[ -n "$hdr" ]] || { echo "onnxruntime_cxx_api.h not found in libonnxruntime-dev" >&2; exit 1; }
    mkdir -p "$deps_dir/onnxruntime"
    # Relative link, so the checkout can move.
    ln -sfn "../root/${hdr#"$deps_dir/root/"}" "$deps_dir/onnxruntime/include.tmp"
    ln -sfn "$(readlink "$deps_dir/onnxruntime/include.tmp" | xargs dirname)" "$deps_dir/onnxruntime/include"
    rm -f "$deps_dir/onnxruntime/include.tmp"
    log "ONNX Runtime headers: $deps_dir/onnxruntime/include -> $(dirname "$hdr")"
fi

# --- Python side: onnxruntime wheel (its libonnxruntime.so.1.* is what we link) and pybind11 --
if [[ -x "$venv/bin/python" ]]; then
    missing=()
    "$venv/bin/python" -c "import onnxruntime" 2>/dev/null || missing+=(onnxruntime)
    "$venv/bin/python" -c "import pybind11" 2>/dev/null || missing+=(pybind11)
    "$venv/bin/python" -c "import onnx, numpy" 2>/dev/null || missing+=(onnx numpy)
    if ((${#missing[@]})); then
        log "pip install ${missing[*]} into $venv"
        "$venv/bin/python" -m pip install -q "${missing[@]}"
    fi
    log "onnxruntime wheel: $("$venv/bin/python" -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))')"
else
    log "no venv at $venv (set EXITC_VENV); the build then needs a system libonnxruntime"
fi
log "done"
