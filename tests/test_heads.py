"""One definition of an exit head: passes.heads.head_forward (numpy) is what distillation, the
policy and the tests compute; the ONNX builder (passes.heads.head_nodes, run in ORT) and the torch
builder (passes.fx.ExitHeadModule.from_head) must compute the same function, for every layout,
layer kind, gate kind and output form. The pooled features come from the probe's pooling nodes,
checked against an independent numpy pooling (synthetic.numpy_pooled)."""

from __future__ import annotations

import copy
import dataclasses
import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from exitc.passes.heads import ExitHead, gate_features, head_forward, head_nodes, nchw_pooling, pooling_nodes, softmax
from exitc.predictions import KINDS, LOG_PROBABILITIES, LOGITS, PROBABILITIES

from synthetic import numpy_pooled

try:
    import torch

    from exitc.passes.fx import ExitHeadModule, pool_features
except ImportError:  # torch is optional; the ONNX-vs-numpy half still runs
    torch = None

CLASSES = 5
ROWS = 7
RTOL, ATOL = 1e-4, 1e-5  # float32: ORT, numpy and torch sum in different orders

# layout name -> (layout, activation shape without batch, with mask, pooling)
LAYOUTS = {
    "nchw_grid": ("nchw", (8, 8, 8), False, nchw_pooling((8, 8), 8)),
    "nchw_filters": ("nchw", (3, 32, 32), False, nchw_pooling((32, 32), 3)),
    "ncl_grid": ("ncl", (6, 40), False, nchw_pooling((40, 1), 6)),
    "ncl_signal": ("ncl", (1, 64), False, nchw_pooling((64, 1), 1)),
    "btc_mask": ("btc", (6, 8), True, None),
    "btc_nomask": ("btc", (6, 8), False, None),
    "tbc": ("tbc", (6, 8), False, None),  # [time, batch, C]: the activation is time-major
    "bf": ("bf", (10,), False, None),
}


def test_layouts_cover_both_nchw_poolings():
    assert LAYOUTS["nchw_grid"][3].grid is not None and LAYOUTS["nchw_grid"][3].filters is None
    assert LAYOUTS["nchw_filters"][3].filters is not None and LAYOUTS["nchw_filters"][3].grid is None
    # 1-D maps: cells along the length only (8 for a 6-channel map, 16 for a one-channel signal)
    assert LAYOUTS["ncl_grid"][3].grid == (5, 1) and LAYOUTS["ncl_signal"][3].grid == (4, 1)


def make_case(layout_name: str, kind: str, chained: bool, prediction_kind: str, seed: int = 0):
    """(head, feeds): a head with random parameters on a random activation (named "act"), with
    the attention mask ("mask", int64, some rows padded) and the previous exit's probabilities
    ("prev") where the case needs them."""
    layout, shape, with_mask, pooling = LAYOUTS[layout_name]
    rng = np.random.default_rng(seed)
    act_shape = (shape[0], ROWS) + shape[1:] if layout == "tbc" else (ROWS,) + shape
    feeds = {"act": rng.standard_normal(act_shape).astype(np.float32)}
    if with_mask:
        mask = np.ones((ROWS, shape[0]), np.int64)
        for r in range(ROWS):
            mask[r, 1 + r % (shape[0] - 1):] = 0
        feeds["mask"] = mask
    if chained:
        feeds["prev"] = softmax(2 * rng.standard_normal((ROWS, CLASSES))).astype(np.float32)
    d = len(numpy_pooled(feeds["act"][:1], layout, feeds.get("mask", [None])[:1] if with_mask else None, pooling)[0])
    widths = [d, CLASSES] if kind == "linear" else [d, 16, CLASSES]
    layers = [((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), rng.standard_normal(b).astype(np.float32))
              for a, b in zip(widths, widths[1:])]
    gate_w = rng.standard_normal(6 if chained else 3).astype(np.float32)
    head = ExitHead(index=1, tensor="act", layout=layout, elem_type=TensorProto.FLOAT,
                    mask_input="mask" if with_mask else None, layers=layers, gate_w=gate_w,
                    gate_b=float(rng.standard_normal()), prediction_kind=prediction_kind, kind=kind, pooling=pooling,
                    prev_probs="prev" if chained else None, export_probs=True)
    return head, feeds


