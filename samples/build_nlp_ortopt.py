#!/usr/bin/env python3
"""Build the NLP sample as ONNX Runtime's transformer optimizer leaves it.

The same model and rows as the NLP sample (``build_nlp.py``: all-MiniLM-L6-v2, mean pool, the
sample's own fitted 2-class head), exported the other common way and optimised as `optimum`'s
ORT optimisation does it::

    TorchScript exporter, opset 14, batch open, 128 tokens
      -> onnxruntime.transformers.optimizer (model_type bert, opt_level 1)
      -> EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu (ORT's own ops)

Users who deploy BERT-style classifiers on ONNX Runtime often ship this form; exitc must compile
it as it compiles the plain graph. The head's weights are read from the NLP sample's model.onnx,
so both files compute the same function (checked: max abs diff of the logits on 64 calibration
rows, and the same predictions).

Outputs (in ``--out``, default ``samples/.cache/nlp_ortopt``): ``model.onnx``, and ``calib.npz``
and ``test.npz`` copied from the NLP sample (built first if missing), ``meta.json``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    BuildError, CACHE_DIR, cache_is_fresh, clear_outputs, ort_session, run_main, start_torch, throughput,
    write_json,
)
from build_nlp import EMBED_DIM, INPUT_NAMES, N_CLASSES, build_torch_model  # noqa: E402

BUILDER_VERSION = 1
OPSET = 14
HEADS = 12  # all-MiniLM-L6-v2's attention heads
OUTPUT_FILES = ("model.onnx", "calib.npz", "test.npz", "meta.json")


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=CACHE_DIR / "nlp_ortopt")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    out: Path = args.out
    source = CACHE_DIR / "nlp"
    subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "build_nlp.py")], check=True)
    key = {"builder_version": BUILDER_VERSION, "opset": OPSET, "source_bytes": (source / "model.onnx").stat().st_size}
    if not args.force and cache_is_fresh(out, OUTPUT_FILES, key):
        print(f"nlp_ortopt sample up to date in {out} (use --force to rebuild)")
        return
    t_start = time.perf_counter()
    clear_outputs(out, OUTPUT_FILES)
    out.mkdir(parents=True, exist_ok=True)

    import onnx
    import torch
    from onnx import numpy_helper
    from onnxruntime.transformers.optimizer import optimize_model

    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(source / "model.onnx")).graph.initializer
               if t.name in ("head.weight", "head.bias")}
    if set(weights) != {"head.weight", "head.bias"} or weights["head.weight"].shape != (N_CLASSES, EMBED_DIM):
        raise BuildError(f"{source / 'model.onnx'}: no head.weight [{N_CLASSES}, {EMBED_DIM}] and head.bias")
    start_torch(0)
    _, model, _ = build_torch_model()
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(weights["head.weight"]))
        model.head.bias.copy_(torch.from_numpy(weights["head.bias"]))
    with np.load(source / "calib.npz") as z:
        probe = {k: z[k][:64] for k in INPUT_NAMES}
    plain = out / "torchscript.onnx"
    with torch.no_grad():
        torch.onnx.export(model, tuple(torch.from_numpy(probe[k][:2]) for k in INPUT_NAMES), str(plain),
                          dynamo=False, opset_version=OPSET, input_names=list(INPUT_NAMES), output_names=["logits"],
                          dynamic_axes={k: {0: "batch"} for k in (*INPUT_NAMES, "logits")})
    optimize_model(str(plain), model_type="bert", num_heads=HEADS, hidden_size=EMBED_DIM,
                   opt_level=1).save_model_to_file(str(out / "model.onnx"))
    plain.unlink()
    fused = sorted({n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node if n.domain == "com.microsoft"})
    if "Attention" not in fused:
        raise BuildError(f"the optimizer fused no attention (ORT ops: {fused})")

    sess = ort_session(out / "model.onnx")
    got = sess.run(None, probe)[0]
    want = ort_session(source / "model.onnx").run(None, probe)[0]
    max_diff = float(np.abs(got - want).max())
    if max_diff > 1e-3 or (got.argmax(1) != want.argmax(1)).any():
        raise BuildError(f"the optimised model differs from the NLP sample's (max abs diff {max_diff:.3g})")
    for name in ("calib.npz", "test.npz"):
        shutil.copyfile(source / name, out / name)
    with np.load(source / "test.npz") as z:
        rows_per_s = throughput(sess, {k: z[k] for k in INPUT_NAMES}, batch=32)
    build_s = time.perf_counter() - t_start
    write_json(out / "meta.json", {
        "args": key, "sample": "nlp_ortopt",
        "description": "the NLP sample exported by TorchScript (opset 14) and fused by onnxruntime.transformers",
        "model": {"file": "model.onnx", "opset": OPSET, "bytes": (out / "model.onnx").stat().st_size,
                  "ort_ops": fused},
        "max_abs_diff_vs_nlp": max_diff, "throughput_batch32_rows_per_s": rows_per_s, "build_seconds": build_s,
    })
    print(f"nlp_ortopt sample written to {out} in {build_s:.0f}s (ORT ops {', '.join(fused)}; max abs diff "
          f"{max_diff:.2g} against the NLP sample)")


if __name__ == "__main__":
    run_main(main)
