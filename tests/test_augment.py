"""Synthetic neighbours (exitc.augment) and how distillation uses them (exitc.distill)."""

import numpy as np

from exitc.augment import perturbations
from exitc.distill import NeighbourRows, distill_heads
from exitc.passes.candidates import Candidate
from exitc.passes.graph import TensorInfo
from onnx import TensorProto


def image_input(shape=("batch", 1, 28, 28)):
    return TensorInfo("pixels", TensorProto.FLOAT, list(shape))


def test_image_perturbations_keep_shape_and_content():
    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 28, 28)).astype(np.float32)
    kinds = perturbations([image_input()], {"pixels": x}, None)
    assert set(kinds) == {"shift:pixels", "flip:pixels", "noise:pixels"}
    rows = np.array([True, False, True, False, True, False])
    for name, kind in kinds.items():
        y = kind({"pixels": x}, rows, rng)["pixels"]
        assert y.shape == x.shape and y.dtype == x.dtype
        assert np.array_equal(y[~rows], x[~rows]), name  # rows not chosen stay untouched
    flipped = kinds["flip:pixels"]({"pixels": x}, rows, rng)["pixels"]
    assert np.array_equal(flipped[0], x[0][:, :, ::-1])
    shifted = kinds["shift:pixels"]({"pixels": x}, np.ones(6, bool), rng)["pixels"]
    assert set(np.unique(shifted[0])) <= set(np.unique(x[0]))  # a shift only moves (and repeats edge) pixels


def test_signals_shift_in_time_only():
    # [batch, channels, length]: a shift moves a row along its length (a circular one would wrap);
    # no flip (time is not mirror-symmetric in general).
    t = np.arange(200, dtype=np.float32)
    x = np.stack([np.stack([t, -t])] * 3)  # [3, 2, 200], every row 0..199 on channel 0
    kinds = perturbations([TensorInfo("signal", TensorProto.FLOAT, ["batch", 2, 200])], {"signal": x}, None)
    assert set(kinds) == {"shift:signal", "noise:signal"}
    y = kinds["shift:signal"]({"signal": x}, np.ones(3, bool), np.random.default_rng(1))["signal"]
    for r in range(3):
        d = y[r, 0, 100] - x[r, 0, 100]  # the shift of this row
        assert abs(d) <= 8 and np.array_equal(y[r, 0, 10:190], x[r, 0, 10:190] + d)
        assert np.array_equal(y[r, 1], -y[r, 0])  # both channels moved together
    assert any(y[r, 0, 100] != 100 for r in range(3))


def test_nhwc_images_flip_along_width():
    x = np.random.default_rng(0).random((2, 16, 20, 3)).astype(np.float32)
    kinds = perturbations([image_input(("batch", 16, 20, 3))], {"pixels": x}, None)
    y = kinds["flip:pixels"]({"pixels": x}, np.ones(2, bool), None)["pixels"]
    assert np.array_equal(y, x[:, :, ::-1, :])


