"""Zoo models made here, through exporters other than PyTorch.

`sklearn_mlp`: a scikit-learn MLPClassifier trained on real Fashion-MNIST photos and exported
by skl2onnx (its own graph conventions: MatMul/Add/Relu chains, a `label` plus a
`probabilities` output, ai.onnx.ml opset). `convert_opset`: a zoo model moved to another opset
with onnx.version_converter, to cover the ends of the opset range exitc must read.
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
