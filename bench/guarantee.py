#!/usr/bin/env python3
"""Check the agreement guarantee on rows no compile saw.

    .venv/bin/python bench/guarantee.py MODEL.onnx --calib CALIB.npz [--rows 3000] [--draws 3]
        [--seeds 0,4] [--target-acc 0.99] [--confidence 0.95] [--out DIR] [--json PATH]

`exitc compile --target-acc T --confidence C` promises that with probability at least C over the
calibration rows, the artifact agrees with the original on at least T of the calibration
distribution. This compiles from `--draws` disjoint draws of `--rows` rows (draw d: rows
d*rows .. (d+1)*rows of CALIB), once per seed, and scores every artifact on the rows after the
last draw, which no compile saw. The rows of CALIB must be in random order (the samples'
builders permute them) so that every draw and the scored rows come from one distribution.

Per compile it prints the certified bound, the certification split's agreement, the agreement on
the unseen rows (with its binomial standard error) and whether that is below the target; then how
many compiles fell below it, and how likely at least that many are if each fails with
probability exactly 1 - C. Compiles of one draw with different seeds share their rows, so their
failures are correlated: the draws, not the compiles, are the independent trials.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from scipy.stats import binom

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from exitc.backends import make_session  # noqa: E402
from exitc.data import batches, load_dataset  # noqa: E402
from exitc.manifest import input_infos  # noqa: E402
from exitc.passes.normalize import load_model, prepare  # noqa: E402
from exitc.predictions import predicted_classes  # noqa: E402
from exitc.report import format_table  # noqa: E402
from exitc.runtime import load  # noqa: E402

SCORE_BATCH = 256


def predictions(run, feeds: dict[str, np.ndarray], rows: int, probabilities: bool) -> np.ndarray:
    """Predicted classes (exitc.predictions) of `run` (feeds -> prediction output) over `rows` rows."""
    return np.concatenate([predicted_classes(np.asarray(run({k: v[sl] for k, v in feeds.items()})), probabilities)
                           for sl in batches(rows, SCORE_BATCH)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--calib", required=True)
    ap.add_argument("--rows", type=int, default=3000, help="calibration rows per draw")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--seeds", default="0", help="comma-separated compile seeds per draw")
    ap.add_argument("--target-acc", type=float, default=0.99)
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--out", help="directory for the draws and artifacts (default: a temporary one)")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    with np.load(a.calib) as z:
        arrays = {k: z[k] for k in z.files}
    total = len(next(iter(arrays.values())))
    scored_from = a.draws * a.rows
    if total - scored_from < a.rows:
        raise SystemExit(f"guarantee: {a.calib} has {total} rows; {a.draws} draws of {a.rows} need at least "
                         f"{scored_from + a.rows} (the unseen rows must be at least one draw)")
    out = a.out or tempfile.mkdtemp(prefix="exitc-guarantee-")
    os.makedirs(out, exist_ok=True)
    unseen_path = os.path.join(out, "unseen.npz")
    np.savez(unseen_path, **{k: v[scored_from:] for k, v in arrays.items()})

    results, orig_pred, unseen = [], None, None
    for d in range(a.draws):
        draw_path = os.path.join(out, f"draw{d}.npz")
        np.savez(draw_path, **{k: v[d * a.rows:(d + 1) * a.rows] for k, v in arrays.items()})
        for seed in seeds:
            art = os.path.join(out, f"draw{d}.seed{seed}.exitc")
            print(f"guarantee: compiling draw {d} (rows {d * a.rows}..{(d + 1) * a.rows}), seed {seed}", flush=True)
            subprocess.run([sys.executable, "-m", "exitc", "compile", a.model, "--calib", draw_path,
                            "--target-acc", str(a.target_acc), "--confidence", str(a.confidence),
                            "--seed", str(seed), "-o", art, "--force", "--quiet"], check=True)
            compiled = load(art)
            man = compiled.manifest
            if unseen is None:
                unseen = load_dataset(unseen_path, input_infos(man))
                reference, _ = prepare(load_model(a.model), output=man["prediction_output"])
                original = make_session(reference, "original model")
                out_name = man["prediction_output"]
                probs = man.get("prediction_kind") == "probabilities"
                orig_pred = predictions(lambda f: original.run(f, [out_name])[0], unseen.feeds, unseen.rows, probs)
            k = compiled.output_names.index(man["prediction_output"])
            got = predictions(lambda f: compiled.run(f)[0][k], unseen.feeds, unseen.rows, probs)
            agree = float((got == orig_pred).mean())
            cal = man["calibration"]
            results.append({"draw": d, "seed": seed, "exits": compiled.num_exits,
                            "bound": cal["agreement_bound"], "agreement_certify": cal["agreement_certify"],
                            "n_certify": cal["n_certify"], "agreement_unseen": agree, "unseen_rows": unseen.rows,
                            "below_target": agree < a.target_acc})
    alpha = 1.0 - a.confidence
    rows = [[r["draw"], r["seed"], r["exits"], f"{r['bound']:.4f}", f"{r['agreement_certify']:.4f}",
             f"{r['agreement_unseen']:.4f} +- {np.sqrt(r['agreement_unseen'] * (1 - r['agreement_unseen']) / r['unseen_rows']):.4f}",
             "BELOW" if r["below_target"] else "ok"] for r in results]
    print(format_table(["draw", "seed", "exits", "bound", "agreement (certify)", f"agreement ({unseen.rows} unseen rows)",
                        f"target {a.target_acc}"], rows))
    failed_draws = len({r["draw"] for r in results if r["below_target"]})
    failed = sum(r["below_target"] for r in results)
    line = f"below target: {failed} of {len(results)} compiles, {failed_draws} of {a.draws} draws"
    if failed_draws:
        line += (f"; P(at least {failed_draws} of {a.draws} draws) at a failure rate of {alpha:g}: "
                 f"{binom.sf(failed_draws - 1, a.draws, alpha):.3f}")
    print(line)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "calib": a.calib, "rows": a.rows, "target_acc": a.target_acc,
                       "confidence": a.confidence, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
