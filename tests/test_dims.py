"""Dims as exporters write them: every naming style of unknown dims must compile, and every
derived graph must run at two batch sizes and, where a dim is open, at two spatial sizes."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from exitc.driver import CompileOptions, compile_model
from exitc.passes.normalize import dynamic_axes, name_dims, normalize, prepare
from exitc.passes.split import build_segments, probe_model
from exitc.passes import find_candidates
from exitc.runtime import ExitModel

from synthetic import tiny_cnn, tiny_transformer, transformer_feeds


def with_input_dims(model: onnx.ModelProto, dims: list, output_dims: list | None = None) -> onnx.ModelProto:
    """The model with its first input's dims (and optionally the output's) replaced. Each entry:
    an int (dim_value, negative allowed), a str (dim_param) or None (empty dim)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)

    def set_dims(v, ds):
        shape = v.type.tensor_type.shape
        del shape.dim[:]
        for d in ds:
            dim = shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            elif isinstance(d, str):
                dim.dim_param = d
    set_dims(m.graph.input[0], dims)
    if output_dims is not None:
        set_dims(m.graph.output[0], output_dims)
    return m


# Naming styles seen in the wild for [batch, 3, H, W] with H and W unknown.
STYLES = {
    "question_marks": ["?", 3, "?", "?"],                 # one placeholder for every unknown axis
    "tf2onnx_unk": ["unk__12", 3, "unk__13", "unk__14"],
    "minus_one_param": ["-1", 3, "-1", "-1"],
    "negative_value": [-1, 3, -1, -1],
    "empty": [None, 3, None, None],
    "one_name_for_two_axes": ["N", 3, "size", "size"],    # a real-looking name reused within a tensor
    "batch_name_reused": ["batch", 3, "batch", "batch"],
}


@pytest.mark.parametrize("style", list(STYLES))
def test_name_dims_gives_open_axes_their_own_symbols(style):
    m = with_input_dims(tiny_cnn(), STYLES[style], ["?", 5])
    name_dims(m)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 3
    assert dims[2].dim_param and dims[3].dim_param and dims[2].dim_param != dims[3].dim_param
    assert m.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_real_shared_names_are_kept():
    """input_ids and attention_mask share `sequence` on the same axis: a real name, kept."""
    m = tiny_transformer()
    for v in m.graph.input:
        v.type.tensor_type.shape.dim[1].Clear()
        v.type.tensor_type.shape.dim[1].dim_param = "sequence"
    name_dims(m)
    assert [v.type.tensor_type.shape.dim[1].dim_param for v in m.graph.input] == ["sequence", "sequence"]


def run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("style", list(STYLES))
def test_derived_graphs_run_at_two_batch_and_two_spatial_sizes(style):
    """The probe and the segments of a model with open H and W run on non-square images at two
    batch sizes and two spatial sizes (a shared dim name made ORT reuse an H-sized buffer for W)."""
    rng = np.random.default_rng(0)
    src = with_input_dims(tiny_cnn(blocks=3), STYLES[style], ["?", 5])
    model, sig = prepare(src)
    assert dynamic_axes(sig) == {"x": [2, 3]}
    x = rng.standard_normal((8, 3, 16, 24)).astype(np.float32)
    model = normalize(src, feeds={"x": x})[0]
    cands = find_candidates(model)
    assert cands
    probe = probe_model(model, cands, None)
    segments = build_segments(model, cands[:2], [None, None])
    for shape in ((2, 3, 16, 24), (5, 3, 16, 24), (3, 3, 20, 12), (4, 3, 12, 20)):
        feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
        ref = run(src, feeds)[0]
        assert np.allclose(run(probe, feeds)[0], ref, atol=1e-5)
        state = dict(feeds)
        for seg in segments:
            if not seg.model.graph.node:  # the slice before an input exit at cut 0
                continue
            sess = ort.InferenceSession(seg.model.SerializeToString(), providers=["CPUExecutionProvider"])
            out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {k: state[k] for k in seg.inputs})))
            state.update(out)
        assert np.allclose(state["logits"], ref, atol=1e-5)


def fixed_size_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """A model whose input is declared open but that runs at one size only (a Reshape to a fixed
    number of features, as exporters write after Flatten)."""
    m = with_input_dims(model, ["?", 3, "?", "?"], ["?", 5])
    g = m.graph
    for n in g.node:
        if n.op_type == "GlobalAveragePool":
            n.op_type = "Identity"  # keep the whole map: the flat size is 8 * 16 * 16
    fc = next(t for t in g.initializer if t.name == "fc_w")
    w = np.random.default_rng(1).standard_normal((5, 8 * 16 * 16)).astype(np.float32) * 0.05
    fc.CopyFrom(onnx.numpy_helper.from_array(w, "fc_w"))
    g.initializer.append(onnx.numpy_helper.from_array(np.array([0, 8 * 16 * 16], np.int64), "flat_shape"))
    flat = next(n for n in g.node if n.op_type == "Flatten")
    flat.CopyFrom(helper.make_node("Reshape", ["gap", "flat_shape"], ["flat"], name="flatten"))
    return m


