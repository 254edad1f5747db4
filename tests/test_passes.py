"""Unit tests of the graph passes on small synthetic graphs."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from exitc.errors import ExitcError
from exitc.passes import ExitHead, build_segments, conditional_model, find_candidates, normalize, probe_model
from exitc.passes.candidates import recompute_ok
from exitc.passes.graph import GraphIndex
from exitc.passes.heads import NchwPooling, grid_kernel, head_forward, nchw_pooling
from exitc.passes.normalize import check_rows_independent, observe_shapes, prepare
from exitc.passes.shape_reads import resolve_shape_reads
from exitc.passes.split import EXIT_INDEX, find_mask_input, head_model, probe_name
from exitc.predictions import LOGITS, PROBABILITIES

from synthetic import (binary_cnn, preprocessed_cnn, tiny_rnn, uint8_nhwc_cnn, quantized, quantized_cnn, tiny_cnn, tiny_cnn1d, tiny_mlp, tiny_transformer,
                       transformer_feeds)


def run(model, feeds, outputs=None):
    if not model.graph.node and outputs is None:  # a bare slice before an input exit at cut 0
        return {}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = outputs or [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def feeds_for(kind, n, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "transformer":
        return transformer_feeds(n, seed=seed)
    if kind == "mlp":
        return {"x": rng.standard_normal((n, 16)).astype(np.float32)}
    if kind == "cnn1d":
        return {"signal": rng.standard_normal((n, 1, 64)).astype(np.float32)}
    if kind == "rnn":
        return {"x": rng.standard_normal((n, 12, 6)).astype(np.float32)}
    if kind == "cnn_uint8":
        return {"img": rng.integers(0, 256, (n, 16, 16, 3)).astype(np.uint8)}
    return {"x": rng.standard_normal((n, 3, 16, 16)).astype(np.float32)}


MODELS = {
    "cnn": (lambda: tiny_cnn(), "cnn"),
    "cnn_input_exit_opset11": (lambda: preprocessed_cnn(opset=11), "cnn"),
    "cnn_uint8_nhwc_prepared_in_graph": (lambda: uint8_nhwc_cnn(), "cnn_uint8"),
    "rnn_time_major": (lambda: tiny_rnn(), "rnn"),
    "rnn_cells_time_major": (lambda: tiny_rnn(cell="RNN"), "rnn"),
    "lstm_time_major": (lambda: tiny_rnn(cell="LSTM"), "rnn"),
    "gru_read_through_h_n": (lambda: tiny_rnn(final_states=True), "rnn"),
    "cnn_opset11_batch1": (lambda: tiny_cnn(opset=11, batch=1), "cnn"),
    "transformer": (lambda: tiny_transformer(), "transformer"),
    "transformer_two_tensor_carry": (lambda: tiny_transformer(carry_mask=True), "transformer"),
    "transformer_torchscript_style": (lambda: tiny_transformer(torchscript_style=True), "transformer"),
    "mlp": (lambda: tiny_mlp(), "mlp"),
    "cnn1d": (lambda: tiny_cnn1d(), "cnn1d"),
    "cnn_int8_qdq": (lambda: quantized_cnn("qdq"), "cnn"),
    "cnn_int8_qoperator": (lambda: quantized_cnn("qoperator"), "cnn"),
}


def test_normalize_makes_fixed_batch_symbolic():
    model, sig = normalize(tiny_cnn(opset=11, batch=1))
    assert sig.inputs[0].shape[0] == "batch" and sig.output.shape == ["batch", 5]
    out = run(model, feeds_for("cnn", 7))["logits"]
    assert out.shape == (7, 5)


def test_normalize_rejects_model_without_classification_output():
    m = tiny_cnn()
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5
    g = m.graph
    g.node.append(onnx.helper.make_node("ReduceSum", ["logits"], ["total"], keepdims=0))
    del g.output[:]
    g.output.append(onnx.helper.make_tensor_value_info("total", onnx.TensorProto.FLOAT, []))
    with pytest.raises(ExitcError, match="classification output"):
        normalize(m)


@pytest.mark.parametrize("dims,accepted", [((5, 1, 1), True), ((1, 5), True), ((1, 5, 1), True), ((5,), True),
                                           ((5, 2), False), ((1, 1, 1), False)])
def test_classes_with_axes_of_size_one_around_them(dims, accepted):
    # [batch, classes, 1, 1] (SqueezeNet, Caffe2's DenseNet), [batch, 1, classes]: one axis of
    # classes; two axes above 1 or none (one score as [batch, 1, 1, 1]) is no classification
    m = tiny_cnn()
    g = m.graph
    g.initializer.append(onnx.helper.make_tensor("dims", onnx.TensorProto.INT64, [len(dims) + 1], [-1, *dims]))
    if int(np.prod(dims)) == 1:  # one score per row
        g.node.append(onnx.helper.make_node("ReduceMax", ["logits"], ["rows"], axes=[1], keepdims=1))
    else:  # the 5 logits, repeated to fill the shape
        g.initializer.append(onnx.helper.make_tensor("reps", onnx.TensorProto.INT64, [2], [1, int(np.prod(dims)) // 5]))
        g.node.append(onnx.helper.make_node("Tile", ["logits", "reps"], ["rows"]))
    g.node.append(onnx.helper.make_node("Reshape", ["rows", "dims"], ["out"]))
    del g.output[:]
    g.output.append(onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["N", *dims]))
    if not accepted:
        with pytest.raises(ExitcError, match="no batch-major classification output"):
            normalize(m)
        return
    model, sig = normalize(m)
    assert sig.num_classes == 5 and sig.class_dims == (None if len(dims) == 1 else dims)
    assert run(model, feeds_for("cnn", 3))["out"].shape == (3, *dims)


@pytest.mark.parametrize("sigmoid", [False, True])
def test_binary_classifier_exits_answer_in_its_form(sigmoid):
    # One score per row ([batch, 1]: a single logit, or a sigmoid probability): heads learn two
    # classes and answer in the original's form (the logit difference, or the probability of
    # class 1), in ONNX as in numpy (heads.head_forward); the conditional form keeps [batch, 1].
    from exitc.passes.heads import head_forward

    model, sig = normalize(binary_cnn(sigmoid))
    assert sig.binary and sig.num_classes == 1
    cands = find_candidates(model)[:2]
    feeds = feeds_for("cnn", 10, seed=6)
    probed = run(probe_model(model, cands, None), feeds)
    rng = np.random.default_rng(1)
    heads = []
    for k, c in enumerate(cands):
        d = probed[probe_name(k)].shape[1]
        heads.append(ExitHead(index=k, tensor=c.tensor, layout=c.layout, elem_type=onnx.TensorProto.FLOAT,
                              mask_input=None, layers=[((0.05 * rng.standard_normal((d, 2))).astype(np.float32),
                                                        rng.standard_normal(2).astype(np.float32))],
                              gate_w=np.array([3.0, 2.0, -1.0], np.float32), gate_b=-1.5,
                              prediction_kind=PROBABILITIES if sigmoid else LOGITS, binary=True, meta={"threshold": 0.5}, pooling=c.pooling))
    segs = build_segments(model, cands, heads, None)
    state = dict(feeds)
    for seg in segs:
        state.update(run(seg.model, {k: state[k] for k in seg.inputs}))
    for k, h in enumerate(heads):
        answer, score = head_forward(h, probed[probe_name(k)])
        assert state[h.logits_name].shape == (10, 1)
        np.testing.assert_allclose(state[h.logits_name], answer, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state[h.score_name], score, rtol=1e-5, atol=1e-6)
    out = run(conditional_model(segs, model), feeds)
    assert out[sig.output.name].shape == (10, 1)


def test_normalize_requires_choice_between_two_outputs():
    m = tiny_cnn()
    m.graph.node.append(onnx.helper.make_node("Identity", ["logits"], ["logits2"]))
    m.graph.output.append(onnx.helper.make_tensor_value_info("logits2", onnx.TensorProto.FLOAT, ["N", 5]))
    with pytest.raises(ExitcError, match="--output"):
        normalize(m)
    model, sig = normalize(m, output="logits2")
    assert sig.output.name == "logits2" and [o.name for o in model.graph.output] == ["logits2"]


@pytest.mark.parametrize("name", list(MODELS))
def test_candidates_and_segments_reproduce_the_model(name):
    build, kind = MODELS[name]
    model, sig = normalize(build())
    cands = find_candidates(model)
    assert len(cands) >= 2, "every synthetic model has several single-activation cuts"
    assert [c.cut for c in cands] == sorted(c.cut for c in cands)
    assert len({c.tensor for c in cands}) == len(cands)
    feeds = feeds_for(kind, 6)
    ref = run(model, feeds)[sig.output.name]
    state = dict(feeds)
    segs = build_segments(model, cands, [None] * len(cands), find_mask_input(model))
    assert len(segs) == len(cands) + 1
    for seg in segs:
        onnx.checker.check_model(seg.model)
        assert not seg.model.graph.value_info, "segments declare no inner shapes (split.build_segments)"
        if not seg.model.graph.node:  # before an input exit on the graph input itself (cut 0): nothing to run
            assert seg.index == 0 and cands[0].cut == 0 and not seg.carry_out
            continue
        state.update(run(seg.model, {k: state[k] for k in seg.inputs}))
    np.testing.assert_allclose(state[sig.output.name], ref, rtol=1e-5, atol=1e-5)


def test_every_layer_of_an_rnn_read_through_h_n_is_an_exit_point():
    # fc(h_n[-1]) of an nn.GRU stack: each cut between layers also carries the final states of the
    # layers before it, one more per layer. Before, the neighbour rule counted those in and kept
    # only the first cut between layers.
    model, _ = normalize(tiny_rnn(layers=4, steps=8, final_states=True))  # states 1/8 of the sequence: not SIDE_FRACTION's
    between = [c for c in find_candidates(model) if c.layout == "tbc"]
    assert [c.tensor for c in between] == ["t1", "t2", "t3"]
    assert [sorted(c.side) for c in between] == [["yh0"], ["yh0", "yh1"], ["yh0", "yh1", "yh2"]]


def test_input_exit_on_the_graph_input_itself():
    """A model whose first heavy op reads its graph input (preprocessing outside the graph) gets an
    input exit at cut 0 whose head reads that input; its segment carries nothing."""
    model, _ = normalize(tiny_cnn())
    first = find_candidates(model)[0]
    assert (first.cut, first.tensor, first.layout, first.spatial) == (0, "x", "nchw", (16, 16))
    head = ExitHead(0, "x", "nchw", onnx.TensorProto.FLOAT, None,
                    [(np.zeros((3 * 2 + 3 * 64, 5), np.float32), np.zeros(5, np.float32))], np.zeros(3, np.float32),
                    0.0, pooling=first.pooling)
    segs = build_segments(model, [first], [head])
    assert segs[0].inputs == ["x"] and segs[0].carry_out == [] and segs[1].inputs == ["x"]


def test_input_exit_of_a_model_that_prepares_its_input_inside_the_graph():
    """uint8 NHWC input, Cast/Transpose/scale inside the graph (tf2onnx, float16 converters):
    every tensor before the stem is recomputable, so no cut there carries anything; the input
    exit carries what the stem reads (the float NCHW image). Without it such models had none."""
    model, _ = normalize(uint8_nhwc_cnn(), feeds=feeds_for("cnn_uint8", 3))
    first = find_candidates(model)[0]
    assert (first.tensor, first.layout, first.spatial, first.side) == ("x", "nchw", (16, 16), ())
    assert first.cut == 0 and first.flops_fraction == 0.0 and first.recomputed and first.carried == ()
    feeds = feeds_for("cnn_uint8", 5)
    d = run(probe_model(model, [first], None), feeds)[probe_name(0)].shape[1]
    head = ExitHead(0, "x", "nchw", onnx.TensorProto.FLOAT, None,
                    [(np.zeros((d, 5), np.float32), np.zeros(5, np.float32))], np.zeros(3, np.float32),
                    0.0, pooling=first.pooling)
    segs = build_segments(model, [first], [head])
    # nothing carried: the exit's segment prepares the image for its head, the next one for the stem
    assert segs[0].inputs == ["img"] and segs[0].carry_out == [] and segs[1].inputs == ["img"]
    assert {n.op_type for n in segs[0].model.graph.node} >= {"Cast", "Transpose", "Mul", "Sub"}
    np.testing.assert_array_equal(run(segs[1].model, feeds)["logits"], run(model, feeds)["logits"])
    assert run(segs[0].model, feeds)[head.logits_name].shape == (5, 5)
    # A tensor many times the input's size (a one-hot expansion; here the image tiled 8x along
    # its channels) is no input exit to carry (INPUT_EXIT_MAX_GROWTH).
    m = uint8_nhwc_cnn()
    g = m.graph
    next(n for n in g.node if n.name == "img_sub").output[0] = "x_narrow"
    g.node.insert(4, onnx.helper.make_node("Tile", ["x_narrow", "widen"], ["x"], name="widen"))
    g.initializer.append(onnx.numpy_helper.from_array(np.array([1, 8, 1, 1], np.int64), "widen"))
    w = next(t for t in g.initializer if t.name == "stem_w")
    w.CopyFrom(onnx.numpy_helper.from_array(np.tile(onnx.numpy_helper.to_array(w), (1, 8, 1, 1)) / 8, "stem_w"))
    wide, _ = normalize(m, feeds=feeds_for("cnn_uint8", 3))
    assert find_candidates(wide)[0].tensor == "h0"


def test_exits_between_recurrent_layers_carry_time_major_tensors():
    """ONNX's GRU/LSTM/RNN ops run time-major: between two of them the state is [time, batch, H].
    observe_shapes names its batch axis (1), the cut there is a "tbc" candidate whose carried
    tensor says batch_axis 1 in the manifest (runtimes compact rows along it), and the recurrent
    ops' arithmetic is counted (W and R per step). Before, such models had no candidate."""
    from exitc.manifest import tensor_entry

    model, _ = normalize(tiny_rnn(), feeds=feeds_for("rnn", 3))
    idx = GraphIndex.build(model)
    assert idx.infos["t1"].shape == [12, "batch", 16] and idx.infos["t1"].batch_axis == 1
    assert idx.infos["t1"].row_elements() == 12 * 16 and tensor_entry(idx.infos["t1"])["batch_axis"] == 1
    cands = find_candidates(model)
    assert [(c.tensor, c.layout, c.features) for c in cands] == [("t1", "tbc", 16), ("t2", "tbc", 16)]
    assert 0.2 < cands[0].flops_fraction < 0.4 < cands[1].flops_fraction < 0.7  # three equal GRUs, then a small Gemm


