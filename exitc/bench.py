"""`exitc bench`: the original and the compiled model side by side, in one process.

Both run with identically configured ONNX Runtime sessions on data the compiler never saw. Runs
are interleaved chunk by chunk (original on 8 batches, compiled on the same 8, next 8, ...) so
that drift of a noisy machine hits both alike; each round's ratio is total original time over total
compiled time, and the median over rounds is reported. (Interleaving whole passes over the data
let one run of the same artifact read 1.96x, 2.28x and 2.08x on this 2-core VM.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .backends import make_session
from .data import file_layout, load_dataset
from .errors import ExitcError
from .manifest import input_batch_axes, input_infos
from .measure import batch1_latencies, run_all, run_interleaved
from .passes.graph import GraphIndex
from .passes.normalize import load_model, original_input_layout, prepare
from .report import format_table
from .runtime import load
from .predictions import predicted_classes


@dataclass
class BenchOptions:
    batch_size: int = 32
    rounds: int = 3
    latency_rows: int = 300
    engine: str = "auto"
    progress: bool = True

    def validate(self) -> None:
        for flag, value in (("--batch-size", self.batch_size), ("--rounds", self.rounds),
                            ("--latency-rows", self.latency_rows)):
            if value < 1:
                raise ExitcError(f"{flag} {value}: must be at least 1")


def original_path(artifact: str, manifest: dict, given: str | None) -> str:
    path = given or manifest["source"].get("path")
    if not path or not os.path.isfile(path):
        raise ExitcError(f"{artifact}: original model not found at {path!r}; pass --original MODEL.onnx")
    return path


def check_original(path: str, model, manifest: dict) -> None:
    """The original must take the compiled model's inputs: a different model (another --original)
    is a one-line error naming both sides, not an ONNX Runtime failure mid-run."""
    theirs = sorted(GraphIndex.build(model).graph_inputs)
    ours = sorted(i["name"] for i in manifest["inputs"])
    if theirs != ours:
        raise ExitcError(f"{path}: takes inputs {', '.join(theirs) or 'none'}, the compiled model takes "
                         f"{', '.join(ours)}: not the model it was compiled from")


def bench(artifact: str, data_path: str, opts: BenchOptions, original: str | None = None, log=print) -> dict:
    opts.validate()
    compiled = load(artifact, engine=opts.engine)
    manifest = compiled.manifest
    # The original as it is (prepare only names dims and makes the batch symbolic): no shapes
    # observed on made-up rows, which ORT would trust (a free dim recorded as 1 changed results).
    path = original_path(artifact, manifest, original)
    raw = load_model(path)
    check_original(path, raw, manifest)
    # Both are fed as users hold the inputs (rows on the manifest's batch_axis); the data is
    # sliced rows first.
    axes = input_batch_axes(manifest)
    model, _ = prepare(raw, output=manifest["prediction_output"])
    orig = make_session(original_input_layout(model, axes), "original model")
    data = load_dataset(data_path, input_infos(manifest), batch_axes=axes)
    n, b = data.rows, opts.batch_size
    feeds = data.feeds

    def run_orig(f):
        return orig.run(file_layout(f, axes))[0]

    def run_comp(f):
        outs, idx = compiled.run(file_layout(f, axes))
        return outs[0], idx

    # Warm-up both (session creation, allocator growth).
    run_all(run_orig, feeds, min(n, 2 * b), b)
    run_all(run_comp, feeds, min(n, 2 * b), b)
    t_orig, t_comp, ratios = [], [], []
    ref = got = None
    for r in tqdm(range(opts.rounds), desc=f"bench batch {b}", unit="round", disable=not opts.progress, leave=False):
        (to, tc), (o, c) = run_interleaved([run_orig, run_comp], feeds, n, b)
        t_orig.append(to)
        t_comp.append(tc)
        ratios.append(to / tc)
        if r == 0:
            ref = np.concatenate(o)
            got = np.concatenate([x[0] for x in c])
            exit_index = np.concatenate([x[1] for x in c])
    rows = min(opts.latency_rows, n)
    with tqdm(total=rows, desc="bench batch 1", unit="row", disable=not opts.progress, leave=False) as bar:
        lat_o, lat_c = batch1_latencies([run_orig, run_comp], feeds, rows, progress=bar)
    probabilities = manifest.get("prediction_kind") == "probabilities"
    pred_o, pred_c = predicted_classes(ref, probabilities), predicted_classes(got, probabilities)
    k = compiled.num_exits
    result = {
        "artifact": artifact, "data": data_path, "rows": n, "batch_size": b, "rounds": opts.rounds,
        "engine": type(compiled).__name__,
        "agreement": float((pred_o == pred_c).mean()),
        "agreement_bound": manifest["calibration"].get("agreement_bound"),
        "target_acc": manifest["calibration"].get("target_acc"),
        "exit_fractions": [float((exit_index == e).mean()) for e in range(k + 1)],
        "throughput_original": n / float(np.median(t_orig)),
        "throughput_exitc": n / float(np.median(t_comp)),
        "speedup_throughput": float(np.median(ratios)),
        "latency_rows": rows,
        "latency_p50_ms_original": float(np.percentile(lat_o, 50) * 1e3),
        "latency_p99_ms_original": float(np.percentile(lat_o, 99) * 1e3),
        "latency_p50_ms_exitc": float(np.percentile(lat_c, 50) * 1e3),
        "latency_p99_ms_exitc": float(np.percentile(lat_c, 99) * 1e3),
        # With fewer than half the rows exiting, p50 is a full-depth row; the mean shows the gain.
        "latency_mean_ms_original": float(np.mean(lat_o) * 1e3),
        "latency_mean_ms_exitc": float(np.mean(lat_c) * 1e3),
    }
    result["speedup_latency_p50"] = result["latency_p50_ms_original"] / result["latency_p50_ms_exitc"]
    if data.labels is not None:
        result["accuracy_original"] = float((pred_o == data.labels).mean())
        result["accuracy_exitc"] = float((pred_c == data.labels).mean())
    log(format_table(["metric", "original", "exitc", "ratio"], bench_rows(result)))
    return result


def bench_rows(r: dict) -> list[list]:
    rows = [
        [f"throughput (rows/s, batch {r['batch_size']})", f"{r['throughput_original']:.1f}", f"{r['throughput_exitc']:.1f}",
         f"{r['speedup_throughput']:.2f}x"],
        ["latency p50 (ms, batch 1)", f"{r['latency_p50_ms_original']:.2f}", f"{r['latency_p50_ms_exitc']:.2f}",
         f"{r['speedup_latency_p50']:.2f}x"],
        ["latency p99 (ms, batch 1)", f"{r['latency_p99_ms_original']:.2f}", f"{r['latency_p99_ms_exitc']:.2f}", ""],
        ["latency mean (ms, batch 1)", f"{r['latency_mean_ms_original']:.2f}", f"{r['latency_mean_ms_exitc']:.2f}",
         f"{r['latency_mean_ms_original'] / r['latency_mean_ms_exitc']:.2f}x"],
        ["agreement with original", "1.0000", f"{r['agreement']:.4f}", f"bound {r['agreement_bound']:.4f}"],
    ]
    if "accuracy_original" in r:
        rows.append(["accuracy (labels)", f"{r['accuracy_original']:.4f}", f"{r['accuracy_exitc']:.4f}", ""])
    rows.append(["exit fractions", "", " ".join(f"{f:.2f}" for f in r["exit_fractions"]), ""])
    return rows
