"""Differential tests: the C++ runtime (libexitc) against the Python reference runtime."""

import threading

import numpy as np
import pytest

from exitc.errors import ExitcError
from exitc.passes import normalize
from exitc.runtime import ExitModel, load

from synthetic import tiny_cnn, tiny_transformer, transformer_feeds
from test_runtime import make_artifact, reference_no_compaction

cpp = pytest.importorskip("exitc.cpp_runtime", reason="C++ runtime not built in this installation")


def _artifact(tmp_path, kind):
    if kind == "cnn":
        model, sig = normalize(tiny_cnn(blocks=4))
        feeds = {"x": np.random.default_rng(5).standard_normal((64, 3, 16, 16)).astype(np.float32)}
    else:
        model, sig = normalize(tiny_transformer(carry_mask=True))
        feeds = transformer_feeds(64, seed=5)
    # thresholds at score quantiles so that every exit and the end receive rows
    _, segs = make_artifact(tmp_path / "probe", model, sig, [2.0, 2.0, 2.0], feeds=feeds)
    _, _, state = reference_no_compaction(segs, feeds, sig.output.name)
    q = [float(np.quantile(state[s.head.score_name], p)) for s, p in zip(segs, (0.7, 0.8, 0.8))]
    path, _ = make_artifact(tmp_path, model, sig, q, feeds=feeds)
    return path, feeds


@pytest.mark.parametrize("kind", ["cnn", "transformer"])
def test_cpp_matches_reference(tmp_path, kind):
    path, feeds = _artifact(tmp_path, kind)
    ref, fast = ExitModel(path), cpp.CppExitModel(path)
    assert type(load(path)).__name__ == "CppExitModel"
    seen = set()
    for b in (1, 7, 32):
        for start in range(0, 64 - b + 1, 13):
            f = {k: v[start:start + b] for k, v in feeds.items()}
            (want,), want_idx = ref.run(f)
            (got,), got_idx = fast.run(f)
            np.testing.assert_array_equal(got_idx, want_idx)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            seen.update(want_idx.tolist())
    assert len(seen) >= 2, "the test must exercise more than one exit"
    s = fast.stats()
    assert s["rows"] == sum(s["exit_counts"]) > 0


def test_cpp_full_depth_matches_reference(tmp_path):
    """full_depth (what verify times a row that runs to the end with): no row exits, outputs as the
    reference's full-depth mode, on an artifact where rows do exit normally."""
    path, feeds = _artifact(tmp_path, "cnn")
    ref, fast = ExitModel(path, full_depth=True), cpp.CppExitModel(path, full_depth=True)
    _, normal_idx = cpp.CppExitModel(path).run(feeds)
    assert (normal_idx < 3).any(), "rows must exit when not at full depth"
    for b in (1, 7, 64):
        f = {k: v[:b] for k, v in feeds.items()}
        (want,), want_idx = ref.run(f)
        (got,), got_idx = fast.run(f)
        assert (got_idx == 3).all() and (want_idx == 3).all()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_cpp_concurrent_calls_equal_single_threaded(tmp_path):
    path, feeds = _artifact(tmp_path, "cnn")
    model = cpp.CppExitModel(path)
    batches = [{k: v[i:i + 7] for k, v in feeds.items()} for i in range(0, 56, 7)]
    expected = [model.run(b) for b in batches]
    errors = []

    def worker(t):
        try:
            for rep in range(20):
                i = (t + rep) % len(batches)
                (out,), idx = model.run(batches[i])
                np.testing.assert_array_equal(idx, expected[i][1])
                np.testing.assert_array_equal(out, expected[i][0][0])
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_cpp_input_errors_are_exitc_errors(tmp_path):
    path, feeds = _artifact(tmp_path, "cnn")
    model = cpp.CppExitModel(path)
    with pytest.raises(ExitcError):
        model.run({"x": feeds["x"].astype(np.float64)})
    with pytest.raises(ExitcError):
        model.run({"nope": feeds["x"]})


def test_cpp_binding_maps_numpy_dtypes_without_names(tmp_path):
    """The binding reads a numpy dtype by kind and size (str(np.dtype) runs Python code in numpy 2,
    most of the binding's time per call): every supported dtype still names itself in the error,
    unsupported and big-endian ones are refused in one line, and outputs keep their dtypes."""
    path, feeds = _artifact(tmp_path, "cnn")
    model = cpp.CppExitModel(path)
    x = feeds["x"][:4]
    for dtype, name in [(np.float16, "float16"), (np.float64, "float64"), (np.int64, "int64"), (np.int32, "int32"),
                        (np.uint8, "uint8"), (np.bool_, "bool")]:
        with pytest.raises(ExitcError, match=f"has dtype {name}, expected float32"):
            model.run({"x": x.astype(dtype)})
    for bad in (x.astype(np.complex64), x.astype(">f4")):
        with pytest.raises(ExitcError, match="unsupported numpy dtype"):
            model.run({"x": bad})
    (out,), exit_index = model.run({"x": x})
    assert out.dtype == np.float32 and exit_index.dtype == np.int64
