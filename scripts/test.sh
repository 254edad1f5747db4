#!/usr/bin/env bash
# The README's test command: set up a fresh machine, then run every test.
#   1. setup (venv, exitc with its C++ runtime), the sample prerequisites (torch CPU, data .debs)
#      and the zoo of third-party classifiers (scripts/setup_zoo.sh)
#   2. C++: ctest (normal and AddressSanitizer+UBSan builds), install, build samples/cpp against it
#   3. Python: pytest (unit, property, differential and the reduced real-sample integration tests)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
start=$SECONDS
bash scripts/setup.sh
bash scripts/setup_samples.sh
bash scripts/setup_zoo.sh   # third-party classifiers for tests/test_zoo.py (cached in .cache/zoo)
EXITC_PYTHON="$root/.venv/bin/python" bash scripts/build_runtime.sh
echo "=== pytest ==="
.venv/bin/python -m pytest -q -ra tests
echo "test.sh: done in $((SECONDS - start)) s"