def test_model_that_runs_at_one_size_is_compiled_for_it(tmp_path):
    src = fixed_size_only(tiny_cnn(blocks=3))
    x = np.random.default_rng(0).standard_normal((6, 3, 16, 16)).astype(np.float32)
    model, sig = prepare(src)
    from exitc.passes.normalize import observe_shapes

    observe_shapes(model, sig, {"x": x})
    assert sig.fixed_axes and sig.inputs[0].shape == ["batch", 3, 16, 16] and not sig.resized


@pytest.mark.parametrize("style", ["question_marks", "tf2onnx_unk", "empty"])
def test_compile_with_open_spatial_dims(tmp_path, style):
    """End to end on non-square images: compiles, the artifact is exact at full depth at both sizes
    (the compiler's own check covers a resized input) and runs at a second size."""
    src = with_input_dims(tiny_cnn(blocks=4), STYLES[style], ["?", 5])
    onnx.save(src, tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((1400, 3, 16, 24)).astype(np.float32))
    out = str(tmp_path / "m.exitc")
    res = compile_model(str(tmp_path / "m.onnx"), str(tmp_path / "calib.npz"), out,
                        CompileOptions(target_acc=0.9, progress=False, never_slower=False), log=lambda *a: None)
    assert any("resized input" in c for c in res.verification.checked)
    model = ExitModel(out)
    x2 = rng.standard_normal((9, 3, 20, 12)).astype(np.float32)
    outs, idx = model.run({"x": x2})
    ref = run(src, {"x": x2})[0]
    end = idx == model.num_exits
    assert np.allclose(outs[0][end], ref[end], atol=1e-4)


def test_transformer_with_open_sequence_length(tmp_path):
    """Token models whose sequence axis is open (tf2onnx writes unk__N for it)."""
    src = tiny_transformer()
    for v in src.graph.input:
        d = v.type.tensor_type.shape.dim
        d[0].dim_param, d[1].dim_param = "unk__1", "unk__2"
    model, sig = prepare(src)
    assert dynamic_axes(sig) == {"input_ids": [1], "attention_mask": [1]}
    # the positional embedding has a fixed length: the model runs only at seq 8
    f = transformer_feeds(6)
    from exitc.passes.normalize import observe_shapes

    observe_shapes(model, sig, f)
    assert sig.fixed_axes and sig.inputs[0].shape == ["batch", 8]


def test_minus_one_batch_value_is_the_batch():
    """Paddle2ONNX writes unknown dims as dim_value -1, the batch included."""
    m = with_input_dims(tiny_cnn(), [-1, 3, 16, 16], [-1, 5])
    model, sig = prepare(m)
    assert sig.inputs[0].shape[0] == "batch" and sig.output.shape == ["batch", 5]


def test_time_major_output_keeps_its_name_and_is_refused():
    """[time, batch, classes]: dim 0 is not the batch; the one-line refusal shows the real shape."""
    from exitc.errors import ExitcError

    m = with_input_dims(tiny_cnn(), ["batch", 3, 16, 16], ["time", 5])
    with pytest.raises(ExitcError, match=r"\['time', 5\]"):
        prepare(m)


def test_opset_9_models_are_converted_for_the_heads(tmp_path):
    """tf2onnx wrote opset 9 for years; heads need opset-11 ops (TopK with K as an input)."""
    src = tiny_cnn(opset=9, blocks=4)
    onnx.save(src, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((1400, 3, 16, 16)).astype(np.float32))
    out = str(tmp_path / "m.exitc")
    compile_model(str(tmp_path / "m.onnx"), str(tmp_path / "calib.npz"), out,
                  CompileOptions(target_acc=0.9, progress=False, never_slower=False), log=lambda *a: None)
    x = np.random.default_rng(1).standard_normal((9, 3, 16, 16)).astype(np.float32)
    outs, idx = ExitModel(out).run({"x": x})
    end = idx == len(idx) * 0 + ExitModel(out).num_exits
    assert np.allclose(outs[0][end], run(src, {"x": x})[0][end], atol=1e-4)


