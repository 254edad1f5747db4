#!/usr/bin/env python3
"""Does the agreement monitor notice drift? Serve an artifact on its test rows and on shifted
copies of them, with exitc.monitor.AgreementMonitor on, and compare its estimate with the exact
agreement (every row also run through the original).

    .venv/bin/python bench/monitor_drift.py ARTIFACT --model MODEL.onnx --data TEST.npz
        [--rates 0.01,0.05] [--batch-size 32]

Shifts, for image inputs (float, [batch, C, H, W], values 0..255 as the CV sample takes them;
other inputs get the test rows only): Gaussian noise (sigma 60, clipped), a 90-degree rotation,
inverted intensities. Per case and sample rate it prints the early share, the rows checked at
full depth, the disagreements among them, the estimate with its one-sided bounds, the status,
the exact agreement, and the serving time with and without the monitor (one run each: a noisy
machine moves these by several percent).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import exitc  # noqa: E402
from exitc.backends import make_session  # noqa: E402
from exitc.monitor import AgreementMonitor  # noqa: E402


def shifted_cases(feeds: dict[str, np.ndarray], seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    cases = {"test rows": feeds}
    if len(feeds) != 1:
        return cases
    (name, x), = feeds.items()
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        return cases
    rng = np.random.default_rng(seed)
    hi = float(x.max())
    cases["noise sigma 60"] = {name: np.clip(x + rng.normal(0, 60 * hi / 255, x.shape), 0, hi).astype(x.dtype)}
    if x.shape[2] == x.shape[3]:
        cases["rotated 90"] = {name: np.ascontiguousarray(np.rot90(x, 1, axes=(2, 3)))}
    cases["inverted"] = {name: (hi - x).astype(x.dtype)}
    return cases


def batches(feeds: dict[str, np.ndarray], size: int):
    n = len(next(iter(feeds.values())))
    for i in range(0, n, size):
        yield {k: v[i:i + size] for k, v in feeds.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact")
    ap.add_argument("--model", required=True, help="the original ONNX model (for the exact agreement)")
    ap.add_argument("--data", required=True, help="test rows (.npz keyed by input name)")
    ap.add_argument("--rates", default="0.01,0.05")
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args()
    model = exitc.load(a.artifact)
    original = make_session(a.model, a.model)
    out_name = model.manifest["prediction_output"]
    npz = np.load(a.data)
    feeds = {i["name"]: npz[i["name"]] for i in model.manifest["inputs"]}
    k = model.output_names.index(out_name)
    for case, x in shifted_cases(feeds).items():
        want = np.concatenate([original.run(b, [out_name])[0] for b in batches(x, 256)]).argmax(1)
        t = time.perf_counter()
        for b in batches(x, a.batch_size):
            model.run(b)
        plain = time.perf_counter() - t
        for rate in (float(r) for r in a.rates.split(",")):
            mon = AgreementMonitor(model, sample_rate=rate, seed=0)
            got = []
            t = time.perf_counter()
            for b in batches(x, a.batch_size):
                outs, _ = mon.run(b)
                got.append(outs[k].argmax(1))
            served = time.perf_counter() - t
            r = mon.report()
            exact = float((np.concatenate(got) == want).mean())
            print(f"{case:15s} rate {rate:.2f}: early {r.early_fraction:.3f}, checked {sum(r.sampled):4d}, "
                  f"wrong {sum(r.disagreements):3d}, estimate {r.agreement_estimate:.4f} "
                  f"[{r.agreement_lower:.4f}, {r.agreement_upper:.4f}] {r.status:13s} exact {exact:.4f} "
                  f"(target {r.target}); served in {served:.1f}s, {plain:.1f}s unmonitored", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