def test_two_tensor_carry_is_found():
    model, _ = normalize(tiny_transformer(carry_mask=True))
    cands = find_candidates(model)
    assert any(c.side == ("ext",) for c in cands), [(c.tensor, c.side) for c in cands]
    # Without the non-recomputable op the mask is rebuilt from the graph input instead.
    model2, _ = normalize(tiny_transformer())
    assert all(c.side == () for c in find_candidates(model2))
    assert recompute_ok(model2, "ext0") and not recompute_ok(model, "ext")


def test_shape_read_from_an_activation_is_rewritten_to_read_the_input():
    # The 4-D mask is expanded to sizes read with Shape from the embeddings' LayerNorm output, so
    # it cannot be recomputed from the inputs, and carried it is too large to be a side tensor:
    # only the cut after the last layer (where the mask is dead) would be an exit.
    raw = tiny_transformer(layers=4, torchscript_style=True)
    feeds = transformer_feeds(3)
    model, sig = prepare(raw)
    model = observe_shapes(model, sig, feeds)
    assert not recompute_ok(model, "ext4")
    assert len(find_candidates(model, input_exit=False)) <= 1
    fixed, n = resolve_shape_reads(model, feeds)
    assert n == 1 and recompute_ok(fixed, "ext4")
    shape_node = [n for n in fixed.graph.node if "h_shape" in n.output]
    assert shape_node[0].op_type == "Concat"  # the Shape of "h0n" is gone; the rest reads the inputs
    assert not any(n.op_type == "Shape" and n.input[0] == "h0n" for n in fixed.graph.node)
    cands = find_candidates(fixed, input_exit=False)
    assert len(cands) >= 3 and all(c.side == () for c in cands), [(c.tensor, c.side) for c in cands]
    for n_rows in (1, 5):
        f = transformer_feeds(n_rows, seed=1)
        np.testing.assert_array_equal(run(fixed, f)["logits"], run(model, f)["logits"])
    assert model.graph.node[0] is not fixed.graph.node[0] and any(n.op_type == "Shape" and n.input[0] == "h0n"
                                                                  for n in model.graph.node)  # argument untouched