def _fixed_batch_cnn(n: int, expand: bool = False) -> onnx.ModelProto:
    """tiny_cnn exported at a fixed batch of `n` rows as torch.onnx does without dynamic axes:
    every input and output [n, ...], the flatten written as Reshape to a constant [n, -1]; with
    `expand`, also a learned [1, 5] bias expanded to a constant [n, 5] (as a ViT's class token),
    so the graph computes the batch size itself."""
    m = tiny_cnn(batch=n)
    g = m.graph
    flat = next(node for node in g.node if node.op_type == "Flatten")
    flat.CopyFrom(helper.make_node("Reshape", ["gap", "flat_shape"], ["flat"], name="flatten"))
    g.initializer.append(onnx.numpy_helper.from_array(np.array([n, -1], np.int64), "flat_shape"))
    if expand:
        fc = next(node for node in g.node if node.op_type == "Gemm")
        fc.output[0] = "fc_out"
        g.initializer.extend([onnx.numpy_helper.from_array(np.full((1, 5), 0.1, np.float32), "row_bias"),
                              onnx.numpy_helper.from_array(np.array([n, 5], np.int64), "bias_shape")])
        g.node.extend([helper.make_node("Expand", ["row_bias", "bias_shape"], ["bias_rows"], name="expand"),
                       helper.make_node("Add", ["fc_out", "bias_rows"], ["logits"], name="add_bias")])
    onnx.checker.check_model(m)
    return m


def test_a_batch_fixed_at_export_is_opened():
    """torch.onnx.export without dynamic axes fixes the batch to the example's rows (here 8) and
    folds it into Reshape targets. Before: 'no batch-major classification output [batch,
    classes] found (outputs: logits [8, 5])'. Now the batch axis is opened as for a fixed 1, and
    the model runs at other batch sizes, each row as at the exported size."""
    from exitc.passes.normalize import fixed_batch

    m = _fixed_batch_cnn(8)
    assert fixed_batch(m) == 8 and fixed_batch(tiny_cnn()) == 0 and fixed_batch(tiny_cnn(batch=1)) == 1
    model, sig = prepare(m)
    assert sig.exported_batch == 8 and sig.output.shape[0] == "batch"
    x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    (ref,) = run(m, {"x": x})
    for rows in (1, 3, 8):
        np.testing.assert_allclose(run(model, {"x": x[:rows]})[0], ref[:rows], rtol=1e-5, atol=1e-6)


def test_inputs_fixed_at_different_sizes_are_no_batch():
    from exitc.passes.normalize import fixed_batch

    m = tiny_transformer()
    for v, n in zip(m.graph.input, (8, 4)):
        v.type.tensor_type.shape.dim[0].Clear()
        v.type.tensor_type.shape.dim[0].dim_value = n
    assert fixed_batch(m) == 0


def test_a_fixed_batch_the_graph_computes_is_refused_in_one_line(tmp_path):
    """A constant [8, 5] expanded and added to the logits: the graph makes 8 rows itself, so
    opening the axis cannot make it run at other sizes. The line says why and what to do."""
    from exitc.errors import ExitcError

    with pytest.raises(ExitcError, match=r"batch axis is fixed to 8 rows \(exported without a dynamic batch axis\).*"
                                         r"export it with a dynamic batch axis"):
        prepare(_fixed_batch_cnn(8, expand=True))


def test_a_batch_fixed_at_export_compiles_exactly(tmp_path):
    m = _fixed_batch_cnn(8)
    onnx.save(m, str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).standard_normal((1696, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x[:1400])
    out = str(tmp_path / "m.exitc")
    compile_model(str(tmp_path / "m.onnx"), str(tmp_path / "calib.npz"), out,
                  CompileOptions(target_acc=0.9, progress=False, never_slower=False), log=lambda *a: None)
    held = x[1400:]  # 296 rows: the original itself runs them 8 at a time
    ref = np.concatenate([run(m, {"x": held[i:i + 8]})[0] for i in range(0, len(held), 8)])
    (got,), idx = ExitModel(out, full_depth=True).run({"x": held})
    assert (idx == ExitModel(out).num_exits).all()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dims,batch_axes", [
    ([24, "N", 6], {"x": 1}),                  # time fixed, batch open (torch.onnx without names)
    (["seq", "batch_size", 6], {"x": 1}),      # "batch" in dim 1's name
    (["T", "N", 6], {"x": 1}),                 # dim 1 named as the output's dim 0 ("N")
    (["N", 24, 6], {}),                        # batch-major: unchanged
], ids=["fixed-time", "batch-name", "output-name", "batch-major"])
def test_time_major_inputs_are_seen_rows_first(dims, batch_axes):
    from synthetic import tiny_rnn
    from exitc.passes.normalize import original_input_layout

    raw = tiny_rnn(steps=24, input_dims=dims if dims[0] != "N" else None)
    model, sig = prepare(raw)
    assert sig.batch_axes == batch_axes
    assert sig.inputs[0].shape[0] == "batch" and sig.inputs[0].batch_axis == 0
    x = np.random.default_rng(0).standard_normal((5, 24, 6)).astype(np.float32)  # rows first
    file_x = np.ascontiguousarray(np.moveaxis(x, 0, 1)) if batch_axes else x
    want = ort.InferenceSession(raw.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": file_x})[0]
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
    # and the artifact's graphs get the file's layout back (a Transpose that ORT folds)
    back = original_input_layout(model, sig.batch_axes)
    again = ort.InferenceSession(back.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": file_x})[0]
    np.testing.assert_array_equal(again, want)
