"""Emission: write the artifact directory (docs/artifact-format.md) atomically.

Everything is written into a staging directory next to the destination (:func:`stage`)
and renamed into place (:func:`commit`) only once the segments, the conditional form, the
manifest and the reports exist and the compiled model has been checked against the original
(exitc.verify); on any failure the driver removes the staging directory (:func:`discard`), so a
failed compile never leaves a half-written output directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx

from . import __version__
from .errors import ExitcError
from .manifest import FORMAT, MANIFEST, SCHEMA_VERSION, input_batch_axes, input_entry, tensor_entry
from .passes.graph import GraphIndex, default_opset
from .passes.heads import ExitHead
from .passes.normalize import check_model, original_input_layout
from .passes.sequence import DEFAULT_CALL_ROWS, SequenceAxis
from .passes.split import EXIT_INDEX, build_segments, conditional_model, original_form
from .predictions import KINDS

if TYPE_CHECKING:  # emission only reads these; importing them would pull in the profiler's backends
    from .distill import FittedHead
    from .passes.normalize import Signature
    from .policy import Plan
    from .profile import Profile


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


def build_manifest(model, sig, model_path, segments, cond_file, plan, profile, prediction_kind: str,
                   source: dict | None = None) -> dict:
    if prediction_kind not in KINDS:
        raise ValueError(f"prediction_kind {prediction_kind!r}: one of {KINDS}")
    idx = GraphIndex.build(model)
    carried = []
    for seg in segments:
        for name in seg.carry_out:
            if name in idx.infos:
                carried.append(tensor_entry(idx.infos[name]))
            else:  # a head's probabilities, carried to the next exit's chained gate
                classes = 2 if sig.binary else sig.num_classes  # a binary original's heads learn two classes
                carried.append({"name": name, "dtype": "float32", "shape": ["batch", classes], "batch_axis": 0})
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
                   "sha256": _sha256(model_path), "opset": default_opset(model), **(source or {})},
        "backend": "onnxruntime-cpu",
        "inputs": [input_entry(i, sig.batch_axes.get(i.name, 0)) for i in sig.inputs],
        "outputs": [tensor_entry(sig.output)],
        "prediction_output": sig.output.name,
        "dropped_outputs": list(sig.dropped_outputs),
        "prediction_kind": prediction_kind,
        "num_classes": sig.num_classes,
        "carried": carried,
        "segments": seg_entries,
        "conditional": {"file": cond_file, "outputs": [sig.output.name, EXIT_INDEX]} if cond_file else None,
        **plan_sections(plan, profile),
    }


def sequence_section(axis, profile) -> dict | None:
    """The manifest's "sequence" section (docs/artifact-format.md): the padded token inputs and
    what a call costs in rows (profile.Profile.call_rows), from which runtimes split a batch by
    length (exitc.passes.sequence.length_chunks)."""
    if axis is None:
        return None
    return {**axis.to_manifest(), "call_rows": profile.call_rows() if profile is not None else DEFAULT_CALL_ROWS}


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


def _write_manifest(path: str, manifest: dict) -> None:
    with open(os.path.join(path, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)


@dataclass
class ArtifactSpec:
    """What an artifact is written from: the compiled model's parts and the plan that chose them."""

    model: onnx.ModelProto          # the prepared model the segments are cut from (observed shapes)
    sig: "Signature"
    model_path: str                 # the user's model file (name and sha256 go into the manifest)
    heads: "list[FittedHead]"       # one per candidate; plan.exits index into it
    plan: "Plan"
    profile: "Profile | None"
    mask_input: str | None
    elem_types: dict[str, int]      # ONNX dtype of each candidate tensor (FLOAT where missing)
    prediction_kind: str            # what the original's prediction output holds; heads answer in it
    original: onnx.ModelProto | None = None  # the batch-1 form "original" (default: model)
    source: dict | None = None       # entries that replace the manifest's "source" section (a front end's)
    sequence: SequenceAxis | None = None  # token inputs whose padding runtimes may drop

    def exit_heads(self) -> list[ExitHead]:
        """The plan's exit heads (:func:`plan_exit_heads`)."""
        return plan_exit_heads(self.plan, self.heads, self.elem_types, self.mask_input, self.prediction_kind,
                               binary=self.sig.binary, class_dims=self.sig.class_dims)