def test_shape_read_that_no_input_explains_stays():
    # A size that follows the data (how many tokens are set), not an input's shape: not rewritten.
    m = tiny_transformer()
    g = m.graph
    g.node.extend([onnx.helper.make_node("NonZero", ["attention_mask"], ["nz"], name="nz"),
                   onnx.helper.make_node("Cast", ["nz"], ["nzf"], to=onnx.TensorProto.FLOAT, name="nzf"),
                   onnx.helper.make_node("Relu", ["nzf"], ["nzr"], name="nzr"),
                   onnx.helper.make_node("Shape", ["nzr"], ["nz_shape"], name="nz_shape"),
                   onnx.helper.make_node("Cast", ["nz_shape"], ["nz_count"], to=onnx.TensorProto.FLOAT, name="nzc"),
                   onnx.helper.make_node("ReduceMax", ["nz_count"], ["nz_max"], keepdims=0, name="nzm"),
                   onnx.helper.make_node("Mul", ["logits", "nz_max"], ["scaled"], name="scale_out")])
    del g.output[:]
    g.output.append(onnx.helper.make_tensor_value_info("scaled", onnx.TensorProto.FLOAT, ["B", 3]))
    model, sig = prepare(m)
    feeds = transformer_feeds(3)
    model = observe_shapes(model, sig, feeds)
    same, n = resolve_shape_reads(model, feeds)
    assert n == 0 and same is model


