#!/usr/bin/env python3
"""The CV sample compiled twice, from its ONNX file and from its PyTorch module, side by side.

Issue 4 asks that `exitc.compile(module, ...)` give the same exit choices and agreement (within
the statistical tolerance) as `exitc compile model.onnx`; since issue 11 both run the one pipeline
(the module through its ONNX mirror). Both compiles run here in one process on the same calibration
rows; the table shows candidates, chosen exits (as tensors of each ONNX graph), agreement with the
original on the held-out test split, the certified bound and the compile time, then whether the
candidates, exits, thresholds and gates (chained gates included) are the same. With
--shared-profile the torch compile is given the ONNX compile's measured cost profile, which takes
timing noise out of the comparison: the remaining difference is the pipeline's.

    .venv/bin/python bench/compare_frontends.py [--shared-profile] [--test-rows 2000]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "samples"))

import exitc  # noqa: E402
from exitc.backends import make_session  # noqa: E402
from exitc.data import batches  # noqa: E402
from exitc.driver import CompileOptions, compile_model  # noqa: E402
from exitc.report import format_table  # noqa: E402


def original_predictions(model_path: str, x: np.ndarray) -> np.ndarray:
    sess = make_session(model_path, "original model")
    return np.concatenate([sess.run({"pixels": x[sl]})[0] for sl in batches(len(x), 256)]).argmax(1)


def artifact_predictions(path: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model = exitc.load(path)
    preds, exits = [], []
    for sl in batches(len(x), 32):
        outs, e = model.run({"pixels": x[sl]})
        preds.append(outs[0].argmax(1))
        exits.append(e)
    return np.concatenate(preds), np.concatenate(exits)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared-profile", action="store_true",
                    help="give the torch compile the ONNX compile's cost profile")
    ap.add_argument("--test-rows", type=int, default=5000)
    ap.add_argument("--target-acc", type=float, default=0.99)
    args = ap.parse_args()

    subprocess.run([sys.executable, os.path.join(ROOT, "samples", "build_cv.py")], check=True)
    import build_cv  # noqa: E402  (after the build: it reads the built model's head)

    d = os.path.join(ROOT, "samples", ".cache", "cv")
    model_path, calib_path = os.path.join(d, "model.onnx"), os.path.join(d, "calib.npz")
    with np.load(os.path.join(d, "test.npz")) as z:
        x_test = z["pixels"][:args.test_rows]
    reference = original_predictions(model_path, x_test)
    work = tempfile.mkdtemp(prefix="exitc-frontends-")
    rows = []

    t = time.perf_counter()
    onnx_result = compile_model(model_path, calib_path, os.path.join(work, "onnx.exitc"),
                                CompileOptions(target_acc=args.target_acc), log=lambda *_: None)
    onnx_seconds = time.perf_counter() - t
    onnx_exits = [onnx_result.candidates[k].tensor for k in onnx_result.plan.exits]
    pred, exits = artifact_predictions(onnx_result.out_dir, x_test)
    rows.append(["ONNX file", len(onnx_result.candidates), " ".join(onnx_exits) or "-",
                 f"{(pred == reference).mean():.4f}", f"{onnx_result.plan.agreement_bound:.4f}",
                 " ".join(f"{(exits == k).mean():.2f}" for k in range(len(onnx_exits) + 1)),
                 f"{onnx_result.plan.predicted_speedup:.2f}x", f"{onnx_seconds:.0f}"])

    module = build_cv.load_torch_model()
    given = (lambda cands, b: onnx_result.profile) if args.shared_profile else None
    t = time.perf_counter()
    compiled = exitc.compile(module, calib=calib_path, target_acc=args.target_acc, cost_profile=given,
                             log=lambda *_: None)
    path = compiled.save(os.path.join(work, "torch.exitc"))
    torch_seconds = time.perf_counter() - t
    names = compiled.onnx_candidates or [c.tensor for c in compiled.candidates]
    torch_exits = [names[k] for k in compiled.plan.exits]
    pred, exits = artifact_predictions(path, x_test)
    rows.append([f"PyTorch module ({compiled.measured_in} costs)", len(compiled.candidates),
                 " ".join(torch_exits) or "-", f"{(pred == reference).mean():.4f}",
                 f"{compiled.plan.agreement_bound:.4f}",
                 " ".join(f"{(exits == k).mean():.2f}" for k in range(len(torch_exits) + 1)),
                 f"{compiled.plan.predicted_speedup:.2f}x", f"{torch_seconds:.0f}"])

    print(f"CV sample, {len(x_test)} test rows, target {args.target_acc}; {platform.node()}, "
          f"{os.cpu_count()} cores")
    print(format_table(["front end", "candidates", "exits (ONNX tensors)", "agreement (test)", "bound",
                        "exit fractions", "predicted", "compile s"], rows))
    shape = lambda cands: [(c.cut, c.layout, c.features, c.spatial, round(c.flops_fraction, 3)) for c in cands]  # noqa: E731
    same_candidates = bool(onnx_result.candidates) and shape(compiled.candidates) == shape(onnx_result.candidates)
    same_exits = compiled.plan.exits == onnx_result.plan.exits
    same_thresholds = same_exits and np.allclose(compiled.plan.thresholds, onnx_result.plan.thresholds, atol=1e-5)
    same_gates = len(compiled.plan.gates) == len(onnx_result.plan.gates) and all(
        a.shape == b.shape and np.allclose(a, b, atol=1e-4) and abs(ab - bb) < 1e-4
        for (a, ab), (b, bb) in zip(compiled.plan.gates, onnx_result.plan.gates))
    chained = sum(w.size > 3 for w, _ in onnx_result.plan.gates)
    yes = lambda v: "yes" if v else "no"  # noqa: E731
    print(f"same candidates: {yes(same_candidates)}; same exits: {yes(same_exits)}; same thresholds: "
          f"{yes(same_thresholds)}; same gates: {yes(same_gates)} ({chained} chained)")
    print(f"artifacts: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