def run_onnx(head: ExitHead, feeds: dict) -> dict:
    """The head's ONNX nodes (head_nodes) and the probe's pooling (pooling_nodes) in one graph, run
    in ORT: {"pooled", logits, score, probs}."""
    nodes, inits, outs = head_nodes(head, TensorProto.INT64 if head.mask_input else None)
    pnodes, pinits, pooled = pooling_nodes(head.tensor, head.layout, head.elem_type, head.mask_input, "probe",
                                           TensorProto.INT64 if head.mask_input else None, head.pooling)
    pnodes.append(helper.make_node("Identity", [pooled], ["pooled"], name="probe_out"))
    outs = outs + [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", None])]
    def dims(name, v):  # the batch axis: 1 for a time-major activation
        return [v.shape[0], "batch"] + list(v.shape[2:]) if name == "act" and head.layout == "tbc" else ["batch"] + list(v.shape[1:])

    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64 if name == "mask" else TensorProto.FLOAT,
                                            dims(name, v)) for name, v in feeds.items()]
    graph = helper.make_graph(nodes + pnodes, "head", inputs, outs, initializer=inits + pinits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in outs]
    return dict(zip(names, sess.run(names, feeds)))


def run_torch(head: ExitHead, feeds: dict):
    module = ExitHeadModule.from_head(head)
    with torch.no_grad():
        mask = torch.from_numpy(feeds["mask"]) if "mask" in feeds else None
        prev = torch.from_numpy(feeds["prev"]) if "prev" in feeds else None
        out, score = module(torch.from_numpy(feeds["act"]), mask, prev)
    return out.numpy(), score.numpy()


CASES = list(itertools.product(LAYOUTS, ["linear", "mlp"], [False, True], KINDS))


