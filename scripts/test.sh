#!/usr/bin/env bash
# The README's test command: set up a fresh machine, then run every test.
#   1. setup (venv, exitc with its C++ runtime), the sample prerequisites (torch CPU, data .debs)
#      and the zoo of third-party classifiers (scripts/setup_zoo.sh)
#   2. C++: ctest (normal, AddressSanitizer+UBSan and ThreadSanitizer builds), install, build samples/cpp against it
#   2b. Triton Inference Server (scripts/setup_triton.sh) for tests/test_triton.py
#   3. Python: pytest (unit, property, differential and the reduced real-sample integration tests)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
start=$SECONDS
bash scripts/setup.sh
bash scripts/setup_samples.sh
bash scripts/setup_zoo.sh   # third-party classifiers for tests/test_zoo.py (cached in .cache/zoo)
EXITC_PYTHON="$root/.venv/bin/python" bash scripts/build_runtime.sh
# Triton Inference Server for tests/test_triton.py (which skips, saying why, when this failed).
bash scripts/setup_triton.sh || echo "test.sh: WARNING: scripts/setup_triton.sh failed; tests/test_triton.py will skip"
echo "=== pytest ==="
.venv/bin/python -m pytest -q -ra tests
echo "test.sh: done in $((SECONDS - start)) s"
