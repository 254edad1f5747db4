#!/usr/bin/env python3
"""C++ runtime vs Python reference on a compiled sample, paired call by call.

For batch sizes 1, 7 and 32, both engines run the same test rows alternately (Python, C++,
Python, ...), so machine drift hits both; prints medians and the total-time ratio Python/C++.

    .venv/bin/python bench/compare_runtimes.py cv     # needs samples/.cache/cv/model.exitc
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from exitc.manifest import input_infos  # noqa: E402
from exitc.cpp_runtime import CppExitModel  # noqa: E402
from exitc.data import load_dataset  # noqa: E402
from exitc.runtime import ExitModel  # noqa: E402


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "cv"
    d = os.path.join(ROOT, "samples", ".cache", name)
    py, cpp = ExitModel(os.path.join(d, "model.exitc")), CppExitModel(os.path.join(d, "model.exitc"))
    data = load_dataset(os.path.join(d, "test.npz"), input_infos(py.manifest))
    for b in (1, 7, 32):
        rows = min(data.rows, 64 * b)
        t_py, t_cpp = [], []
        for s in range(0, rows - b + 1, b):
            f = {k: v[s:s + b] for k, v in data.feeds.items()}
            t = time.perf_counter()
            py.run(f)
            t_py.append(time.perf_counter() - t)
            t = time.perf_counter()
            cpp.run(f)
            t_cpp.append(time.perf_counter() - t)
        a, c = np.array(t_py[2:]), np.array(t_cpp[2:])  # first calls warm up allocators
        print(f"{name} batch {b:2d}: python median {np.median(a) * 1e3:8.3f} ms   C++ median {np.median(c) * 1e3:8.3f} ms"
              f"   total python/C++ {a.sum() / c.sum():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
