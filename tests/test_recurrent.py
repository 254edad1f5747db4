"""Recurrent classifiers (ONNX GRU/LSTM/RNN ops, time-major between layers), end to end: exits
between the recurrent layers carry the [time, batch, H] state with batch axis 1, and both
runtimes compact and scatter rows along it. Before, such models had no candidate exit (an
LSTM text classifier exported by torch.onnx: "0 candidate exits")."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import exitc
from exitc.driver import CompileOptions, compile_model

from synthetic import tiny_rnn


@pytest.mark.parametrize("final_states", [False, True], ids=["reads-last-step", "reads-h_n"])
def test_recurrent_classifier_exits_between_its_layers(tmp_path, final_states):
    # GRUs wide and long enough that a layer costs well above a segment call (a tiny one's exits
    # do not pay for themselves on measured costs); read through h_n, every cut also carries the
    # final states of the layers before it ([1, batch, H], batch axis 1 as well)
    model = tiny_rnn(steps=24, hidden=64, final_states=final_states)
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).standard_normal((1700, 24, 6)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x[:1400])
    res = compile_model(str(tmp_path / "m.onnx"), str(tmp_path / "calib.npz"), str(tmp_path / "m.exitc"),
                        CompileOptions(target_acc=0.9, progress=False, never_slower=False), log=lambda *a: None)
    assert res.plan.exits, "an exit between the GRUs is worth taking at 0.9"
    carried = {c["name"]: c for c in res.manifest["carried"]}
    assert carried and all(c["batch_axis"] == 1 and c["shape"][1] == "batch" for c in carried.values())
    _check_both_runtimes(str(tmp_path / "m.exitc"), model, x[1400:], rows_axis=0)


def _check_both_runtimes(path: str, model: onnx.ModelProto, test: np.ndarray, rows_axis: int) -> None:
    """Both runtimes on `test` (rows on `rows_axis`, as the original takes x): some rows leave
    early (compacted out along the time-major state's axis 1), full-depth rows are the original's,
    and a row run alone gets the answer it got in the batch."""
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": test})[0]

    def rows(sl):
        return {"x": test[(slice(None),) * rows_axis + (sl,)]}

    for engine in ("python", "cpp"):
        try:
            m = exitc.load(path, engine=engine)
        except exitc.ExitcError:
            if engine == "cpp":
                continue  # libexitc not built: tests/test_cpp_runtime.py says so
            raise
        (out,), idx = m.run(rows(slice(None)))
        early = idx < m.num_exits
        assert 0 < early.sum() < len(ref), engine
        np.testing.assert_allclose(out[~early], ref[~early], rtol=1e-5, atol=1e-5, err_msg=engine)
        assert (out.argmax(1) == ref.argmax(1)).mean() > 0.85, engine
        # the same rows one at a time: each row's answer does not depend on the rows beside it
        for r in np.flatnonzero(~early)[:3]:
            (one,), _ = m.run(rows(slice(r, r + 1)))
            np.testing.assert_allclose(one, out[r:r + 1], rtol=1e-4, atol=1e-5, err_msg=engine)


@pytest.mark.parametrize("dims", [[24, "N", 6], ["seq", "batch_size", 6]], ids=["fixed-time", "named-batch"])
def test_time_major_inputs_are_taken_as_the_file_takes_them(tmp_path, dims):
    # A module run with batch_first=False (nn.LSTM/nn.GRU's default) exports x as [time, batch,
    # features]; it was refused ("exitc needs every input to be batch-major"). The compiler now
    # works on rows first and the artifact takes x as the file does: batch_axis 1 in the manifest.
    model = tiny_rnn(steps=24, hidden=64, input_dims=dims)
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).standard_normal((24, 1700, 6)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x[:, :1400])
    np.savez(tmp_path / "test.npz", x=x[:, 1400:])
    res = compile_model(str(tmp_path / "m.onnx"), str(tmp_path / "calib.npz"), str(tmp_path / "m.exitc"),
                        CompileOptions(target_acc=0.9, progress=False, never_slower=False), log=lambda *a: None)
    assert res.plan.exits
    (spec,) = res.manifest["inputs"]
    assert spec["batch_axis"] == 1 and spec["shape"][1] == "batch" and spec["shape"][2] == 6
    test = x[:, 1400:]
    _check_both_runtimes(str(tmp_path / "m.exitc"), model, test, rows_axis=1)
    # the batch-1 form takes the file's layout too
    cond = res.manifest["conditional"]
    if cond:
        sess = ort.InferenceSession(str(tmp_path / "m.exitc" / cond["file"]), providers=["CPUExecutionProvider"])
        assert sess.get_inputs()[0].shape[0] != "batch" and sess.run(None, {"x": test[:, :1]})[0].shape == (1, 4)
    # bench and run read the test file in that layout
    from exitc.bench import BenchOptions, bench
    r = bench(str(tmp_path / "m.exitc"), str(tmp_path / "test.npz"), BenchOptions(rounds=1, latency_rows=5, progress=False),
              log=lambda *a: None)
    assert r["rows"] == 300 and r["agreement"] > 0.85
    from exitc.cli import main
    assert main(["run", str(tmp_path / "m.exitc"), "--input", str(tmp_path / "test.npz"), "-o",
                 str(tmp_path / "out.npz")]) == 0
    with np.load(tmp_path / "out.npz") as z:
        assert z["logits"].shape == (300, 4)


def test_time_major_input_without_a_batch_name_is_refused_in_one_line(tmp_path):
    # [?, ?, F] with an output [?, C]: nothing says which axis holds the rows, and axis 0 does not
    # (the output has as many rows as the data's axis 1). One line, not a numpy broadcast error.
    model = tiny_rnn(steps=24, input_dims=["?", "?", 6])
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "?"
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "calib.npz", x=np.zeros((24, 700, 6), np.float32) + np.arange(700)[None, :, None] / 700)
    with pytest.raises(exitc.ExitcError, match=r"output 'logits' has 700 rows where the inputs have 8 on axis 0"):
        compile_model(str(tmp_path / "m.onnx"), str(tmp_path / "calib.npz"), str(tmp_path / "o"),
                      CompileOptions(target_acc=0.9, progress=False), log=lambda *a: None)
    assert not (tmp_path / "o").exists()
