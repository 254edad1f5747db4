"""Compile one zoo model with the `exitc` CLI and judge the result (shared by the test and bench).

The outcome is one of
  * "compiled": an artifact whose full-depth rows (exit index == number of exits) equal the
    original's outputs (every output, max abs diff within TOLERANCE; for a model that computes
    in float16, within exitc.verify.REDUCED_ULPS of its epsilon at the outputs' scale) on both
    runtimes; an output
    the manifest lists in `dropped_outputs` may be missing, any other may not;
  * "refused": exitc stopped with exit status 2 and exactly one line on stderr, no output left;
  * "failed": anything else (a traceback, an internal error, several lines, a partial output
    directory, an artifact whose full-depth rows differ); `detail` says which.
The CLI runs as a subprocess so that a crash shows as what a user would see.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
EXITC = os.environ.get("EXITC_CLI", str(ROOT / ".venv" / "bin" / "exitc"))
TOLERANCE = 1e-4


@dataclass
class Outcome:
    kind: str                   # "compiled", "refused", "failed"
    detail: str                 # the one-line reason, or what went wrong
    seconds: float = 0.0        # compile wall time
    stderr: str = ""
    diffs: dict = field(default_factory=dict)  # engine -> max abs diff on full-depth rows
    full_rows: int = 0          # test rows that ran the whole model
    agreement: float | None = None  # top-1 agreement with the original on the test rows
    exits: int = 0
    dropped: list = field(default_factory=list)  # original outputs the artifact declares it drops


def compile_cli(model: Path, calib: Path, out: Path, target: float, extra: list[str] = (),
                timeout: float = 900) -> tuple[int, str, float]:
    """(exit status, stderr, seconds) of `exitc compile`."""
    cmd = [EXITC, "compile", str(model), "--calib", str(calib), "--target-acc", str(target),
           "-o", str(out), "--quiet", *extra]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:.0f} s", time.perf_counter() - t0
    return res.returncode, res.stderr, time.perf_counter() - t0


def original_outputs(model: Path, feeds: dict, batch: int = 16) -> tuple[list[str], list[np.ndarray]]:
    """The original model's outputs, in batches of `batch` rows, or of one row where the graph
    fixes its batch dimension to 1."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    if any(i.shape and i.shape[0] == 1 for i in sess.get_inputs()):
        batch = 1
    rows = len(next(iter(feeds.values())))
    parts = [sess.run(names, {k: v[i:i + batch] for k, v in feeds.items()}) for i in range(0, rows, batch)]
    return names, [np.concatenate([p[j] for p in parts]) for j in range(len(names))]


def full_depth_diff(artifact: Path, feeds: dict, names: list[str], expected: list[np.ndarray],
                    engine: str, pred_name: str) -> tuple[float, int, float]:
    """(max abs diff over full-depth rows and every output, full-depth rows, agreement)."""
    import exitc

    model = exitc.load(str(artifact), engine=engine)
    outs, exit_index = model.run(feeds)
    by_name = dict(zip(model.output_names, outs))
    full = exit_index == model.num_exits
    diff = 0.0
    for name, want in zip(names, expected):
        got = by_name[name]
        if got.shape != want.shape:
            raise AssertionError(f"{engine}: output {name} has shape {got.shape}, original {want.shape}")
        if full.any():
            diff = max(diff, float(np.max(np.abs(got[full].astype(np.float64) - want[full].astype(np.float64)))))
    from exitc.predictions import predicted_classes

    probs = model.manifest.get("prediction_kind") == "probabilities"
    pred = predicted_classes(by_name[pred_name].reshape(len(full), -1), probs)
    ref = predicted_classes(expected[names.index(pred_name)].reshape(len(full), -1), probs)
    return diff, int(full.sum()), float((pred == ref).mean())


def forced_full_depth(artifact: Path, dest: Path) -> Path:
    """A copy of the artifact whose exits never fire (thresholds 1e30, no conditional form): every
    row then runs the whole segment chain, so every test row checks full-depth exactness even
    when the real thresholds let all of them exit early."""
    import json

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(artifact, dest, ignore=shutil.ignore_patterns("plots", "report.*", "conditional.onnx"))
    manifest = json.loads((dest / "manifest.json").read_text())
    for seg in manifest["segments"]:
        if seg.get("exit"):
            seg["exit"]["threshold"] = 1e30
    manifest["conditional"] = None
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dest


