"""Padding of token models (exitc.passes.sequence): the sequence axis is opened only where the
opened graph computes what the original does, runtimes split a batch by length and cut each part
to its longest row, and both runtimes do it alike."""

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from exitc.driver import CompileOptions, compile_model
from exitc.passes.normalize import prepare
from exitc.passes.sequence import (check_open_sequence, find_sequence_axis, length_chunks, open_sequence,
                                   open_sequence_axis, row_lengths, trim_feeds, trimmed_length)
from exitc.profile import TrimTiming
from exitc.runtime import ExitModel

from synthetic import tiny_transformer, transformer_feeds


def run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {k: feeds[k] for k in names})[0]


def test_row_lengths_and_trimmed_length():
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]])
    assert row_lengths(mask).tolist() == [2, 4, 0, 3]
    assert trimmed_length(mask[[0, 2]]) == 2
    assert trimmed_length(mask[[2]]) == 1  # never an empty sequence


def test_find_sequence_axis_needs_a_padded_mask():
    model, sig = prepare(tiny_transformer())
    feeds = transformer_feeds(40)
    axis = find_sequence_axis(sig.inputs, feeds)
    assert axis.inputs == ("input_ids", "attention_mask") and axis.mask == "attention_mask" and axis.length == 8
    full = dict(feeds, attention_mask=np.ones_like(feeds["attention_mask"]))
    assert find_sequence_axis(sig.inputs, full) is None          # no row padded: nothing to gain
    holes = dict(feeds, attention_mask=feeds["attention_mask"].copy())
    holes["attention_mask"][:, 0] = 0
    assert find_sequence_axis(sig.inputs, holes) is None         # left padding / holes: not a prefix
    assert find_sequence_axis(sig.inputs, dict(feeds, attention_mask=feeds["attention_mask"] * 2)) is None


@pytest.mark.parametrize("seq,hidden", [(8, 16), (16, 16)])
def test_opened_graph_equals_the_original_at_every_length(seq, hidden):
    """(16, 16): the position table [1, L, hidden] has L twice; only the first is the length."""
    src = tiny_transformer(seq=seq, hidden=hidden)
    model, sig = prepare(src)
    feeds = transformer_feeds(64, seq=seq)
    opened, axis, why = open_sequence(model, sig.inputs, "logits", feeds)
    assert why is None and axis is not None
    lengths = row_lengths(feeds["attention_mask"])
    for n in sorted(set(lengths.tolist())):
        rows = np.flatnonzero(lengths <= n)
        part = {k: v[rows] for k, v in feeds.items()}
        cut = {k: v[:, :n] for k, v in part.items()}
        np.testing.assert_allclose(run(opened, cut), run(model, part), rtol=1e-4, atol=1e-5)


def test_a_model_that_reads_its_padding_stays_at_full_length():
    """Mean over every position, padding included: cutting changes the output, so the check
    refuses and the compiler keeps the padded length (and says why)."""
    L, H, C = 6, 4, 3
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor("emb", TensorProto.FLOAT, [20, H], rng.standard_normal(20 * H).tolist()),
             helper.make_tensor("w", TensorProto.FLOAT, [H, C], rng.standard_normal(H * C).tolist()),
             helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
             helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["e", "axes"], ["p"], keepdims=0),
             helper.make_node("MatMul", ["p", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "unmasked", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", L]),
                                                  helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", L])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", C])], initializer=inits)
    src = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model, sig = prepare(src)
    feeds = transformer_feeds(32, seq=L, vocab=20)
    feeds["input_ids"] = np.where(feeds["attention_mask"] == 1, feeds["input_ids"], 1)  # a pad token that is not 0
    opened, axis, why = open_sequence(model, sig.inputs, "logits", feeds)
    assert axis is None and opened is model and "outputs differ" in why