def test_conv1d_maps_are_channels_first():
    # [batch, channels, length] activations of a 1-D CNN are pooled per channel (global average,
    # max and cells along the length), not as [batch, tokens, channels]: a head reading them as
    # tokens would average the channels away and call the length its features.
    model, _ = normalize(tiny_cnn1d(channels=8, length=64))
    cands = find_candidates(model)
    assert cands[0].tensor == "signal" and cands[0].layout == "ncl" and cands[0].features == 1
    assert all(c.layout == "ncl" for c in cands), [(c.tensor, c.layout) for c in cands]
    deep = cands[-1]
    assert deep.features == 8 and deep.spatial == (64, 1) and deep.pooling.grid == (8, 1)
    probed = run(probe_model(model, [deep], None), feeds_for("cnn1d", 3))
    assert probed[probe_name(0)].shape == (3, 2 * 8 + 8 * 8)
    # A transformer's [batch, tokens, channels] stays btc.
    tmodel, _ = normalize(tiny_transformer())
    assert {c.layout for c in find_candidates(tmodel)} == {"btc"}


def test_input_exit_is_not_a_statistic_of_the_input():
    # With the embeddings' LayerNorm spelled out and the embeddings recomputable (Gather, Add), the
    # cut that carries least before the first MatMul holds the per-token mean [B, T, 1]; the input
    # exit must read the normalised embeddings instead.
    model, _ = normalize(tiny_transformer(torchscript_style=True))
    first = find_candidates(model)[0]
    assert first.flops_fraction < 0.02 and first.tensor == "h0n", first


def test_input_exit_reads_what_the_first_heavy_op_reads():
    # Preprocessing (a non-recomputable op) before the stem: the cut right before the stem conv
    # is kept although it holds almost none of the arithmetic; one carrying only a mask is not.
    # Of two such cuts the one carrying fewer elements per row wins (the one-channel map before
    # it is replicated to the stem's channels).
    model, _ = normalize(preprocessed_cnn())
    cands = find_candidates(model)
    assert cands[0].tensor == "x_pre" and cands[0].flops_fraction < 0.02, cands[0]
    wide = tiny_cnn()
    stem = next(n for n in wide.graph.node if n.op_type == "Conv")
    stem.input[0] = "x_wide"
    wide.graph.node.insert(0, onnx.helper.make_node("Tanh", ["x"], ["x_one"], name="preprocess"))
    wide.graph.node.insert(1, onnx.helper.make_node("Concat", ["x_one", "x_one"], ["x_two"], axis=1, name="dup"))
    wide.graph.node.insert(2, onnx.helper.make_node("Tanh", ["x_two"], ["x_wide"], name="squash"))
    w = next(t for t in wide.graph.initializer if t.name == stem.input[1])
    arr = onnx.numpy_helper.to_array(w)
    w.CopyFrom(onnx.numpy_helper.from_array(np.concatenate([arr, arr], axis=1) / 2, w.name))
    model_w, _ = normalize(wide)
    assert find_candidates(model_w)[0].tensor == "x_one"
    assert cands[0].pooling.filters is not None  # a one-channel 16x16 map: random filters
    assert "x_pre" not in [c.tensor for c in find_candidates(model, input_exit=False)]
    assert len(find_candidates(model, max_candidates=2)) == 2 and find_candidates(model, max_candidates=2)[0] == cands[0]
    masked, _ = normalize(tiny_transformer(carry_mask=True))
    assert all(c.flops_fraction >= 0.02 for c in find_candidates(masked))


