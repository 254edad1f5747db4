"""Self-distillation pieces on synthetic data."""

import numpy as np

from exitc.distill import confident_coverage, distill_heads, fit_gate, fit_linear, fit_mlp, forward, gate_scores
from exitc.passes.candidates import Candidate
from exitc.passes.heads import softmax


def _teacher(n=1500, d=12, c=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal((d, c)).astype(np.float32)
    return x, softmax(2 * x @ w)


def test_heads_learn_the_teachers_predictions_without_labels():
    x, p = _teacher()
    for fit in (fit_linear, fit_mlp):
        layers = fit(x[:1000], p[:1000])
        agree = (forward(layers, x[1000:]).argmax(1) == p[1000:].argmax(1)).mean()
        assert agree > 0.9, (fit.__name__, agree)


def test_confident_coverage():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    pred = np.array([0, 0, 1, 0])  # the third most confident row disagrees
    assert confident_coverage(probs, pred, precision=1.0) == 0.5
    assert confident_coverage(probs, pred, precision=0.75) == 1.0
    assert confident_coverage(probs, 1 - probs.argmax(1), precision=0.9) == 0.0


def test_gate_ranks_agreeing_rows_higher():
    x, p = _teacher(seed=1)
    probs = softmax(forward(fit_linear(x, p), x) * 0.5)
    agree = probs.argmax(1) == p.argmax(1)
    w, b = fit_gate(probs, agree)
    s = gate_scores(probs, w, b)
    assert s[agree].mean() > s[~agree].mean()
    w6, b6 = fit_gate(probs, agree, prev=probs)  # chained form has 6 weights
    assert w6.shape == (6,) and gate_scores(probs, w6, b6, probs).shape == (len(probs),)


def test_distill_heads_oof_outputs():
    x, p = _teacher(n=900)
    cand = Candidate(cut=1, tensor="t", side=(), layout="bf", features=12, row_elements=12, flops_fraction=0.5)
    (h,) = distill_heads([cand], [x], p, progress=False)
    assert h.oof_probs.shape == p.shape and h.oof_agree.shape == (900,) and 0.8 < h.agreement <= 1.0
    assert np.allclose(h.oof_probs.sum(1), 1, atol=1e-5)
