"""Smoke test of the _exitc_runtime module against the synthetic artifacts (run by ctest)."""

import json
import os
import sys
import threading

import numpy as np

import _exitc_runtime as rt


def load_cases(cases_dir):
    with open(os.path.join(cases_dir, "cases.json")) as f:
        cases = json.load(f)["cases"]

    def arr(t):
        return np.fromfile(os.path.join(cases_dir, t["file"]), dtype=t["dtype"]).reshape(t["shape"])

    return [({t["name"]: arr(t) for t in c["inputs"]}, {t["name"]: arr(t) for t in c["outputs"]}, arr(c["exit_index"]))
            for c in cases]


def main(root):
    checked = 0
    for name in ("tiny", "side"):
        model = rt.load(os.path.join(root, name + ".exitc"), intra_op_threads=1)
        assert model.num_exits == 2 and model.has_conditional
        cases = load_cases(os.path.join(root, name + ".cases"))
        for feeds, expected, exit_index in cases:
            outs, got_exit = model.run(feeds)
            assert got_exit.dtype == np.int64 and np.array_equal(got_exit, exit_index), (name, got_exit, exit_index)
            assert list(outs) == model.output_names
            for k, v in expected.items():
                np.testing.assert_allclose(outs[k], v, atol=1e-4)
            checked += 1
        stats = model.stats()
        assert stats["rows"] == sum(len(e) for _, _, e in cases) and stats["calls"] == len(cases)
        assert sum(stats["exit_counts"]) == stats["rows"] and len(stats["exit_fractions"]) == 3
        # Timing totals: inside the engine vs the runtime's own work (decisions, compaction, scatter).
        assert isinstance(stats["engine_seconds"], float) and isinstance(stats["overhead_seconds"], float)
        assert stats["engine_seconds"] > 0 and stats["overhead_seconds"] > 0
        model.run(cases[-1][0])
        later = model.stats()
        assert later["engine_seconds"] > stats["engine_seconds"]
        assert later["overhead_seconds"] >= stats["overhead_seconds"]
        model.reset_stats()
        reset = model.stats()
        assert reset["calls"] == 0 and reset["engine_seconds"] == 0.0 and reset["overhead_seconds"] == 0.0
        # Non-contiguous input is accepted (made contiguous); wrong dtype is a ValueError.
        feeds = dict(cases[-1][0])
        feeds["x"] = np.asfortranarray(feeds["x"])
        outs, _ = model.run(feeds)
        np.testing.assert_allclose(outs["logits"], cases[-1][1]["logits"], atol=1e-4)
        try:
            model.run({k: v.astype(np.float64) for k, v in cases[-1][0].items()})
            raise AssertionError("float64 input was accepted")
        except ValueError as e:
            assert "dtype float64, expected float32" in str(e), e
        # Threads share one model (the GIL is released inside run).
        errors = []

        def worker():
            try:
                for feeds, expected, exit_index in cases[:40]:
                    _, e = model.run(feeds)
                    assert np.array_equal(e, exit_index)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
    try:
        rt.load(os.path.join(root, "missing.exitc"))
        raise AssertionError("missing artifact loaded")
    except RuntimeError as e:
        assert "manifest.json" in str(e)
    print(f"{checked} passed, 0 failed")


if __name__ == "__main__":
    main(sys.argv[1])
