"""Zoo models made here, through exporters other than PyTorch.

`sklearn_mlp`: a scikit-learn MLPClassifier trained on real Fashion-MNIST photos and exported
by skl2onnx (its own graph conventions: MatMul/Add/Relu chains, a `label` plus a
`probabilities` output, ai.onnx.ml opset). `convert_opset`: a zoo model moved to another opset
with onnx.version_converter, to cover the ends of the opset range exitc must read. `quantize`:
a zoo model quantized to 8 bits by onnxruntime.quantization, as users quantize for CPUs.
`to_float16`: a zoo model converted to float16 by onnxruntime.transformers' converter.
"""

from __future__ import annotations

from pathlib import Path

from . import inputs
from .cache import open_atomic


def sklearn_mlp(dest: Path, rows: int = 6000, opset: int = 21) -> None:
    import onnx
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier


    x, y = inputs.fashion_train(rows)
    x = (x.reshape(len(x), -1) / 255.0).astype("float32")
    clf = MLPClassifier(hidden_layer_sizes=(256, 128, 64), max_iter=25, random_state=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a short fit is all the zoo needs
        clf.fit(x, y)
    model = to_onnx(clf, x[:1], target_opset={"": opset, "ai.onnx.ml": 3},
                    options={id(clf): {"zipmap": False}})
    model.producer_name = "skl2onnx"
    onnx.checker.check_model(model)
    with open_atomic(dest) as f:
        f.write(model.SerializeToString())


def convert_opset(src: Path, opset: int, dest: Path) -> None:
    import onnx
    from onnx import version_converter


    model = onnx.load(str(src))
    converted = version_converter.convert_version(model, opset)
    onnx.checker.check_model(converted)
    with open_atomic(dest) as f:
        f.write(converted.SerializeToString())


QUANTIZE_CALIB_ROWS = 64  # rows of the base model's own input generator (seed 7) for static calibration


def quantize(src: Path, mode: str, calib_rows, input_name: str, dest: Path) -> None:
    """`src` quantized to int8 weights / uint8 activations: "qdq" or "qoperator" static
    (per-channel weights, min-max calibration on `calib_rows`), or "dynamic"."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Rows(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: calib_rows[i:i + 16]} for i in range(0, len(calib_rows), 16)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "quantized.onnx"
        opset = next((o.version for o in onnx.load(str(src)).opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset < 13:  # per-channel DequantizeLinear needs opset 13; the quantizer would write it anyway
            up = Path(tmp) / "opset13.onnx"
            convert_opset(src, 13, up)
            src = up
        # ORT's docs ask for its pre-processing (shape inference, BN folding); its symbolic shape
        # inference asserts on some Paddle graphs, so ONNX's own shape inference is used
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        if mode == "dynamic":
            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8)
        else:
            fmt = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}[mode]
            quantize_static(str(pre), str(out), Rows(), quant_format=fmt, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        model = onnx.load(str(out))
        onnx.checker.check_model(model)
        with open_atomic(dest) as f:
            f.write(model.SerializeToString())


def to_float16(src: Path, dest: Path) -> None:
    """`src` in float16 with float32 inputs and outputs, written as the converter leaves it
    (nodes out of topological order: the ONNX checker rejects the file, ONNX Runtime runs it)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    with open_atomic(dest) as f:
        f.write(model.SerializeToString())
