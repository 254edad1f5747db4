"""Classifiers that output log-probabilities (a LogSoftmax at the end, as PyTorch models trained
with nll_loss have), end to end: the artifact says so (prediction_kind "log_probabilities") and
an exited row answers a log-probability too, on every runtime. Before, exited rows answered the
head's raw logits (values up to +9 on the CV sample), so exp() of an early row was no
distribution."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import exitc
from exitc.driver import CompileOptions, compile_model
from exitc.predictions import LOG_PROBABILITIES

from synthetic import tiny_cnn


def log_softmax_cnn() -> onnx.ModelProto:
    m = tiny_cnn(classes=3, seed=1)
    m.graph.node.append(helper.make_node("LogSoftmax", ["logits"], ["logp"], axis=1, name="log_softmax"))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("logp", TensorProto.FLOAT, ["N", 3]))
    onnx.checker.check_model(m)
    return m


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("logp")
    model = log_softmax_cnn()
    onnx.save(model, str(tmp / "m.onnx"))
    x = np.random.default_rng(0).standard_normal((1700, 3, 16, 16)).astype(np.float32)
    np.savez(tmp / "calib.npz", x=x[:1400])
    res = compile_model(str(tmp / "m.onnx"), str(tmp / "calib.npz"), str(tmp / "m.exitc"),
                        CompileOptions(target_acc=0.9, progress=False, never_slower=False), log=lambda *a: None)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x[1400:]})[0]
    return str(tmp / "m.exitc"), res, x[1400:], ref


def test_exited_rows_answer_log_probabilities(compiled):
    path, res, x, ref = compiled
    assert res.manifest["prediction_kind"] == LOG_PROBABILITIES
    assert res.plan.exits, "the synthetic CNN has an exit worth taking at 0.9"
    for engine in ("python", "cpp"):
        try:
            model = exitc.load(path, engine=engine)
        except exitc.ExitcError:
            if engine == "cpp":
                continue  # libexitc not built: tests/test_cpp_runtime.py says so
            raise
        outs, idx = model.run({"x": x})
        early = idx < model.num_exits
        assert 0 < early.sum() < len(x)
        out = outs[0].astype(np.float64)
        assert (out[early] <= 1e-6).all()
        np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0, rtol=1e-5)  # every row, exited or not
        np.testing.assert_allclose(outs[0][~early], ref[~early], rtol=1e-5, atol=1e-5)  # full-depth rows: the original's
        assert (out.argmax(1) == ref.argmax(1)).mean() > 0.85
