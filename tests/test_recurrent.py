"""Recurrent classifiers (ONNX GRU/LSTM/RNN ops, time-major between layers), end to end: exits
between the recurrent layers carry the [time, batch, H] state with batch axis 1, and both
runtimes compact and scatter rows along it. Before, such models had no candidate exit (an
LSTM text classifier exported by torch.onnx: "0 candidate exits")."""

import numpy as np
import onnx
import onnxruntime as ort

import exitc
from exitc.driver import CompileOptions, compile_model

from synthetic import tiny_rnn


def test_recurrent_classifier_exits_between_its_layers(tmp_path):
    # GRUs wide and long enough that a layer costs well above a segment call (a tiny one's exits
    # do not pay for themselves on measured costs)
    model = tiny_rnn(steps=24, hidden=64)
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).standard_normal((1700, 24, 6)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x[:1400])
    res = compile_model(str(tmp_path / "m.onnx"), str(tmp_path / "calib.npz"), str(tmp_path / "m.exitc"),
                        CompileOptions(target_acc=0.9, progress=False, never_slower=False), log=lambda *a: None)
    assert res.plan.exits, "an exit between the GRUs is worth taking at 0.9"
    carried = {c["name"]: c for c in res.manifest["carried"]}
    assert carried and all(c["batch_axis"] == 1 and c["shape"][1] == "batch" for c in carried.values())
    test = x[1400:]
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": test})[0]
    for engine in ("python", "cpp"):
        try:
            m = exitc.load(str(tmp_path / "m.exitc"), engine=engine)
        except exitc.ExitcError:
            if engine == "cpp":
                continue  # libexitc not built: tests/test_cpp_runtime.py says so
            raise
        (out,), idx = m.run({"x": test})
        early = idx < m.num_exits
        assert 0 < early.sum() < len(test), engine  # rows compacted out along the time-major state's axis 1
        np.testing.assert_allclose(out[~early], ref[~early], rtol=1e-5, atol=1e-5, err_msg=engine)
        assert (out.argmax(1) == ref.argmax(1)).mean() > 0.85, engine
        # the same rows one at a time: each row's answer does not depend on the rows beside it
        for r in np.flatnonzero(~early)[:3]:
            (one,), one_idx = m.run({"x": test[r:r + 1]})
            np.testing.assert_allclose(one, out[r:r + 1], rtol=1e-4, atol=1e-5, err_msg=engine)