def test_check_names_a_graph_that_does_not_run_shorter():
    model, sig = prepare(tiny_transformer())
    feeds = transformer_feeds(32)
    axis = find_sequence_axis(sig.inputs, feeds)
    # Opening the inputs alone leaves the position table at length 8: it cannot run shorter.
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    for v in broken.graph.input:
        v.type.tensor_type.shape.dim[1].dim_param = "s"
    assert "does not run at length" in check_open_sequence(model, broken, axis, feeds, "logits")
    assert check_open_sequence(model, open_sequence_axis(model, axis), axis, feeds, "logits") is None


def _cost(chunks, lengths, call_rows, full):
    return sum(call_rows + len(c) * lengths[c].max() / full for c in chunks)


@pytest.mark.parametrize("seed", range(20))
def test_length_chunks_is_the_cheapest_split(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 8))
    lengths = rng.integers(1, 33, size=n)
    call_rows = float(rng.choice([0.0, 0.3, 1.0, 4.0]))
    chunks = length_chunks(lengths, call_rows, 32)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(n))
    order = np.argsort(lengths, kind="stable")
    best = min(_cost([order[a:b] for a, b in zip((0,) + cuts, cuts + (n,))], lengths, call_rows, 32)
               for k in range(n) for cuts in itertools.combinations(range(1, n), k))
    assert _cost(chunks, lengths, call_rows, 32) == pytest.approx(best)


def test_length_chunks_known_answers():
    """The same cases as runtime/tests/test_sequence.cpp: both runtimes split alike."""
    def as_lists(chunks):
        return [c.tolist() for c in chunks]

    assert as_lists(length_chunks(np.array([2, 100, 2, 100, 2]), 1.0, 100)) == [[0, 2, 4], [1, 3]]
    assert as_lists(length_chunks(np.array([2, 100, 2, 100, 2]), 1000.0, 100)) == [[0, 2, 4, 1, 3]]
    assert as_lists(length_chunks(np.array([50, 10, 30]), 0.0, 100)) == [[1], [2], [0]]
    assert as_lists(length_chunks(np.array([7]), 1.0, 8)) == [[0]]
    assert as_lists(length_chunks(np.array([], np.int64), 1.0, 8)) == [[]]
    assert as_lists(length_chunks(np.array([5, 5, 5, 5]), 0.0, 8)) == [[0, 1, 2, 3]]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seq")
    src = tiny_transformer(layers=4, seq=16)
    onnx.save(src, tmp / "m.onnx")
    np.savez(tmp / "calib.npz", **transformer_feeds(1200, seq=16))
    out = str(tmp / "m.exitc")
    res = compile_model(str(tmp / "m.onnx"), str(tmp / "calib.npz"), out,
                        CompileOptions(target_acc=0.9, progress=False, never_slower=False, trim_padding="always"),
                        log=lambda *a: None)
    return src, out, res


def test_artifact_records_the_sequence_and_runs_each_part_cut(compiled, monkeypatch):
    src, out, res = compiled
    seq = res.manifest["sequence"]
    assert seq["inputs"] == ["input_ids", "attention_mask"] and seq["mask"] == "attention_mask" and seq["length"] == 16
    assert seq["call_rows"] >= 0.5
    model = ExitModel(out, use_conditional=False)
    seen = []
    for sess in model._sessions[:1]:
        inner = sess.run
        monkeypatch.setattr(sess, "run", lambda feeds, names, inner=inner: (seen.append(feeds["attention_mask"].shape),
                                                                            inner(feeds, names))[1])
    feeds = transformer_feeds(40, seq=16, seed=5)
    outs, idx = model.run(feeds)
    lengths = row_lengths(feeds["attention_mask"])
    assert sum(s[0] for s in seen) == 40 and all(s[1] < 16 or lengths.max() == 16 for s in seen)
    ref = run(src, feeds)
    end = idx == model.num_exits
    np.testing.assert_allclose(outs[0][end], ref[end], rtol=1e-4, atol=1e-4)