@pytest.mark.parametrize("layout_name,kind,chained,prediction_kind", CASES)
def test_onnx_numpy_and_torch_heads_agree(layout_name, kind, chained, prediction_kind):
    head, feeds = make_case(layout_name, kind, chained, prediction_kind)
    got = run_onnx(head, feeds)
    pooled = got["pooled"]
    np.testing.assert_allclose(pooled, numpy_pooled(feeds["act"], head.layout, feeds.get("mask"), head.pooling),
                               rtol=RTOL, atol=ATOL)
    want_out, want_score = head_forward(head, pooled, feeds.get("prev"))
    assert want_score.shape == (ROWS,) and 0.02 < want_score.mean() < 0.98 or want_score.std() > 0.01
    np.testing.assert_allclose(got[head.logits_name], want_out, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got[head.score_name], want_score, rtol=RTOL, atol=ATOL)
    want_probs = softmax(want_out)
    if prediction_kind == PROBABILITIES:
        want_probs = want_out
    elif prediction_kind == LOG_PROBABILITIES:  # the head answers like a LogSoftmax: exp sums to 1
        assert (want_out <= 0).all()
        np.testing.assert_allclose(np.exp(want_out.astype(np.float64)).sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got[head.probs_name], want_probs, rtol=RTOL, atol=ATOL)
    if torch is not None:
        np.testing.assert_allclose(pool_features(torch.from_numpy(feeds["act"]), head.layout,
                                                 torch.from_numpy(feeds["mask"]) if "mask" in feeds else None,
                                                 head.pooling).numpy(), pooled, rtol=RTOL, atol=ATOL)
        t_out, t_score = run_torch(head, feeds)
        np.testing.assert_allclose(t_out, want_out, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(t_score, want_score, rtol=RTOL, atol=ATOL)


def _perturbations(head: ExitHead):
    """Copies of `head` with one parameter changed a little."""
    w = copy.deepcopy(head)
    w.layers[-1][0][:, 0] += 0.5  # a whole column: a single weight may sit on a dead hidden unit
    b = copy.deepcopy(head)
    b.layers[0][1][:] -= 1.0  # linear: shifts the logits; mlp: silences hidden units at the ReLU
    g = copy.deepcopy(head)
    g.gate_w[-1] += 0.5
    gb = copy.deepcopy(head)
    gb.gate_b += 0.1
    return {"last weight": w, "first bias": b, "last gate weight": g, "gate bias": gb}


@pytest.mark.parametrize("layout_name,kind,chained", [("nchw_grid", "mlp", True), ("btc_mask", "linear", False),
                                                       ("bf", "mlp", False)])
def test_a_perturbed_parameter_is_seen(layout_name, kind, chained):
    """The comparisons above can fail: one parameter changed in the numpy copy (or in the head a
    torch module is built from) makes the outputs differ beyond the tolerance."""
    head, feeds = make_case(layout_name, kind, chained, LOGITS)
    got = run_onnx(head, feeds)
    for what, other in _perturbations(head).items():
        out, score = head_forward(other, got["pooled"], feeds.get("prev"))
        differs = not (np.allclose(out, got[head.logits_name], rtol=RTOL, atol=ATOL)
                       and np.allclose(score, got[head.score_name], rtol=RTOL, atol=ATOL))
        assert differs, f"numpy forward with a changed {what} still matched"
        if torch is not None:
            t_out, t_score = run_torch(other, feeds)
            assert not (np.allclose(t_out, got[head.logits_name], rtol=RTOL, atol=ATOL)
                        and np.allclose(t_score, got[head.score_name], rtol=RTOL, atol=ATOL)), what


def test_chained_gate_reads_the_previous_probabilities():
    """A chained gate's score moves with `prev` (in ORT, numpy and torch alike), a plain one doesn't."""
    head, feeds = make_case("bf", "linear", True, LOGITS)
    other = dict(feeds, prev=feeds["prev"][::-1].copy())
    a, b = run_onnx(head, feeds), run_onnx(head, other)
    assert not np.allclose(a[head.score_name], b[head.score_name], atol=1e-3)
    np.testing.assert_allclose(b[head.score_name], head_forward(head, b["pooled"], other["prev"])[1], rtol=RTOL, atol=ATOL)
    assert gate_features(softmax(a[head.logits_name]), feeds["prev"]).shape == (ROWS, 6)
    if torch is not None:
        np.testing.assert_allclose(run_torch(head, other)[1], b[head.score_name], rtol=RTOL, atol=ATOL)
        with pytest.raises(ValueError, match="previous exit"):
            run_torch(head, {k: v for k, v in feeds.items() if k != "prev"})


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_from_head_keeps_the_old_constructor_and_threshold():
    head, _ = make_case("nchw_grid", "linear", False, PROBABILITIES)
    head.meta["threshold"] = 0.75
    m = ExitHeadModule.from_head(head)
    assert m.threshold == 0.75 and m.prediction_kind == PROBABILITIES and m.pooling == head.pooling and not m.chained
    old = ExitHeadModule(head.layout, head.layers, head.gate_w, head.gate_b, 0.75, PROBABILITIES, head.pooling)
    for name, buf in m.named_buffers():
        np.testing.assert_array_equal(buf.numpy(), dict(old.named_buffers())[name].numpy())
    with pytest.raises(ValueError, match="3 \\(plain\\) or 6"):
        ExitHeadModule("bf", head.layers, np.zeros(4, np.float32), 0.0)


@pytest.mark.parametrize("class_dims", [(CLASSES, 1, 1), (1, CLASSES)])
def test_heads_answer_in_the_originals_shape(class_dims):
    # An original answering [batch, classes, 1, 1] or [batch, 1, classes]: so does every head.
    head, feeds = make_case("nchw_grid", "mlp", False, LOG_PROBABILITIES)
    flat = head_forward(head, run_onnx(head, feeds)["pooled"])[0]
    head.class_dims = class_dims
    got = run_onnx(head, feeds)
    want_out, _ = head_forward(head, got["pooled"])
    assert got[head.logits_name].shape == want_out.shape == (ROWS, *class_dims)
    np.testing.assert_allclose(got[head.logits_name], want_out, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(want_out.reshape(ROWS, -1), flat)
    if torch is not None:
        np.testing.assert_allclose(run_torch(head, feeds)[0], want_out, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("probabilities", [False, True])
def test_binary_heads_agree_in_all_three_forms(probabilities):
    prediction_kind = PROBABILITIES if probabilities else LOGITS
    # A binary original's head: two classes inside, one score out (heads.binary_answer).
    global CLASSES
    saved, CLASSES = CLASSES, 2
    try:
        head, feeds = make_case("bf", "mlp", False, prediction_kind)
    finally:
        CLASSES = saved
    head.binary = True
    got = run_onnx(head, feeds)
    want_out, want_score = head_forward(head, got["pooled"])
    assert want_out.shape == (ROWS, 1)
    np.testing.assert_allclose(got[head.logits_name], want_out, rtol=RTOL, atol=ATOL)
    two = head_forward(dataclasses.replace(head, binary=False), got["pooled"])[0]
    assert ((want_out[:, 0] > (0.5 if probabilities else 0.0)) == (two.argmax(1) == 1)).all()
    if torch is not None:
        t_out, t_score = run_torch(head, feeds)
        np.testing.assert_allclose(t_out, want_out, rtol=RTOL, atol=ATOL)
