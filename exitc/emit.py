"""Emission: write the artifact directory (docs/artifact-format.md) atomically.

Everything is written into a staging directory next to the destination and renamed into place
only once the segments, the conditional form, the manifest and the reports exist and the
compiled model has been checked against the original; on any failure the staging directory is
removed, so a failed compile never leaves a half-written output directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import numpy as np
import onnx

from . import __version__
from .data import Dataset, batches
from .errors import ExitcError
from .manifest import FORMAT, MANIFEST, SCHEMA_VERSION, tensor_entry
from .passes.graph import GraphIndex, default_opset
from .passes.split import EXIT_INDEX, build_segments, conditional_model
from .profile import exit_head


def check_destination(out_dir: str, force: bool) -> None:
    if os.path.exists(out_dir) and not force:
        raise ExitcError(f"{out_dir}: output directory already exists (use --force to replace it)")
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise ExitcError(f"{parent}: parent directory of the output does not exist")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_manifest(model, sig, model_path, segments, cond_file, plan, profile, emit_probabilities) -> dict:
    idx = GraphIndex.build(model)
    carried = []
    for seg in segments:
        for name in seg.carry_out:
            if name in idx.infos:
                carried.append(tensor_entry(idx.infos[name]))
            else:  # a head's probabilities, carried to the next exit's chained gate
                carried.append({"name": name, "dtype": "float32", "shape": ["batch", sig.num_classes], "batch_axis": 0})
    seg_entries = []
    for seg in segments:
        entry = {"index": seg.index, "file": f"segments/seg_{seg.index}.onnx", "inputs": seg.inputs,
                 "carry_out": seg.carry_out}
        if seg.head is not None:
            entry["exit"] = {"index": seg.head.index, "logits": seg.head.logits_name, "score": seg.head.score_name,
                             "threshold": seg.head.meta["threshold"], "candidate": seg.head.tensor,
                             "head": seg.head.kind}
        else:
            entry["exit"] = None
            entry["outputs"] = seg.outputs
        seg_entries.append(entry)
    return {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "exitc_version": __version__,
        "source": {"file": os.path.basename(model_path), "path": os.path.abspath(model_path),
                   "sha256": _sha256(model_path), "opset": default_opset(model)},
        "backend": "onnxruntime-cpu",
        "inputs": [tensor_entry(i) for i in sig.inputs],
        "outputs": [tensor_entry(sig.output)],
        "prediction_output": sig.output.name,
        "prediction_kind": "probabilities" if emit_probabilities else "logits",
        "num_classes": sig.num_classes,
        "carried": carried,
        "segments": seg_entries,
        "conditional": {"file": cond_file, "outputs": [sig.output.name, EXIT_INDEX]} if cond_file else None,
        **plan_sections(plan, profile),
    }


def plan_sections(plan, profile) -> dict:
    """The manifest's "calibration" and "profile" sections (shared by every front end)."""
    return {
        "calibration": {
            "target_acc": plan.target, "confidence": plan.confidence, "agreement_bound": plan.agreement_bound,
            "agreement_certify": plan.agreement_certify, "agreement_fit": plan.agreement_fit,
            "n_fit": plan.n_fit, "n_certify": plan.n_certify, "mu": plan.mu, "reason": plan.reason,
            "method": "self-distilled exit heads; Learn-then-Test fixed-sequence testing with an exact binomial "
                      "(Clopper-Pearson) bound on a certification split disjoint from head training",
        },
        "profile": {"batch_size": profile.batch_size if profile else None,
                    "predicted_speedup": plan.predicted_speedup,
                    "predicted_cost_batch_s": plan.predicted_cost_batch,
                    "original_cost_batch_s": plan.original_cost_batch},
    }


def validate_artifact(path: str, model: onnx.ModelProto, data: Dataset, batch_size: int, max_rows: int = 256) -> dict:
    """Run the compiled model (reference runtime) against the original on held-out calibration rows:
    rows that ran to the end must match the original exactly (up to float tolerance)."""
    from .backends import make_session
    from .runtime import load

    compiled = load(path, engine="python")
    original = make_session(model, "original model")
    n = min(max_rows, data.rows)
    warm = {k: v[:batch_size] for k, v in data.feeds.items()}
    original.run(warm)  # first calls pay for allocations; keep them out of the timing
    compiled.run(warm)
    agree = total = 0
    max_diff = 0.0
    t_orig = t_comp = 0.0
    for sl in batches(n, batch_size):
        feeds = {k: v[sl] for k, v in data.feeds.items()}
        t = time.perf_counter()
        ref = original.run(feeds)[0]
        t_orig += time.perf_counter() - t
        t = time.perf_counter()
        outs, exit_index = compiled.run(feeds)
        t_comp += time.perf_counter() - t
        got = outs[0]
        end = exit_index == compiled.num_exits
        if end.any():
            max_diff = max(max_diff, float(np.abs(got[end] - ref[end]).max()))
        agree += int((got.argmax(1) == ref.argmax(1)).sum())
        total += len(ref)
    if max_diff > 1e-3:
        raise RuntimeError(f"internal error: compiled model deviates from the original on full-depth rows ({max_diff})")
    return {"rows": total, "agreement": agree / max(total, 1), "max_abs_diff_full_depth": max_diff,
            "seconds_original": t_orig, "seconds_compiled": t_comp,
            "measured_speedup": t_orig / t_comp if t_comp else None}


