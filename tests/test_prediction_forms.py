"""Prediction outputs in the forms classifiers come in, end to end on both runtimes: the
artifact answers every row, exited or not, in the original's form and shape.

* log-probabilities (a LogSoftmax at the end, as PyTorch models trained with nll_loss have):
  manifest prediction_kind "log_probabilities", and exit heads answer log-probabilities. Before,
  exited rows answered the head's raw logits (values up to +9 on the CV sample), so exp() of an
  early row was no distribution.
* classes with axes of size 1 around them ([batch, classes, 1, 1], as SqueezeNet and Caffe2's
  DenseNet end; [batch, 1, classes]): exit heads answer in that shape. Before, such models were
  refused ("no batch-major classification output")."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from exitc.driver import CompileOptions, compile_model
from exitc.predictions import LOG_PROBABILITIES, LOGITS
from exitc.runtime import ExitModel

from synthetic import compile_on_noise, tiny_cnn

CLASSES = 3
FORMS = {  # name: (last node, output shape, prediction kind)
    "log_softmax": (helper.make_node("LogSoftmax", ["logits"], ["out"], axis=1, name="log_softmax"),
                    ["N", CLASSES], LOG_PROBABILITIES),
    "classes_1_1": (helper.make_node("Unsqueeze", ["logits", "axes_23"], ["out"], name="unsqueeze"),
                    ["N", CLASSES, 1, 1], LOGITS),
    "1_classes": (helper.make_node("Unsqueeze", ["logits", "axes_1"], ["out"], name="unsqueeze"),
                  ["N", 1, CLASSES], LOGITS),
}


def classifier(form: str) -> onnx.ModelProto:
    node, shape, _ = FORMS[form]
    m = tiny_cnn(classes=CLASSES, seed=1)
    m.graph.initializer.extend([helper.make_tensor("axes_23", TensorProto.INT64, [2], [2, 3]),
                                helper.make_tensor("axes_1", TensorProto.INT64, [1], [1])])
    m.graph.node.append(node)
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("out", TensorProto.FLOAT, shape))
    onnx.checker.check_model(m)
    return m


@pytest.fixture(scope="module", params=list(FORMS))
def compiled(request, tmp_path_factory):
    form = request.param
    tmp = tmp_path_factory.mktemp(form)
    path, res, x, ref = compile_on_noise(classifier(form), tmp)
    return form, path, res, x, ref


def engines(path: str, full_depth: bool = False):
    """(engine, model) for each runtime built here; with `full_depth`, no row exits."""
    yield "python", ExitModel(path, full_depth=full_depth)
    try:
        from exitc.cpp_runtime import CppExitModel
    except ImportError:
        return  # libexitc not built: tests/test_cpp_runtime.py says so
    yield "cpp", CppExitModel(path, full_depth=full_depth)


def test_every_row_answers_in_the_originals_form_and_shape(compiled):
    form, path, res, x, ref = compiled
    _, shape, kind = FORMS[form]
    assert res.manifest["prediction_kind"] == kind and res.manifest["num_classes"] == CLASSES
    assert res.manifest["outputs"][0]["shape"][1:] == shape[1:]
    assert res.plan.exits, "the synthetic CNN has an exit worth taking at 0.9"
    # Full depth through the runtimes' full-depth mode as well: on noise rows at 0.9 the plan may
    # send every held-out row out early (seen: all 300 rows of the [N, 1, classes] form, in a
    # plan priced on a busy machine), and full-depth rows must still answer in the form.
    for (engine, model), (_, deep) in zip(engines(path), engines(path, full_depth=True)):
        outs, idx = model.run({"x": x})
        early = idx < model.num_exits
        assert early.any(), engine
        assert outs[0].shape == ref.shape, engine
        out = outs[0].reshape(len(x), -1).astype(np.float64)
        if kind == LOG_PROBABILITIES:
            assert (out[early] <= 1e-6).all()
            np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0, rtol=1e-5)  # every row, exited or not
        np.testing.assert_allclose(outs[0][~early], ref[~early], rtol=1e-5, atol=1e-5)  # full depth: the original's
        (full,), full_idx = deep.run({"x": x})
        assert full.shape == ref.shape and (full_idx == deep.num_exits).all(), engine
        np.testing.assert_allclose(full, ref, rtol=1e-5, atol=1e-5)
        assert (out.argmax(1) == ref.reshape(len(x), -1).argmax(1)).mean() > 0.85
        for r in [int(np.flatnonzero(early)[0])] + [int(i) for i in np.flatnonzero(~early)[:1]]:  # batch 1
            one, one_idx = model.run({"x": x[r:r + 1]})
            assert one[0].shape == ref[r:r + 1].shape and one_idx[0] == idx[r], engine
            np.testing.assert_allclose(one[0], outs[0][r:r + 1], rtol=1e-4, atol=1e-5)


def test_an_artifact_without_exits_states_the_kind_too(tmp_path):
    # No exit (here --target-acc 1.0; also a model with no candidate): the distillation stages do
    # not run, so the kind is read from a few rows. Before, such compiles failed in emit.
    model = classifier("log_softmax")
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).standard_normal((200, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    res = compile_model(str(tmp_path / "m.onnx"), str(tmp_path / "calib.npz"), str(tmp_path / "m.exitc"),
                        CompileOptions(target_acc=1.0, progress=False), log=lambda *a: None)
    assert not res.plan.exits and res.manifest["prediction_kind"] == LOG_PROBABILITIES
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    for engine, m in engines(str(tmp_path / "m.exitc")):
        np.testing.assert_allclose(m.run({"x": x})[0][0], ref, rtol=1e-5, atol=1e-6, err_msg=engine)
