"""The features stage (exitc.features.FeatureProbe) on small synthetic models: its pooled
features are the pooling of the candidate tensors (synthetic.numpy_pooled, written independently
of the ONNX pooling nodes), its outputs are the original's, and the batch size changes nothing."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

from exitc.data import Dataset
from exitc.features import FeatureProbe
from exitc.passes import find_candidates, normalize
from exitc.passes.graph import GraphIndex
from exitc.passes.heads import softmax
from exitc.passes.split import find_mask_input
from exitc.predictions import LOG_PROBABILITIES, LOGITS, PROBABILITIES, prediction_kind

from synthetic import numpy_pooled, preprocessed_cnn, tiny_cnn, tiny_mlp, tiny_transformer, transformer_feeds

ROWS = 37  # not a multiple of the batch sizes tried


def _feeds(kind: str, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    if kind == "transformer":
        return transformer_feeds(n, seed=3)
    if kind == "mlp":
        return {"x": rng.standard_normal((n, 16)).astype(np.float32)}
    return {"x": rng.standard_normal((n, 3, 16, 16)).astype(np.float32)}


MODELS = {"cnn": (tiny_cnn, "cnn"), "cnn_input_exit": (preprocessed_cnn, "cnn"),
          "transformer": (tiny_transformer, "transformer"), "mlp": (tiny_mlp, "mlp")}


def _setup(name):
    build, kind = MODELS[name]
    model, sig = normalize(build())
    feeds = _feeds(kind, ROWS)
    return model, sig, find_candidates(model), find_mask_input(model), Dataset(feeds, None, "synthetic")


def _original_and_tensors(model, sig, names, feeds):
    """The original's prediction output and the named intermediate tensors, by running the model
    with them as extra outputs (graph inputs are taken from the feeds)."""
    m = copy.deepcopy(model)
    idx = GraphIndex.build(m)
    wanted = [n for n in dict.fromkeys(names) if n not in feeds]
    m.graph.output.extend(helper.make_tensor_value_info(n, idx.infos[n].elem_type, idx.infos[n].shape) for n in wanted)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    out = dict(zip([sig.output.name] + wanted, sess.run([sig.output.name] + wanted, feeds)))
    return out[sig.output.name], {n: feeds[n] if n in feeds else out[n] for n in names}


@pytest.mark.parametrize("name", list(MODELS))
def test_features_are_the_pooling_of_the_candidate_tensors(name):
    model, sig, cands, mask, data = _setup(name)
    assert cands
    cache = FeatureProbe(model, cands, mask).collect(data, progress=False)
    original, tensors = _original_and_tensors(model, sig, [c.tensor for c in cands], data.feeds)
    assert len(cache.features) == len(cands)
    for c, feats in zip(cands, cache.features):
        want = numpy_pooled(tensors[c.tensor], c.layout, data.feeds.get(mask) if c.layout == "btc" else None,
                            c.pooling)
        assert feats.dtype == np.float32 and feats.shape == want.shape == (ROWS, want.shape[1])
        np.testing.assert_allclose(feats, want, rtol=1e-4, atol=1e-5, err_msg=f"{name}: candidate {c.tensor}")
    # the original's outputs, its predictions and the soft targets
    np.testing.assert_allclose(cache.outputs, original, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(cache.predictions, original.argmax(axis=1))
    assert cache.kind != PROBABILITIES  # the synthetic models output logits
    np.testing.assert_allclose(cache.probs, softmax(original), rtol=1e-5, atol=1e-6)


def test_the_image_input_exit_is_pooled_with_random_filters():
    """The CNN with a preprocessing op has an input exit on an image-like map: the case above
    covers random-filter features, not only grids."""
    _, _, cands, _, _ = _setup("cnn_input_exit")
    assert any(c.pooling is not None and c.pooling.filters is not None for c in cands)
    _, _, cands, _, _ = _setup("cnn")
    assert any(c.pooling is not None and c.pooling.grid is not None for c in cands)


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_batch_size_changes_nothing(name):
    model, _, cands, mask, data = _setup(name)
    probe = FeatureProbe(model, cands, mask, batch_size=5)
    small = probe.collect(data, progress=False)
    one = probe.collect(data, batch_size=1, progress=False)
    whole = probe.collect(data, batch_size=ROWS, progress=False)
    for cache in (one, whole):
        np.testing.assert_array_equal(cache.predictions, small.predictions)
        np.testing.assert_allclose(cache.outputs, small.outputs, rtol=1e-5, atol=1e-6)
        for a, b in zip(cache.features, small.features):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert probe.seconds_per_row > 0


def test_probability_outputs_are_detected_or_overridden():
    model, _, cands, mask, data = _setup("mlp")
    probe = FeatureProbe(model, cands, mask)
    assert probe.collect(data, progress=False).kind == LOGITS
    forced = probe.collect(data, progress=False, kind=PROBABILITIES)
    assert forced.kind == PROBABILITIES and forced.probs is not None
    np.testing.assert_array_equal(forced.probs, forced.outputs)  # taken as they are, not softmaxed
    p = softmax(np.random.default_rng(0).standard_normal((6, 4)))
    assert prediction_kind(p) == PROBABILITIES
    assert prediction_kind(p * 2) == LOGITS and prediction_kind(p - 0.1) == LOGITS


def test_log_probability_outputs_are_detected():
    # A LogSoftmax's output (nll_loss-trained PyTorch models): every row's logsumexp is 0.
    z = 3 * np.random.default_rng(0).standard_normal((6, 4))
    logp = np.log(softmax(z))
    assert prediction_kind(logp) == LOG_PROBABILITIES
    assert prediction_kind(logp.astype(np.float16).astype(np.float32)) == LOG_PROBABILITIES
    assert prediction_kind(logp - 0.5) == LOGITS and prediction_kind(-np.abs(z)) == LOGITS
    assert prediction_kind(logp[:, :1]) == LOGITS  # one score per row: a negative logit, not a log-probability