def test_grid_pooling_is_finer_for_image_like_maps():
    assert grid_kernel((128, 128), 3) == (8, 8)      # 16x16 cells
    assert grid_kernel((128, 128), 32) == (32, 32)   # 4x4 cells
    assert grid_kernel((8, 8), 3) == (1, 1)


def test_image_like_maps_get_random_filters():
    # The CV sample's input exit (one-channel 128x128): pooled to 32 px, 5x5 filters -> 28x28
    # responses, averaged over 7x7 cells of 4x4.
    rf = nchw_pooling((128, 128), 1).filters
    assert rf is not None and rf.pre == (4, 4) and rf.cell == (4, 4) and rf.response_side((128, 128)) == (7, 7)
    assert nchw_pooling((28, 28), 3).filters.pre == (1, 1)
    w = rf.weights()
    assert w.shape == (32, 1, 5, 5) and np.allclose(w.mean(axis=(1, 2, 3)), 0, atol=1e-6)
    np.testing.assert_array_equal(w, nchw_pooling((128, 128), 1).filters.weights())  # rebuilt identically
    # Feature maps with many channels, or image-like maps too small for filters, keep the grid.
    assert nchw_pooling((16, 16), 32) == NchwPooling(grid=(4, 4))
    assert nchw_pooling((8, 8), 3) == NchwPooling(grid=(1, 1))