def plan_exit_heads(plan: "Plan", heads: "list[FittedHead]", elem_types: dict[str, int], mask_input: str | None,
                    prediction_kind: str, binary: bool = False,
                    class_dims: tuple[int, ...] | None = None) -> list[ExitHead]:
    """The plan's exits as ExitHeads (passes.heads), in order, each with its threshold and the
    plan's gate: what the artifact fuses into its segments and what every runtime of it computes.
    Where the plan has chained gates (plan.gates), exit i reads exit i-1's probabilities, which
    exit i-1 then exports. `binary`: the original answers one score per row (ExitHead.binary);
    `class_dims`: the shape of its answer where it is not [classes] (ExitHead.class_dims)."""
    exit_heads = [heads[c].exit_head(i, elem_types.get(heads[c].candidate.tensor, onnx.TensorProto.FLOAT),
                                     mask_input, prediction_kind, threshold=plan.thresholds[i], binary=binary,
                                     class_dims=class_dims)
                  for i, c in enumerate(plan.exits)]
    for i, (w, b) in enumerate(plan.gates):
        exit_heads[i].gate_w, exit_heads[i].gate_b = w, b
        if i > 0 and w.size > 3:
            exit_heads[i].prev_probs = exit_heads[i - 1].probs_name
            exit_heads[i - 1].export_probs = True
    return exit_heads


def stage(out_dir: str, spec: ArtifactSpec) -> tuple[str, dict]:
    """Write segments, the conditional form (where there are exits) and the manifest into a new
    staging directory beside `out_dir`: (staging path, manifest). Nothing is measured here and
    nothing is left behind on failure; :func:`commit` puts it in place, :func:`discard` removes it."""
    staging = staging_dir(out_dir)
    try:
        os.makedirs(os.path.join(staging, "segments"))
        exit_heads = spec.exit_heads()
        cuts = [spec.heads[c].candidate for c in spec.plan.exits]
        segments = build_segments(spec.model, cuts, exit_heads, spec.mask_input)
        for seg in segments:
            onnx.save(original_input_layout(seg.model, spec.sig.batch_axes),
                      os.path.join(staging, "segments", f"seg_{seg.index}.onnx"))
        manifest = build_manifest(spec.model, spec.sig, spec.model_path, segments, None, spec.plan, spec.profile,
                                  spec.prediction_kind, spec.source)
        manifest["sequence"] = sequence_section(spec.sequence, spec.profile)
        if exit_heads:
            write_batch1_form(staging, manifest, spec.plan.batch1,
                              spec.model if spec.original is None else spec.original, segments)
        _write_manifest(staging, manifest)
        return staging, manifest
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_batch1_form(staging: str, manifest: dict, batch1: str, model, segments=None) -> None:
    """conditional.onnx, the artifact's batch-1 form (exitc.policy.batch1_forms): the single graph
    with If nodes over the segments (`batch1` "exits"), or the original model itself: for
    "original" every batch-1 request runs it, for "first_exit" the requests that segment 0's exit
    does not take (the manifest's `after_first_exit`). For the original, `model` should be the
    prepared model without observed shapes (driver.load_stage's reference): on the NLP samples the
    copy with observed value_infos ran 6-8% slower in ORT."""
    if batch1 in ("original", "first_exit"):
        cond, form = original_form(model, len(manifest["segments"]) - 1), "original"
    else:
        cond, form = conditional_model(segments, model), "if"
    cond = original_input_layout(cond, input_batch_axes(manifest))
    check_model(cond)
    onnx.save(cond, os.path.join(staging, COND_FILE))
    manifest["conditional"] = {"file": COND_FILE, "form": form,
                               "outputs": [manifest["prediction_output"], EXIT_INDEX]}
    if batch1 == "first_exit":
        manifest["conditional"]["after_first_exit"] = True
    _write_manifest(staging, manifest)


COND_FILE = "conditional.onnx"


def drop_conditional(staging: str, manifest: dict) -> None:
    """Remove the conditional form (measured slower at batch 1 than the segments: ORT optimises
    If-subgraphs less; its CPU layout transformer (NCHWc) does not reach into branches, which made
    the CV sample's Lite0 2.6x slower inside an If, nor does attention fusion)."""
    if manifest.get("conditional"):
        os.remove(os.path.join(staging, manifest["conditional"]["file"]))
        manifest["conditional"] = None
        _write_manifest(staging, manifest)


def update_manifest(staging: str, manifest: dict) -> None:
    _write_manifest(staging, manifest)


def staging_dir(out_dir: str) -> str:
    """The staging directory beside `out_dir` (same filesystem, so :func:`commit` is a rename),
    emptied of any leftover from an earlier run of this process id; not created."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    staging = os.path.join(parent, f".{os.path.basename(os.path.abspath(out_dir))}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def commit(staging: str, out_dir: str, force: bool) -> None:
    """Rename the staged artifact into place (replacing `out_dir` only with `force`)."""
    if os.path.exists(out_dir):
        if not force:
            raise ExitcError(f"{out_dir}: output directory already exists (use --force to replace it)")
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)


def discard(staging: str | None) -> None:
    if staging:
        shutil.rmtree(staging, ignore_errors=True)
