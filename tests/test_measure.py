"""Paired timing (exitc.measure): every model sees the same rows, outputs come back in row order,
and no model always runs first (order effects cancel)."""

import numpy as np

from exitc.measure import alternating, batch1_latencies, run_interleaved


def recorder(name, calls):
    def fn(feeds):
        calls.append((name, int(feeds["x"][0, 0])))
        return feeds["x"][:, 0].copy()
    return fn


def test_batch1_alternates_which_model_runs_first():
    calls = []
    feeds = {"x": np.arange(20, dtype=np.float32).reshape(10, 2)}
    times = batch1_latencies([recorder("a", calls), recorder("b", calls)], feeds, rows=10, warmup=2)
    assert [len(t) for t in times] == [10, 10] and all((t >= 0).all() for t in times)
    measured = calls[4:]  # after two warm-up rows of two calls
    firsts = [measured[i][0] for i in range(0, len(measured), 2)]
    assert firsts.count("a") == firsts.count("b") == 5
    # both models see every row, in row order
    for name in "ab":
        assert [row for n, row in measured if n == name] == list(range(0, 20, 2))


def test_batches_alternate_and_outputs_stay_in_row_order():
    calls = []
    feeds = {"x": np.arange(64, dtype=np.float32).reshape(32, 2)}
    fns = [recorder("a", calls), recorder("b", calls), recorder("c", calls)]
    seconds, outs = run_interleaved(fns, feeds, n=32, batch=4, chunk_batches=2)
    assert len(seconds) == 3 and all(s >= 0 for s in seconds)
    for o in outs:
        np.testing.assert_array_equal(np.concatenate(o), feeds["x"][:, 0])
    chunk_starts = [calls[i][0] for i in range(0, len(calls), 2)][::3]  # first model of each chunk
    assert chunk_starts == ["a", "c", "a", "c"]


def test_alternating():
    assert alternating(3, 0) == [0, 1, 2] and alternating(3, 1) == [2, 1, 0] and alternating(1, 5) == [0]