def test_token_drop_keeps_first_and_last_token_and_repads():
    ids = np.array([[101, 5, 6, 7, 8, 9, 10, 11, 12, 13, 102, 0, 0, 0]], np.int64)
    mask = (ids != 0).astype(np.int64)
    types = np.zeros_like(ids)
    inputs = [TensorInfo(n, TensorProto.INT64, ["batch", 14]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    kinds = perturbations(inputs, feeds, "attention_mask")
    assert {"drop-tokens", "replace-tokens"} <= set(kinds)
    out = kinds["drop-tokens"](feeds, np.array([True]), np.random.default_rng(0))
    n = int(out["attention_mask"][0].sum())
    assert n == 10  # 9 inner tokens: one dropped
    kept = out["input_ids"][0][:n]
    assert kept[0] == 101 and kept[-1] == 102 and (out["input_ids"][0][n:] == 0).all()
    assert set(kept) < set(ids[0])
    rep = kinds["replace-tokens"](feeds, np.array([True]), np.random.default_rng(1))
    assert rep["input_ids"][0][0] == 101 and rep["input_ids"][0][10] == 102
    assert np.array_equal(rep["attention_mask"], mask)


def test_neighbours_of_a_held_out_row_never_train_its_out_of_fold_head():
    """Features without signal, so a head can only memorise; neighbours are exact copies of the
    fit rows. If a row's own copy were in the folds that predict it out of fold, its out-of-fold
    agreement would be near perfect; kept out, it stays near chance."""
    rng = np.random.default_rng(0)
    n, d, classes = 150, 300, 4
    x = rng.standard_normal((n, d)).astype(np.float32)
    targets = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]
    cand = Candidate(cut=1, tensor="t", side=(), layout="bf", features=d, row_elements=d, flops_fraction=0.1)
    nb = NeighbourRows([x.copy()], targets.copy(), np.arange(n))
    (head,) = distill_heads([cand], [x], targets, kinds=("linear",), progress=False, l2_grid={"linear": (1e-4,)},
                            neighbours=nb)
    assert head.agreement < 0.5, head.agreement


def test_neighbour_budget_is_a_count_of_arithmetic_not_a_time(monkeypatch):
    """The same rows get the same neighbours however fast the machine labels them (a time budget
    made plans vary with load); a model that costs more per row gets fewer."""
    import exitc.augment as augment
    from exitc.data import Dataset
    from exitc.features import FeatureProbe
    from exitc.passes import find_candidates
    from exitc.passes.normalize import normalize

    from synthetic import tiny_cnn

    model, sig = normalize(tiny_cnn())
    cands = find_candidates(model)
    x = np.random.default_rng(0).standard_normal((300, 3, 16, 16)).astype(np.float32)
    fit = Dataset({"x": x}, None, "mem")
    counts = []
    for seconds, flops_budget in [(1e-6, 1e15), (1.0, 1e15), (1e-6, None)]:
        probe = FeatureProbe(model, cands, None)
        pred = probe.collect(fit, progress=False).predictions
        monkeypatch.setattr(augment, "STABLE", 0.0)  # every perturbation counts as stable here
        if flops_budget is not None:
            monkeypatch.setattr(augment, "NEIGHBOUR_MULTIPLY_ADDS", flops_budget)
        else:  # room for 600 neighbours' arithmetic
            monkeypatch.setattr(augment, "NEIGHBOUR_MULTIPLY_ADDS", 600 * probe.flops_per_row)
        probe.seconds_per_row = seconds
        nb = augment.make_neighbours(sig.inputs, fit, pred, None, probe, False, progress=False)
        counts.append(nb.rows)
    assert counts[0] == counts[1] == min(augment.MAX_COPIES * 300, augment.MAX_ROWS)
    assert counts[2] < counts[0]


def test_noise_on_a_float16_image_is_finite():
    # The spread of a 0..255 float16 image, computed in float16, overflows (inf noise: every
    # noisy neighbour's prediction changed, and the noise kind was dropped as unstable).
    rng = np.random.default_rng(0)
    x = (rng.random((8, 1, 28, 28)) * 255).astype(np.float16)
    info = TensorInfo("pixels", TensorProto.FLOAT16, ["batch", 1, 28, 28])
    noisy = perturbations([info], {"pixels": x}, None)["noise:pixels"]({"pixels": x}, np.ones(8, bool), rng)["pixels"]
    assert noisy.dtype == np.float16 and np.isfinite(noisy).all()
    assert 0 < np.abs(noisy.astype(np.float32) - x).mean() < 0.2 * 255


def test_uint8_images_get_neighbours_in_their_dtype():
    # 8-bit NHWC pixels (the graph casts and transposes them itself): shifted, flipped and noisy
    # copies stay uint8 and in range (noise rounded, clipped at 0 and 255).
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 16, 16, 3)).astype(np.uint8)
    x[:, :2] = 255  # saturated pixels must not wrap around
    info = TensorInfo("img", TensorProto.UINT8, ["batch", 16, 16, 3])
    kinds = perturbations([info], {"img": x}, None)
    assert set(kinds) == {"shift:img", "flip:img", "noise:img"}
    for name, kind in kinds.items():
        y = kind({"img": x}, np.ones(6, bool), rng)["img"]
        assert y.dtype == np.uint8 and y.shape == x.shape, name
    noisy = kinds["noise:img"]({"img": x}, np.ones(6, bool), rng)["img"].astype(np.int64)
    assert (noisy[:, :2] >= 250).all() and 0 < np.abs(noisy - x).mean() < 3
