#!/usr/bin/env bash
# The README's main command: set up, build the CV sample (EfficientNet-Lite0 on Fashion-MNIST),
# compile it with exitc on the embedded default backend (ONNX Runtime, CPU), benchmark it against
# the original on the held-out test split, and print the table and the report path.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
bash scripts/setup_samples.sh
py=.venv/bin/python
$py samples/build_cv.py
out=samples/.cache/cv/model.exitc
.venv/bin/exitc compile samples/.cache/cv/model.onnx --calib samples/.cache/cv/calib.npz --target-acc 0.99 \
    -o "$out" --force
.venv/bin/exitc bench "$out" --data samples/.cache/cv/test.npz --batch-size 32 --json samples/.cache/cv/bench.json
echo "report: $root/$out/report.html"
echo "bench:  $root/samples/.cache/cv/bench.json"