def expected_feature_size(c) -> int:
    if c.layout != "nchw":
        return {"bf": c.features, "btc": 2 * c.features}[c.layout]
    p = c.pooling
    if p.filters is not None:
        h, w = p.filters.response_side(c.spatial)
        return 2 * c.features + p.filters.count * h * w
    cells = 0 if p.grid is None else (c.spatial[0] // p.grid[0]) * (c.spatial[1] // p.grid[1])
    return (2 + cells) * c.features


def test_layouts_are_detected():
    for name, want in (("cnn", "nchw"), ("transformer", "btc"), ("mlp", "bf")):
        model, _ = normalize(MODELS[name][0]())
        assert {c.layout for c in find_candidates(model)} == {want}


@pytest.mark.parametrize("name", ["cnn", "transformer", "mlp", "cnn_opset11_batch1", "cnn_input_exit_opset11"])
def test_probe_features_and_heads_match_numpy(name):
    build, kind = MODELS[name]
    model, sig = normalize(build())
    cands = find_candidates(model)
    mask = find_mask_input(model)
    feeds = feeds_for(kind, 5)
    probed = run(probe_model(model, cands, mask), feeds)
    np.testing.assert_allclose(probed[sig.output.name], run(model, feeds)[sig.output.name], rtol=1e-5, atol=1e-6)
    rng = np.random.default_rng(1)
    for k, c in enumerate(cands):
        feats = probed[probe_name(k)]
        d = feats.shape[1]
        assert d == expected_feature_size(c), c
        head = ExitHead(index=k, tensor=c.tensor, layout=c.layout, elem_type=onnx.TensorProto.FLOAT,
                        mask_input=mask if c.layout == "btc" else None,
                        layers=[(rng.standard_normal((d, 8)).astype(np.float32), np.zeros(8, np.float32)),
                                (rng.standard_normal((8, sig.num_classes)).astype(np.float32),
                                 np.zeros(sig.num_classes, np.float32))],
                        gate_w=np.array([2.0, 1.0, -0.5], np.float32), gate_b=-1.0, pooling=c.pooling)
        # the head model reads the activation; reproduce it from a segment run
        seg_state = dict(feeds)
        for seg in build_segments(model, cands[: k + 1], [None] * (k + 1), mask)[: k + 1]:
            seg_state.update(run(seg.model, {n: seg_state[n] for n in seg.inputs}))
        hm = head_model(model, head, mask)
        got = run(hm, {i.name: seg_state[i.name] for i in hm.graph.input})
        want_logits, want_score = head_forward(head, feats)
        np.testing.assert_allclose(got[head.logits_name], want_logits, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got[head.score_name], want_score, rtol=1e-4, atol=1e-5)


def _heads_for(model, cands, sig, mask, thresholds, seed=0, feeds=None):
    rng = np.random.default_rng(seed)
    feeds = feeds if feeds is not None else feeds_for("cnn" if cands[0].layout == "nchw" else "transformer", 2)
    probed = run(probe_model(model, cands, mask), feeds)
    heads = []
    for k, (c, t) in enumerate(zip(cands, thresholds)):
        d = probed[probe_name(k)].shape[1]
        heads.append(ExitHead(index=k, tensor=c.tensor, layout=c.layout, elem_type=onnx.TensorProto.FLOAT,
                              mask_input=mask if c.layout == "btc" else None,
                              layers=[((0.02 * rng.standard_normal((d, sig.num_classes))).astype(np.float32),
                                       rng.standard_normal(sig.num_classes).astype(np.float32))],
                              gate_w=np.array([3.0, 2.0, -1.0], np.float32), gate_b=-1.5,
                              meta={"threshold": float(t)}, pooling=c.pooling))
    return heads


@pytest.mark.parametrize("name,opset", [("cnn", 17), ("cnn_opset11_batch1", 11), ("transformer_two_tensor_carry", 17)])
def test_conditional_form_matches_segmented_semantics(name, opset):
    build, kind = MODELS[name]
    model, sig = normalize(build())
    cands = find_candidates(model)[:3]
    mask = find_mask_input(model)
    feeds = feeds_for(kind, 40, seed=3)
    seg_scores = {}
    heads = _heads_for(model, cands, sig, mask, [0.0] * len(cands))
    segs = build_segments(model, cands, heads, mask)
    state = dict(feeds)
    for seg in segs:
        state.update(run(seg.model, {k: state[k] for k in seg.inputs}))
    for h in heads:
        seg_scores[h.index] = state[h.score_name]
    # thresholds at high score quantiles so that rows split between the exits and the end
    quantiles = [0.7, 0.9, 0.97]
    thresholds = [float(np.quantile(seg_scores[k], quantiles[k])) for k in range(len(heads))]
    heads = _heads_for(model, cands, sig, mask, thresholds)
    segs = build_segments(model, cands, heads, mask)
    cond = conditional_model(segs, model)
    onnx.checker.check_model(cond)
    out = run(cond, feeds)
    # reference semantics without compaction (equivalent: per-row decisions are independent)
    state = dict(feeds)
    for seg in segs:
        state.update(run(seg.model, {k: state[k] for k in seg.inputs}))
    want = state[sig.output.name].copy()
    want_idx = np.full(len(want), len(heads))
    for h, t in reversed(list(zip(heads, thresholds))):
        hit = state[h.score_name] >= np.float32(t)
        want[hit] = state[h.logits_name][hit]
        want_idx[hit] = h.index
    assert 0 < (want_idx < len(heads)).sum() < len(want), "thresholds must split the batch"
    np.testing.assert_allclose(out[sig.output.name], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[EXIT_INDEX], want_idx)
    # batch 1: the If actually skips the rest
    for i in range(5):
        one = run(cond, {k: v[i:i + 1] for k, v in feeds.items()})
        np.testing.assert_allclose(one[sig.output.name], want[i:i + 1], rtol=1e-5, atol=1e-5)
        assert one[EXIT_INDEX][0] == want_idx[i]


@pytest.mark.parametrize("mode", ["qdq", "qoperator"])
def test_quantized_model_is_cut_at_its_8_bit_activations(mode):
    # A statically quantized model (onnxruntime.quantization, both formats) has the float model's
    # exit points, each at the uint8 activation (in QDQ models the QuantizeLinear output, not its
    # float copies on either side): the weights' DequantizeLinear nodes are recomputed where
    # used, so nothing else is carried. Before, QDQ models had no candidate at all (every cut
    # carried every dequantized weight) and operator-form ones only float tensors near the input.
    float_model, _ = normalize(tiny_cnn(opset=13))
    model, sig = normalize(quantized_cnn(mode))
    cands = find_candidates(model)
    infos = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    assert cands[0].tensor == "x"
    assert len(cands) == len(find_candidates(float_model)), [c.tensor for c in cands]
    assert all(infos[c.tensor] == onnx.TensorProto.UINT8 and not c.side for c in cands[1:]), \
        [(c.tensor, infos.get(c.tensor), c.side) for c in cands]
    # Each segment keeps the quantized ops' inputs and outputs: ONNX Runtime (graph optimisations
    # on, as in run) runs the same integer kernels, and the rows come out bit-identical.
    feeds = feeds_for("cnn", 6, seed=3)
    ref = run(model, feeds)[sig.output.name]
    state = dict(feeds)
    for seg in build_segments(model, cands, [None] * len(cands), find_mask_input(model)):
        if seg.model.graph.node:
            state.update(run(seg.model, {k: state[k] for k in seg.inputs}))
    np.testing.assert_array_equal(state[sig.output.name], ref)
    # A head reads the 8-bit map cast to float.
    probed = run(probe_model(model, cands[1:2], None), feeds)
    assert probed[probe_name(0)].dtype == np.float32 and np.isfinite(probed[probe_name(0)]).all()


def _layernorm_mlp(seed: int = 0) -> onnx.ModelProto:
    """x[B,16] -> LayerNormalization -> 3 x (MatMul [-> Relu]) -> logits[B,4]: after static QDQ
    quantization, LayerNorm -> QuantizeLinear -> DequantizeLinear -> MatMul, as in a transformer."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(np.ones(16, np.float32), "g"), numpy_helper.from_array(np.zeros(16, np.float32), "b")]
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["h0"], axis=-1, name="ln")]
    h = "h0"
    for i, (a, o) in enumerate([(16, 256), (256, 256), (256, 4)]):
        inits.append(numpy_helper.from_array((rng.standard_normal((a, o)) / np.sqrt(a)).astype(np.float32), f"w{i}"))
        out = "logits" if i == 2 else f"m{i}"
        nodes.append(helper.make_node("MatMul", [h, f"w{i}"], [out], name=f"mm{i}"))
        if i < 2:
            nodes.append(helper.make_node("Relu", [out], [f"h{i + 1}"], name=f"relu{i}"))
            h = f"h{i + 1}"
    graph = helper.make_graph(nodes, "ln_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_quantized_model_never_cuts_at_a_dequantized_copy():
    # LayerNorm -> QuantizeLinear -> DequantizeLinear -> MatMul (a statically quantized
    # transformer's shape). A cut at the float DQ output starts the next segment with a float
    # MatMul where ONNX Runtime runs the original's integer kernel (0.45 off on the NLP sample in
    # QDQ): the input exit was cut there (the latest of equal-sized early cuts). Now no cut
    # carries a DequantizeLinear output, and the segments reproduce the model bit for bit.
    rows = {"x": np.random.default_rng(1).standard_normal((32, 16)).astype(np.float32)}
    model, sig = normalize(quantized(_layernorm_mlp(), rows, "qdq"))
    idx = GraphIndex.build(model)
    cands = find_candidates(model)
    assert len(cands) >= 2
    assert not [t for c in cands for t in c.carried
                if t in idx.producer and idx.nodes[idx.producer[t]].op_type == "DequantizeLinear"], cands
    feeds = {"x": np.random.default_rng(2).standard_normal((6, 16)).astype(np.float32) * 3}
    ref = run(model, feeds)[sig.output.name]
    for cut in cands:
        state = dict(feeds)
        for seg in build_segments(model, [cut], [None], None):
            if seg.model.graph.node:
                state.update(run(seg.model, {k: state[k] for k in seg.inputs}))
        np.testing.assert_array_equal(state[sig.output.name], ref, err_msg=cut.tensor)


def test_model_whose_rows_depend_on_their_batch_is_refused():
    # Dynamic quantization computes one scale over the whole batch: a row's output depends on the
    # rows run with it, which segments running fewer rows cannot reproduce. One line, naming the op.
    model, sig = prepare(quantized_cnn("dynamic"))
    feeds = feeds_for("cnn", 8, seed=4)
    feeds["x"][0] *= 8  # one row with a wider range moves the others' scale
    with pytest.raises(ExitcError, match=r"depends on the other rows in its batch.*DynamicQuantizeLinear"):
        check_rows_independent(model, sig, feeds, "q.onnx")
    model, sig = prepare(quantized_cnn("qdq"))
    check_rows_independent(model, sig, feeds, "q.onnx")  # static quantization: rows are independent


def test_float16_model_exits_answer_in_float16():
    # A model converted to float16 (onnxruntime.transformers' converter, float16 inputs and
    # outputs): heads compute in float32, but each exit's logits come out in the prediction
    # output's dtype, as the last segment's do, so the runtimes can scatter them into one array
    # and the conditional form's Where/If branches type-check (before: ORT refused to load it).
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model, sig = normalize(convert_float_to_float16(tiny_cnn(opset=17), keep_io_types=False))
    assert sig.output.elem_type == onnx.TensorProto.FLOAT16
    cands = find_candidates(model)[:3]
    feeds = {"x": feeds_for("cnn", 12, seed=5)["x"].astype(np.float16)}
    heads = _heads_for(model, cands, sig, None, [0.5] * len(cands), feeds=feeds)
    for h in heads:
        h.elem_type = onnx.TensorProto.FLOAT16
    segs = build_segments(model, cands, heads, None)
    state = dict(feeds)
    for seg in segs:
        state.update(run(seg.model, {k: state[k] for k in seg.inputs}))
    assert all(state[h.logits_name].dtype == np.float16 for h in heads)
    assert state[heads[0].score_name].dtype == np.float32
    out = run(conditional_model(segs, model), feeds)
    assert out[sig.output.name].dtype == np.float16 and out[sig.output.name].shape == (12, sig.num_classes)


def test_graph_whose_nodes_are_out_of_order_is_sorted_at_load(tmp_path):
    # onnxruntime.transformers' float16 converter (keep_io_types) appends the input Cast after the
    # nodes that read it; ONNX Runtime runs such files, the ONNX checker rejects them. load_model
    # sorts the nodes; a graph that cannot be sorted (a cycle) is still refused in one line.
    from exitc.passes.normalize import load_model

    m = tiny_cnn()
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes[3:] + nodes[:3])
    path = tmp_path / "unsorted.onnx"
    onnx.save(m, str(path))
    loaded = load_model(str(path))
    assert [n.name for n in loaded.graph.node] == [n.name for n in nodes]
    np.testing.assert_array_equal(run(loaded, feeds_for("cnn", 2))["logits"], run(tiny_cnn(), feeds_for("cnn", 2))["logits"])
    cyc = tiny_cnn()
    cyc.graph.node[0].input[0] = "h1"  # the stem reads a later block's output
    onnx.save(cyc, str(tmp_path / "cycle.onnx"))
    with pytest.raises(ExitcError, match="cycle.onnx: the ONNX checker rejects this model"):
        load_model(str(tmp_path / "cycle.onnx"))


def _layernorm_at_opset_14():
    """tiny_transformer with its opset lowered to 14: ONNX-domain LayerNormalization (ONNX's from
    opset 17) where ONNX Runtime's own LayerNormalization (from opset 1) runs it, as
    onnxruntime.transformers' fusions write it into a RoBERTa exported at opset 14."""
    m = tiny_transformer()
    m.opset_import[0].version = 14
    return m


def test_ops_only_onnx_runtime_defines_at_the_opset_pass_the_check(tmp_path):
    """Before: `exitc: error: ...: the ONNX checker rejects this model: No Op registered for
    LayerNormalization with domain_version of 14` for a model ONNX Runtime runs. An op neither
    defines is still refused in one line."""
    from exitc.passes.normalize import load_model, runtime_only_ops

    m = _layernorm_at_opset_14()
    with pytest.raises(Exception, match="No Op registered for LayerNormalization"):
        onnx.checker.check_model(m)
    path = tmp_path / "ln14.onnx"
    onnx.save(m, str(path))
    loaded = load_model(str(path))
    assert runtime_only_ops(loaded) == {"LayerNormalization"} and runtime_only_ops(tiny_transformer()) == set()
    feeds = transformer_feeds(4)
    model, sig = prepare(loaded)
    np.testing.assert_array_equal(run(model, feeds)["logits"], run(tiny_transformer(), feeds)["logits"])
    unknown = _layernorm_at_opset_14()
    unknown.graph.node[-1].op_type = "NoSuchOp"
    onnx.save(unknown, str(tmp_path / "unknown.onnx"))
    with pytest.raises(ExitcError, match="unknown.onnx: the ONNX checker rejects this model: No Op registered for "
                                         "NoSuchOp"):
        load_model(str(tmp_path / "unknown.onnx"))


def test_model_with_onnx_runtime_only_ops_compiles_exactly(tmp_path):
    """The opset-14 LayerNormalization model end to end: segments and the batch-1 form keep the
    op as the model has it, and full-depth rows equal the original's."""
    from exitc.driver import CompileOptions, compile_model
    from exitc.runtime import ExitModel

    onnx.save(_layernorm_at_opset_14(), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "calib.npz", **transformer_feeds(1200))
    out = str(tmp_path / "m.exitc")
    compile_model(str(tmp_path / "m.onnx"), str(tmp_path / "calib.npz"), out,
                  CompileOptions(target_acc=0.9, progress=False, never_slower=False), log=lambda *a: None)
    feeds = transformer_feeds(64, seed=3)
    ref = run(tiny_transformer(), feeds)["logits"]
    for conditional in (False, True):
        (got,), idx = ExitModel(out, use_conditional=conditional).run(feeds)
        end = idx == ExitModel(out).num_exits
        np.testing.assert_allclose(got[end], ref[end], rtol=1e-5, atol=1e-5)


def test_local_functions_are_inlined_and_compile_exactly(tmp_path):
    """Residual blocks written as calls to a local function (torch.onnx's
    export_modules_as_functions). Before: each call was one opaque node (no cut inside or between
    its ops' own tensors), and the batch-1 form failed to load ("ResBlock(-1) is not a registered
    function/op" inside its If bodies): `exitc: error: ... conditional.onnx: ONNX Runtime cannot
    load the model`. Now load_model inlines them; the compiled model is exact at full depth."""
    from exitc.passes.normalize import load_model
    from synthetic import cnn_with_functions, compile_on_noise

    model = cnn_with_functions()
    onnx.save(model, str(tmp_path / "fn.onnx"))
    loaded = load_model(str(tmp_path / "fn.onnx"))
    assert not loaded.functions and {n.op_type for n in loaded.graph.node} >= {"Conv", "Add"}
    feeds = feeds_for("cnn", 4)
    np.testing.assert_allclose(run(loaded, feeds)["logits"], run(tiny_cnn(blocks=4), feeds)["logits"], rtol=1e-5,
                               atol=1e-6)
    from exitc.runtime import ExitModel

    out, _, x, ref = compile_on_noise(model, tmp_path)
    for conditional in (False, True):
        (got,), idx = ExitModel(out, use_conditional=conditional).run({"x": x})
        end = idx == ExitModel(out).num_exits
        np.testing.assert_allclose(got[end], ref[end], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", [9, 7])
def test_weights_listed_as_inputs_compile_exactly(tmp_path, opset):
    """Before IR version 4 every initializer had to be a graph input as well (old PyTorch, MXNet
    and Caffe2 exports list all weights as inputs). Before: `exitc: internal error in emit:
    ValidationError: stem_w in initializer but not in graph input` (the derived graphs kept IR 3
    but not those inputs). Now the prepared model has no weight inputs and IR >= 4; compiled, it
    is exact at full depth, and its batch-1 form answers as its segments do. At opset 7 with a Pad
    (pads an attribute until opset 11) the version converter adds initializers of its own, which
    failed the same way inside it ('onnx.version_converter could not convert it: ... in
    initializer but not in graph input')."""
    from onnx import helper

    from exitc.runtime import ExitModel
    from synthetic import compile_on_noise

    m = tiny_cnn(opset=opset)
    if opset < 11:
        stem = next(n for n in m.graph.node if n.name == "stem_conv")
        stem.input[0] = "x_padded"
        m.graph.node.insert(0, helper.make_node("Pad", ["x"], ["x_padded"], pads=[0, 0, 1, 1, 0, 0, 1, 1],
                                                mode="constant", value=0.0, name="pad"))
    m.ir_version = 3
    for t in m.graph.initializer:
        m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    onnx.checker.check_model(m)
    model, sig = prepare(m)
    assert [i.name for i in model.graph.input] == ["x"] and model.ir_version >= 4 and [i.name for i in sig.inputs] == ["x"]
    out, _, x, ref = compile_on_noise(m, tmp_path)
    (full,), _ = ExitModel(out, full_depth=True).run({"x": x})
    np.testing.assert_allclose(full, ref, rtol=1e-5, atol=1e-5)
    (seg,), seg_idx = ExitModel(out, use_conditional=False).run({"x": x[:8]})
    batch1 = ExitModel(out)  # batch-1 requests run the conditional form where the artifact has one
    for i in range(8):
        (row,), idx = batch1.run({"x": x[i:i + 1]})
        assert idx[0] == seg_idx[i]
        np.testing.assert_allclose(row[0], seg[i], rtol=1e-5, atol=1e-5)
