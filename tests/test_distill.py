"""Self-distillation pieces on synthetic data."""

import numpy as np

from exitc.distill import confident_coverage, distill_heads, fit_gate, fit_linear, fit_mlp, head_worth
from exitc.passes.candidates import Candidate
from exitc.passes.heads import gate_scores, layers_forward, softmax


def _teacher(n=1500, d=12, c=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal((d, c)).astype(np.float32)
    return x, softmax(2 * x @ w)


def test_heads_learn_the_teachers_predictions_without_labels():
    x, p = _teacher()
    for fit in (fit_linear, fit_mlp):
        layers = fit(x[:1000], p[:1000])
        agree = (layers_forward(layers, x[1000:]).argmax(1) == p[1000:].argmax(1)).mean()
        assert agree > 0.9, (fit.__name__, agree)


def test_confident_coverage():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    pred = np.array([0, 0, 1, 0])  # the third most confident row disagrees
    assert confident_coverage(probs, pred, precision=1.0) == 0.5
    assert confident_coverage(probs, pred, precision=0.75) == 1.0
    assert confident_coverage(probs, 1 - probs.argmax(1), precision=0.9) == 0.0


def test_gate_ranks_agreeing_rows_higher():
    x, p = _teacher(seed=1)
    probs = softmax(layers_forward(fit_linear(x, p), x) * 0.5)
    agree = probs.argmax(1) == p.argmax(1)
    w, b = fit_gate(probs, agree)
    s = gate_scores(probs, w, b)
    assert s[agree].mean() > s[~agree].mean()
    w6, b6 = fit_gate(probs, agree, prev=probs)  # chained form has 6 weights
    assert w6.shape == (6,) and gate_scores(probs, w6, b6, probs).shape == (len(probs),)


def test_gate_of_a_head_that_never_disagreed_still_ranks_rows():
    # An easy exit on a small calibration set agrees on every fit row. Its gate must still order
    # rows by confidence (a constant score lets all rows out at one threshold, and one
    # disagreement among the certification rows then rules the exit out), and score them high.
    rng = np.random.default_rng(2)
    z = rng.standard_normal((300, 4)) * 3
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    w, b = fit_gate(probs, np.ones(300, bool))
    s = gate_scores(probs, w, b)
    assert s.min() > 0.98
    order = np.argsort(probs.max(1))
    assert np.corrcoef(s[order], np.arange(300))[0, 1] > 0.8
    assert s[order[-30:]].min() > s[order[:30]].max()  # the most confident tenth above the least
    w, b = fit_gate(probs, np.zeros(300, bool))  # never agreed: never exits
    assert gate_scores(probs, w, b).max() < 1e-6


def test_distill_heads_oof_outputs():
    x, p = _teacher(n=900)
    cand = Candidate(cut=1, tensor="t", side=(), layout="bf", features=12, row_elements=12, flops_fraction=0.5)
    (h,) = distill_heads([cand], [x], p, progress=False)
    assert h.oof_probs.shape == p.shape and h.oof_agree.shape == (900,) and 0.8 < h.agreement <= 1.0
    assert np.allclose(h.oof_probs.sum(1), 1, atol=1e-5)


def test_distill_heads_choose_l2_on_out_of_fold_rows():
    # A noisy teacher and many features for few rows: the L2 strength matters, and the one kept
    # must be the one whose out-of-fold head is worth most (here not the weakest in the grid).
    rng = np.random.default_rng(3)
    n, d = 600, 300
    x = rng.standard_normal((n, d)).astype(np.float32)
    z = x[:, :3].sum(1) + 0.3 * rng.standard_normal(n)
    p = softmax(np.stack([z, -z], 1)).astype(np.float32)
    cand = Candidate(cut=1, tensor="t", side=(), layout="bf", features=d, row_elements=d, flops_fraction=0.5)
    grid = (1e-4, 1e-2, 1.0)
    (h,) = distill_heads([cand], [x], p, kinds=("linear",), progress=False, l2_grid={"linear": grid})
    fold_of = np.random.default_rng(0).permutation(n) % 3
    oof = {l2: np.zeros_like(p) for l2 in grid}
    for f in range(3):
        tr, te = fold_of != f, fold_of == f
        for l2 in grid:
            oof[l2][te] = softmax(layers_forward(fit_linear(x[tr], p[tr], l2=l2), x[te]))
    worth = {l2: head_worth(oof[l2], p.argmax(1)) for l2 in grid}
    assert np.allclose(oof[h.l2], h.oof_probs)
    assert h.l2 == 1e-2 and worth[1e-2] == max(worth.values()), worth


def test_mlp_only_fits_every_candidate_whatever_its_width():
    # MLPs beside linear heads are tried only up to mlp_max_features; asked for alone (--heads mlp),
    # a wide candidate gets one too (it had no head at all: an internal error).
    x, p = _teacher(n=300)
    cand = Candidate(cut=1, tensor="t", side=(), layout="bf", features=12, row_elements=12, flops_fraction=0.5)
    (h,) = distill_heads([cand], [x], p, kinds=("mlp",), progress=False, mlp_max_features=4)
    assert h.kind == "mlp"
    (h,) = distill_heads([cand], [x], p, kinds=("linear", "mlp"), progress=False, mlp_max_features=4)
    assert h.kind == "linear"


def test_distill_heads_do_not_depend_on_workers():
    x, p = _teacher(n=600)
    cand = Candidate(cut=1, tensor="t", side=(), layout="bf", features=12, row_elements=12, flops_fraction=0.5)
    a = distill_heads([cand, cand], [x, x[:, ::-1].copy()], p, progress=False, workers=1)
    b = distill_heads([cand, cand], [x, x[:, ::-1].copy()], p, progress=False, workers=3)
    for ha, hb in zip(a, b):
        assert (ha.kind, ha.l2) == (hb.kind, hb.l2)
        assert np.array_equal(ha.oof_probs, hb.oof_probs)
        assert all(np.array_equal(wa, wb) for (wa, _), (wb, _) in zip(ha.layers, hb.layers))