def test_cpp_runtime_equals_the_reference_on_padded_batches(compiled):
    pytest.importorskip("exitc._exitc_runtime")
    from exitc.cpp_runtime import CppExitModel

    _, out, _ = compiled
    py, cpp = ExitModel(out), CppExitModel(out)
    for seed, n in [(1, 1), (2, 3), (3, 17), (4, 64)]:
        feeds = transformer_feeds(n, seq=16, seed=seed)
        (a,), ia = py.run(feeds)
        (b,), ib = cpp.run(feeds)
        assert (ia == ib).all()
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_no_trim_padding_keeps_the_full_length(tmp_path):
    onnx.save(tiny_transformer(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **transformer_feeds(600))
    res = compile_model(str(tmp_path / "m.onnx"), str(tmp_path / "calib.npz"), str(tmp_path / "m.exitc"),
                        CompileOptions(target_acc=0.9, progress=False, never_slower=False, trim_padding=False),
                        log=lambda *a: None)
    assert res.manifest["sequence"] is None


def test_trim_feeds_leaves_other_inputs():
    feeds = {"ids": np.arange(12).reshape(3, 4), "m": np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]]),
             "other": np.ones((3, 5))}
    from exitc.passes.sequence import SequenceAxis

    cut = trim_feeds(feeds, SequenceAxis(("ids", "m"), "m", 4))
    assert cut["ids"].shape == (3, 2) and cut["m"].shape == (3, 2) and cut["other"] is feeds["other"]


def _export_text_classifier(tmp_path, model, name: str, exporter: str, feeds: dict, optimize: bool = True):
    """A transformers sequence classifier (`model`) exported by `exporter` ("torchscript" or
    "dynamo") with input_ids and attention_mask at the length of `feeds` (batch open), as users'
    exporters write it; the ONNX model."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).logits

    args = (torch.from_numpy(feeds["input_ids"][:2]), torch.from_numpy(feeds["attention_mask"][:2]))
    path = tmp_path / f"{name}_{exporter}_{feeds['input_ids'].shape[1]}.onnx"
    names = ["input_ids", "attention_mask"]
    if exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.onnx.export(Logits(), args, str(path), dynamo=True, optimize=optimize, input_names=names,
                          output_names=["logits"], dynamic_shapes={n: {0: batch} for n in names})
    else:
        torch.onnx.export(Logits(), args, str(path), dynamo=False, opset_version=14, input_names=names,
                          output_names=["logits"], dynamic_axes={n: {0: "batch"} for n in names + ["logits"]})
    return onnx.load(str(path))


def _tiny_bert(tmp_path, exporter: str, seq: int, attn: str = "eager"):
    """A random 2-layer BERT classifier exported at a fixed length `seq` (_export_text_classifier)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64, num_labels=4,
                                  attn_implementation=attn)
    feeds = transformer_feeds(64, seq=seq, vocab=100, seed=1)
    model = transformers.BertForSequenceClassification(cfg).eval()
    return _export_text_classifier(tmp_path, model, "bert", exporter, feeds, optimize=False), feeds


