#!/usr/bin/env bash
# The README's test command: set up a fresh machine, then run every test.
#   1. setup (venv, exitc with its C++ runtime) and the sample prerequisites (torch CPU, data .debs)
#   2. C++: ctest (normal and AddressSanitizer+UBSan builds), install, build samples/cpp against it
#   3. Python: pytest (unit, property, differential and the reduced real-sample integration tests)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
start=$SECONDS
bash scripts/setup.sh
bash scripts/setup_samples.sh
EXITC_PYTHON="$root/.venv/bin/python" bash scripts/build_runtime.sh
echo "=== pytest ==="
.venv/bin/python -m pytest -q -ra tests
echo "test.sh: done in $((SECONDS - start)) s"