def _write_manifest(path: str, manifest: dict) -> None:
    with open(os.path.join(path, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)


def measure_batch1(path: str, data: Dataset, rows: int = 100) -> dict:
    """Mean batch-1 latency of the segmented and the conditional form, interleaved row by row.

    The mean, not the median: the median row usually leaves at the first exit, where both forms
    cost the same, so it hides what the deep rows cost (on the CV sample the conditional form
    had the lower median and a 2x higher mean)."""
    from .runtime import ExitModel

    forms = {"segmented": ExitModel(path, use_conditional=False), "conditional": ExitModel(path)}
    times: dict[str, list[float]] = {k: [] for k in forms}
    n = min(rows, data.rows)
    for i in range(-2, n):  # two warm-up rows
        feeds = {k: v[max(i, 0):max(i, 0) + 1] for k, v in data.feeds.items()}
        for name, m in forms.items():
            t = time.perf_counter()
            m.run(feeds)
            if i >= 0:
                times[name].append(time.perf_counter() - t)
    return {k: float(np.mean(v)) for k, v in times.items()}


def write_artifact(out_dir, model, sig, model_path, candidates, heads, plan, profile, mask_input, elem_types,
                   emit_probabilities, holdout: Dataset, opts, force: bool, report_fn) -> dict:
    parent = os.path.dirname(os.path.abspath(out_dir))
    staging = os.path.join(parent, f".{os.path.basename(os.path.abspath(out_dir))}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        os.makedirs(os.path.join(staging, "segments"))
        exit_heads = [exit_head(heads[c], i, elem_types.get(heads[c].candidate.tensor, onnx.TensorProto.FLOAT),
                                mask_input, emit_probabilities, threshold=plan.thresholds[i])
                      for i, c in enumerate(plan.exits)]
        for i, (w, b) in enumerate(plan.gates):  # chained gates: exit i reads exit i-1's probabilities
            exit_heads[i].gate_w, exit_heads[i].gate_b = w, b
            if i > 0 and w.size > 3:
                exit_heads[i].prev_probs = exit_heads[i - 1].probs_name
                exit_heads[i - 1].export_probs = True
        cuts = [heads[c].candidate for c in plan.exits]
        segments = build_segments(model, cuts, exit_heads, mask_input)
        for seg in segments:
            onnx.save(seg.model, os.path.join(staging, "segments", f"seg_{seg.index}.onnx"))
        cond_file = None
        if exit_heads:
            cond = conditional_model(segments, model)
            onnx.checker.check_model(cond)
            cond_file = "conditional.onnx"
            onnx.save(cond, os.path.join(staging, cond_file))
        manifest = build_manifest(model, sig, model_path, segments, cond_file, plan, profile, emit_probabilities)
        _write_manifest(staging, manifest)
        if cond_file:  # measuring loads the artifact, hence the manifest written before and after
            batch1 = measure_batch1(staging, holdout)
            manifest["profile"]["batch1_latency_s"] = batch1
            if batch1["conditional"] >= batch1["segmented"]:
                # Measured, not assumed: ORT optimises If-subgraphs less, which can make the
                # single-graph form the slower one. Its CPU layout transformer (NCHWc) does not
                # reach into branches: the CV sample's Lite0 runs 2.6x slower inside an If
                # (2.3 ms at ORT_ENABLE_ALL vs 6.0 ms without the layout pass, batch 1); nor does
                # attention fusion.
                os.remove(os.path.join(staging, cond_file))
                manifest["conditional"] = None
            _write_manifest(staging, manifest)
        validation = validate_artifact(staging, model, holdout, opts.batch_size)
        report_fn(staging, manifest, plan, candidates, heads, profile, validation, opts)
        if os.path.exists(out_dir):
            if not force:
                raise ExitcError(f"{out_dir}: output directory already exists (use --force to replace it)")
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
        return validation
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