def _assert_opens_exactly(src, feeds: dict, length: int) -> None:
    """`src` prepared and opened along its token axis (padded to `length`) gives the original's
    outputs on rows cut to the shortest, the median and the full length."""
    model, sig = prepare(src)
    opened, axis, why = open_sequence(model, sig.inputs, "logits", feeds)
    assert why is None and axis is not None and axis.length == length
    lengths = row_lengths(feeds["attention_mask"])
    for n in (int(lengths.min()), int(np.median(lengths)), length):
        rows = np.flatnonzero(lengths <= n)
        part = {k: v[rows] for k, v in feeds.items()}
        np.testing.assert_allclose(run(opened, {k: v[:, :n] for k, v in part.items()}), run(model, part),
                                   rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("exporter,seq,attn", [("torchscript", 24, "eager"), ("torchscript", 32, "sdpa"),
                                               ("dynamo", 24, "eager")])
def test_exported_bert_runs_cut_to_its_rows(tmp_path, exporter, seq, attn):
    """BERT as the TorchScript and dynamo exporters write it at a fixed length (position ids,
    mask ranges and Reshape targets hold L; seq 32 == hidden 32 as well): opened, it gives the
    original's outputs at every length."""
    src, feeds = _tiny_bert(tmp_path, exporter, seq, attn)
    _assert_opens_exactly(src, feeds, seq)


def test_trim_timing_arithmetic():
    t = TrimTiming(32, padded=(2.0, 10.0), opened=(2.5, 11.0), cut=(1.0, 5.5))
    assert t.factors() == pytest.approx((0.4, 0.5))            # cut / opened: what the profile's costs are scaled by
    assert t.padded_factors() == pytest.approx((0.8, 10 / 11))  # the user's model / the opened graph
    assert t.relative(0.25) == pytest.approx(0.75 * 0.55 + 0.25 * 0.5) and t.pays(0.25)
    same = TrimTiming(32, (2.0, 10.0), (2.0, 10.0), (1.98, 9.8))  # 2% faster: within the noise
    assert not same.pays(0.25)
    assert t.to_json() == {"padded": {"batch1": 2.0, "batch32": 10.0}, "opened": {"batch1": 2.5, "batch32": 11.0},
                           "cut": {"batch1": 1.0, "batch32": 5.5}}


def _compile_tokens(tmp_path, **opts):
    onnx.save(tiny_transformer(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **transformer_feeds(600))
    lines = []
    res = compile_model(str(tmp_path / "m.onnx"), str(tmp_path / "calib.npz"), str(tmp_path / "m.exitc"),
                        CompileOptions(target_acc=0.9, progress=False, never_slower=False, **opts), log=lines.append)
    return res, lines


def test_auto_runs_rows_padded_where_cutting_measures_no_faster(tmp_path, monkeypatch):
    """--trim-padding auto (the default): the opened graph is exact here, but cut to the rows it
    measured slower than the padded model: rows run at the padded length, and the log says so."""
    import exitc.driver as driver

    slow = TrimTiming(32, padded=(1e-3, 1e-2), opened=(1e-3, 1e-2), cut=(0.9e-3, 1.1e-2))
    monkeypatch.setattr(driver, "measure_trimming", lambda *a, **k: slow)
    res, lines = _compile_tokens(tmp_path)
    assert res.manifest["sequence"] is None
    assert "trimming" not in res.profile.timings and "length_factors" not in res.profile.timings
    said = [line for line in lines if "rows run at the padded length" in line]
    assert len(said) == 1 and "1.10x the padded model's time at batch 32 and 0.90x at batch 1" in said[0]


def test_auto_prices_cutting_as_measured(tmp_path, monkeypatch):
    """Where cutting pays, the profile's costs are scaled by what it measured (not estimated from
    the rows' lengths), and speedups stay relative to the user's model as measured."""
    import exitc.driver as driver

    fast = TrimTiming(32, padded=(2e-3, 2e-2), opened=(2.5e-3, 2.5e-2), cut=(1e-3, 1e-2))
    monkeypatch.setattr(driver, "measure_trimming", lambda *a, **k: fast)
    res, _ = _compile_tokens(tmp_path)
    assert res.manifest["sequence"] is not None
    b = res.profile.batch_size
    assert res.profile.timings["trimming"] == fast.to_json()
    assert res.profile.timings["length_factors"] == pytest.approx({"batch1": 0.4, f"batch{b}": 0.4})
    measured = res.profile.timings["original"]
    assert res.profile.user_original.at(b) == pytest.approx(measured[f"batch{b}"] * 0.8, rel=1e-6)


def test_always_keeps_cutting_without_timing_it(tmp_path, monkeypatch):
    import exitc.driver as driver

    def not_called(*a, **k):
        raise AssertionError("--trim-padding always measured the trimming")

    monkeypatch.setattr(driver, "measure_trimming", not_called)
    res, _ = _compile_tokens(tmp_path, trim_padding="always")
    assert res.manifest["sequence"] is not None and "trimming" not in res.profile.timings


def test_measure_trimming_runs_the_cut_graph_on_cut_rows(monkeypatch):
    """The measurement times the opened graph on rows cut as runtimes cut them (shorter than the
    padded length where a batch's rows are), and the padded model at the padded length."""
    import exitc.profile as profile

    model, sig = prepare(tiny_transformer(seq=16))
    feeds = transformer_feeds(64, seq=16)
    opened, axis, why = open_sequence(model, sig.inputs, sig.output.name, feeds)
    assert why is None
    seen = {"original model": set(), "opened graph": set()}
    real = profile.make_session

    def recording(m, label):
        sess = real(m, label)
        inner = sess.run
        sess.run = lambda f, *a, inner=inner: (seen[label].add(f["attention_mask"].shape[1]), inner(f, *a))[1]
        return sess

    monkeypatch.setattr(profile, "make_session", recording)
    t = profile.measure_trimming(model, opened, axis, feeds, 32)
    assert t.batch_size == 32 and min(t.padded + t.opened + t.cut) > 0
    assert seen["original model"] == {16} and 16 in seen["opened graph"] and min(seen["opened graph"]) < 16


def test_trim_padding_values():
    from exitc.errors import ExitcError

    for given, meant in ((True, "auto"), (False, "never"), ("always", "always")):
        opts = CompileOptions(trim_padding=given)
        opts.validate()
        assert opts.trim_padding == meant
    with pytest.raises(ExitcError, match="--trim-padding 'sometimes': expected one of auto, always, never"):
        CompileOptions(trim_padding="sometimes").validate()


def _tiny_gpt2(tmp_path, exporter: str, seq: int, hidden: int):
    """A random 2-layer GPT-2 classifier (pooled at the last real token) exported at a fixed
    length `seq` (_export_text_classifier)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=hidden, n_layer=2, n_head=2, n_positions=64, num_labels=4,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    feeds = transformer_feeds(64, seq=seq, vocab=100, seed=1)
    feeds["input_ids"] = np.where(feeds["attention_mask"] == 1, np.maximum(feeds["input_ids"], 3), 0)
    model = transformers.GPT2ForSequenceClassification(cfg).eval()
    return _export_text_classifier(tmp_path, model, "gpt2", exporter, feeds), feeds


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_hidden_size_equal_to_the_length_is_told_apart(tmp_path, exporter):
    """GPT-2 reshapes its state to [-1, hidden] before each Gemm; with hidden == L (32 and 32)
    that constant holds L too, and the dynamo exporter shares one [-1, 32] between that Reshape
    and the token ids' (where 32 is the length). Before: 'the opened graph does not run at length
    N', rows ran at the padded length. Now each use has its own copy and the constants behind the
    node ONNX Runtime names are repaired: the opened graph gives the original's outputs at every
    length."""
    src, feeds = _tiny_gpt2(tmp_path, exporter, seq=32, hidden=32)
    _assert_opens_exactly(src, feeds, 32)


def _reshape_gemm_graph():
    """x -> Reshape(t) -> Gemm(w) -> Reshape(t) -> Gemm(w) -> y; ids -> Reshape(t) -> Gather -> e,
    one shared target t = [-1, 4]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    e = helper.make_tensor_value_info("e", TensorProto.FLOAT, None)
    g = helper.make_graph([
        helper.make_node("Reshape", ["x", "t"], ["r0"], name="flat0"),
        helper.make_node("Gemm", ["r0", "w"], ["g0"], name="gemm0"),
        helper.make_node("Reshape", ["g0", "t"], ["r1"], name="flat1"),
        helper.make_node("Gemm", ["r1", "w"], ["y"], name="gemm1"),
        helper.make_node("Reshape", ["ids", "t"], ["i"], name="flat_ids"),
        helper.make_node("Gather", ["table", "i"], ["e"], name="lookup")], "g", [x, ids], [y, e],
        [numpy_helper.from_array(np.array([-1, 4], np.int64), "t"),
         numpy_helper.from_array(np.eye(4, dtype=np.float32), "w"),
         numpy_helper.from_array(np.ones((10, 3), np.float32), "table")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_shared_constants_are_one_per_use_and_alike_ones_are_repaired_together():
    """unshare_small_constants gives each reading node its own copy of a shared small integer
    constant (the graph computes the same; the given model is unchanged); a repair extends to the
    copies in the same construct (a Reshape read by a Gemm), not to the same values elsewhere (the
    Reshape read by a Gather)."""
    from exitc.passes.sequence import _alike, unshare_small_constants

    m = _reshape_gemm_graph()
    u = unshare_small_constants(m)
    targets = [n.input[1] for n in u.graph.node if n.op_type == "Reshape"]
    assert len(set(targets)) == 3 and "t" not in {t.name for t in u.graph.initializer}
    assert [n.input[1] for n in m.graph.node if n.op_type == "Reshape"] == ["t", "t", "t"]
    feeds = {"x": np.arange(8, dtype=np.float32).reshape(2, 4), "ids": np.array([[1, 2, 3, 4], [5, 6, 7, 8]])}
    for a, b in zip(run_all(m, feeds), run_all(u, feeds)):
        np.testing.assert_array_equal(a, b)
    gemm_target, _, ids_target = targets
    assert _alike(u, frozenset({gemm_target})) == set(targets[:2])
    assert _alike(u, frozenset({ids_target})) == {ids_target}


def test_constants_behind_a_failing_node():
    """What a repair changes: the constants holding the length that a named node reads, directly
    or through REPAIR_DEPTH nodes upstream; a node the pass added stands for its constant."""
    from exitc.passes.sequence import _constants_behind, _failed_node

    m = _reshape_gemm_graph()
    assert _failed_node("Non-zero status code returned while running Gemm node. Name:'gemm0' Status Message: K") == "gemm0"
    assert _failed_node("outputs differ at length 3") is None
    assert _constants_behind(m, "gemm0", 4) == {"w", "t"}   # w: [4, 4] has an axis of 4 too
    assert _constants_behind(m, "flat_ids", 4) == {"t"} and _constants_behind(m, "flat_ids", 5) == frozenset()
    assert _constants_behind(m, "exitc_seq_t_i64", 4) == {"t"}
    assert _constants_behind(m, "nowhere", 4) == frozenset() and _constants_behind(m, None, 4) == frozenset()


def run_all(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {k: feeds[k] for k in [i.name for i in sess.get_inputs()]})


def test_bert_fused_by_onnxruntime_runs_cut_to_its_rows(tmp_path):
    """BERT after onnxruntime.transformers' optimizer (what `optimum`'s ORT optimisation also
    writes): EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu from ORT's own
    domain. With hidden == L (32 and 32) the embedding tables have an axis of size L; they are
    weights of the fused op, not positions (before: sliced to the runtime length, the opened graph
    failed to load, "word_embedding should have 2 dimensions and dimension size is known", and
    rows ran at the padded length). Opened, it gives the original's outputs at every length."""
    pytest.importorskip("torch")
    from onnxruntime.transformers.optimizer import optimize_model

    src, feeds = _tiny_bert(tmp_path, "torchscript", 32)
    plain = tmp_path / "bert.onnx"
    onnx.save(src, str(plain))
    fused_path = tmp_path / "bert_fused.onnx"
    optimize_model(str(plain), model_type="bert", num_heads=2, hidden_size=32, opt_level=1).save_model_to_file(
        str(fused_path))
    fused = onnx.load(str(fused_path))
    assert {"EmbedLayerNormalization", "Attention", "SkipLayerNormalization"} <= {
        n.op_type for n in fused.graph.node if n.domain == "com.microsoft"}
    _assert_opens_exactly(fused, feeds, 32)