def judge(model: Path, calib: Path, test: Path, out: Path, target: float, extra: list[str] = (),
          timeout: float = 900) -> Outcome:
    if out.exists():
        shutil.rmtree(out)
    rc, stderr, seconds = compile_cli(model, calib, out, target, extra, timeout)
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    if rc != 0:
        if rc == -1:
            return Outcome("failed", stderr, seconds, stderr)
        if "Traceback" in stderr or len(lines) != 1:
            return Outcome("failed", f"exit {rc} with {len(lines)} stderr lines: {lines[-1] if lines else ''}",
                           seconds, stderr)
        if out.exists():
            return Outcome("failed", f"exit {rc} but left {out.name} behind: {lines[0]}", seconds, stderr)
        if "internal error" in lines[0] or rc != 2:
            return Outcome("failed", f"exit {rc}: {lines[0]}", seconds, stderr)
        if "exitc_" in lines[0]:  # names a tensor of exitc's own derived graphs: exitc's bug, not the model's
            return Outcome("failed", f"exit {rc}, a reason about exitc's own graphs: {lines[0]}", seconds, stderr)
        return Outcome("refused", lines[0], seconds, stderr)
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    with np.load(test) as z:
        feeds = {k: z[k] for k in z.files}
    names, expected = original_outputs(model, feeds)
    result = Outcome("compiled", "", seconds, stderr, exits=len(manifest["segments"]) - 1)
    problems = []
    declared = [o["name"] for o in manifest["outputs"]]
    dropped = list(manifest.get("dropped_outputs", []))  # documented: the artifact says it lacks them
    if declared != [n for n in names if n not in dropped]:
        problems.append(f"the artifact's outputs {declared} are not the original's {names}"
                        + (f" less dropped_outputs {dropped}" if dropped else ""))
    result.dropped = [n for n in names if n not in declared]
    names, expected = ([n for n in names if n in declared], [e for n, e in zip(names, expected) if n in declared])
    forced = forced_full_depth(out, out.with_name(out.name + ".full-depth"))
    for engine in ("python", "cpp"):
        try:
            diff, full, agree = full_depth_diff(out, feeds, names, expected, engine, manifest["prediction_output"])
            forced_diff, _, _ = full_depth_diff(forced, feeds, names, expected, engine, manifest["prediction_output"])
        except Exception as exc:  # the runtime could not run the artifact: that is the finding
            problems.append(f"{engine} runtime: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        result.diffs[engine], result.full_rows, result.agreement = max(diff, forced_diff), full, agree
    shutil.rmtree(forced, ignore_errors=True)
    tolerance = allowed_diff(model, expected)
    for engine, d in result.diffs.items():
        if d > tolerance:
            problems.append(f"{engine} runtime: full-depth rows differ by {d:.3g} (> {tolerance:.3g})")
    if problems:
        result.kind, result.detail = "failed", "; ".join(problems)
    return result


def allowed_diff(model: Path, expected: list[np.ndarray]) -> float:
    """TOLERANCE, or for a model that computes in float16/bfloat16 what exitc's verify allows
    (full-depth rows rounded where a segment ends: REDUCED_ULPS of the type's epsilon)."""
    import onnx

    from exitc.verify import REDUCED_ULPS, reduced_precision_eps

    eps = reduced_precision_eps(onnx.load(str(model), load_external_data=False))
    scale = max((float(np.abs(e).max()) for e in expected if e.size), default=0.0)
    return TOLERANCE + REDUCED_ULPS * eps * scale


def verdict(model_is_classifier: bool, outcome: Outcome, refusal: str = "") -> tuple[bool, str]:
    """(acceptable, why). A plain [batch, classes] classifier must compile; a model that is not
    one (detector, time-major output) may be refused with one line, or compiled exactly; one
    exitc refuses by design (`refusal`, e.g. batch-dependent outputs) may be refused with a
    line containing that reason."""
    if outcome.kind == "failed":
        return False, outcome.detail
    if outcome.kind == "refused" and refusal:
        return (refusal in outcome.detail), outcome.detail
    if outcome.kind == "refused" and model_is_classifier:
        return False, f"refused a batch-major classifier: {outcome.detail}"
    if outcome.kind == "refused":
        return True, outcome.detail
    return True, (f"{outcome.exits} exits, full-depth max diff "
                  + ", ".join(f"{e} {d:.2g}" for e, d in outcome.diffs.items())
                  + (f"; drops outputs {outcome.dropped} (declared)" if outcome.dropped else ""))
