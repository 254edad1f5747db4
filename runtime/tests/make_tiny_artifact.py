#!/usr/bin/env python3
"""Write small synthetic exitc artifacts (docs/artifact-format.md, schema 1) plus test vectors.

Two artifacts, each with 3 segments / 2 exits and a conditional.onnx:

* ``tiny.exitc``: input x float32 [batch, 4]; carried h = 2x, h1 = relu(h @ A1);
  exit heads score = max(softmax(logits)); output ``logits`` [batch, 3].
* ``side.exitc``: adds a second carried tensor ``g`` = (x + 1)^T [4, batch] (batch_axis 1) that
  skips segment 1, a second graph input ``m`` [2, batch] (batch_axis 1) read only by the last
  segment, and a second model output ``features`` = h1 (zero for rows that exit early).

Expected outputs are computed in numpy by following the execution semantics literally (active
rows, masks, compaction, scatter). Thresholds sit in wide gaps between observed scores so float
rounding differences between numpy and ONNX Runtime cannot flip an exit decision.

Test vectors: ``<out>/<name>.cases/cases.json`` + raw little-endian ``.bin`` files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
NUM_CLASSES = 3
F = TensorProto.FLOAT


def vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def save_model(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="exitc-tests")
    model.ir_version = 8  # readable by every ORT >= 1.14
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Weights:
    def __init__(self, seed):
        rng = np.random.default_rng(seed)
        f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
        self.W0, self.A1, self.W1, self.W2 = f(4, NUM_CLASSES), f(4, 4), f(4, NUM_CLASSES), f(4, NUM_CLASSES)
        self.b2 = f(NUM_CLASSES)
        self.Wg, self.Wm = f(4, NUM_CLASSES) * 0.5, f(2, NUM_CLASSES) * 0.5


# --- node builders (prefix keeps names unique across conditional subgraphs) -------------------

def head_nodes(p, feat, W, logits, score):
    return [
        helper.make_node("MatMul", [feat, W], [logits]),
        helper.make_node("Softmax", [logits], [p + "prob"], axis=-1),
        helper.make_node("ReduceMax", [p + "prob"], [score], axes=[1], keepdims=0),
    ]


def seg0_nodes(p, side):
    nodes = [helper.make_node("Mul", ["x", p + "two"], [p + "h"])]
    inits = [const(p + "two", np.float32(2.0)), const(p + "W0", W.W0)]
    if side:
        nodes += [helper.make_node("Add", ["x", p + "one"], [p + "xp1"]),
                  helper.make_node("Transpose", [p + "xp1"], [p + "g"], perm=[1, 0])]
        inits.append(const(p + "one", np.float32(1.0)))
    nodes += head_nodes(p + "e0_", p + "h", p + "W0", p + "logits0", p + "score0")
    return nodes, inits


def seg1_nodes(p, h):
    nodes = [helper.make_node("MatMul", [h, p + "A1"], [p + "mm1"]),
             helper.make_node("Relu", [p + "mm1"], [p + "h1"])]
    nodes += head_nodes(p + "e1_", p + "h1", p + "W1", p + "logits1", p + "score1")
    return nodes, [const(p + "A1", W.A1), const(p + "W1", W.W1)]


def seg2_nodes(p, h1, g, m, side, logits_out, features_out):
    nodes = [helper.make_node("MatMul", [h1, p + "W2"], [p + "mm2"])]
    inits = [const(p + "W2", W.W2), const(p + "b2", W.b2)]
    if side:
        nodes += [helper.make_node("Add", [p + "mm2", p + "b2"], [p + "base"]),
                  helper.make_node("Transpose", [g], [p + "gt"], perm=[1, 0]),
                  helper.make_node("MatMul", [p + "gt", p + "Wg"], [p + "mg"]),
                  helper.make_node("Transpose", [m], [p + "mt"], perm=[1, 0]),
                  helper.make_node("MatMul", [p + "mt", p + "Wm"], [p + "mm"]),
                  helper.make_node("Add", [p + "base", p + "mg"], [p + "s1"]),
                  helper.make_node("Add", [p + "s1", p + "mm"], [logits_out]),
                  helper.make_node("Identity", [h1], [features_out])]
        inits += [const(p + "Wg", W.Wg), const(p + "Wm", W.Wm)]
    else:
        nodes += [helper.make_node("Add", [p + "mm2", p + "b2"], [logits_out])]
    return nodes, inits


# --- numpy reference ----------------------------------------------------------------------------

def np_seg0(x):
    h = x * np.float32(2)
    logits0 = h @ W.W0
    return h, (x + np.float32(1)).T.copy(), logits0, softmax(logits0).max(axis=1)


def np_seg1(h):
    h1 = np.maximum(h @ W.A1, 0)
    logits1 = h1 @ W.W1
    return h1, logits1, softmax(logits1).max(axis=1)


def np_seg2(h1, g, m, side):
    logits = h1 @ W.W2 + W.b2
    if side:
        logits = logits + g.T @ W.Wg + m.T @ W.Wm
    return logits


def reference_run(x, m, side, thresholds):
    """The execution semantics of docs/artifact-format.md, literally."""
    B = x.shape[0]
    out = {"logits": np.zeros((B, NUM_CLASSES), np.float32)}
    if side:
        out["features"] = np.zeros((B, 4), np.float32)
    exit_index = np.full(B, -1, np.int64)
    active = np.arange(B)
    state = {"x": x, "m": m}
    axes = {"x": 0, "m": 1, "h": 0, "g": 1, "h1": 0}

    def compact(keep):
        for k in state:
            state[k] = np.take(state[k], keep, axis=axes[k])

    def take_exit(k, logits, score):
        """Rows whose score reaches threshold k leave with exit k's logits; the rest are
        compacted. Returns the positions (in the batch before compaction) of the rows kept."""
        nonlocal active
        mask = score >= np.float32(thresholds[k])
        out["logits"][active[mask]] = logits[mask]
        exit_index[active[mask]] = k
        keep = np.nonzero(~mask)[0]
        active = active[keep]
        compact(keep)
        return keep

    h, g, logits0, score0 = np_seg0(state["x"])
    keep = take_exit(0, logits0, score0)
    if len(active) == 0:
        return out, exit_index
    state["h"], state["g"] = h[keep], g[:, keep]

    h1, logits1, score1 = np_seg1(state["h"])
    keep = take_exit(1, logits1, score1)
    if len(active) == 0:
        return out, exit_index
    state["h1"] = h1[keep]

    out["logits"][active] = np_seg2(state["h1"], state.get("g"), state.get("m"), side)
    if side:
        out["features"][active] = state["h1"]
    exit_index[active] = 2
    return out, exit_index


def pick_threshold(scores, quantile):
    """Midpoint of the widest gap between sorted scores near `quantile`."""
    s = np.sort(scores.astype(np.float64))
    n = len(s)
    lo, hi = max(1, int(n * (quantile - 0.15))), min(n - 1, int(n * (quantile + 0.15)))
    gaps = s[lo:hi] - s[lo - 1:hi - 1]
    i = lo + int(np.argmax(gaps))
    assert s[i] - s[i - 1] > 1e-5, "score gap too small for a robust threshold"
    return float((s[i] + s[i - 1]) / 2)


# --- artifact writers -------------------------------------------------------------------------

def write_artifact(root, name, side, thresholds):
    art = os.path.join(root, name + ".exitc")
    shutil.rmtree(art, ignore_errors=True)
    os.makedirs(os.path.join(art, "segments"))
    B = "batch"

    # Segment 0
    nodes, inits = seg0_nodes("", side)
    nodes.append(helper.make_node("Identity", ["logits0"], ["exitc_exit0_logits"]))
    nodes.append(helper.make_node("Identity", ["score0"], ["exitc_exit0_score"]))
    outs = [vi("h", [B, 4])] + ([vi("g", [4, B])] if side else [])
    outs += [vi("exitc_exit0_logits", [B, NUM_CLASSES]), vi("exitc_exit0_score", [B])]
    save_model(helper.make_graph(nodes, "seg0", [vi("x", [B, 4])], outs, inits), os.path.join(art, "segments/seg_0.onnx"))

    # Segment 1: reads h (the carried tensor; named "h" in both graphs)
    nodes, inits = seg1_nodes("", "h")
    nodes.append(helper.make_node("Identity", ["logits1"], ["exitc_exit1_logits"]))
    nodes.append(helper.make_node("Identity", ["score1"], ["exitc_exit1_score"]))
    outs = [vi("h1", [B, 4]), vi("exitc_exit1_logits", [B, NUM_CLASSES]), vi("exitc_exit1_score", [B])]
    save_model(helper.make_graph(nodes, "seg1", [vi("h", [B, 4])], outs, inits), os.path.join(art, "segments/seg_1.onnx"))

    # Segment 2
    nodes, inits = seg2_nodes("", "h1", "g", "m", side, "logits", "features")
    ins = [vi("h1", [B, 4])] + ([vi("g", [4, B]), vi("m", [2, B])] if side else [])
    outs = [vi("logits", [B, NUM_CLASSES])] + ([vi("features", [B, 4])] if side else [])
    save_model(helper.make_graph(nodes, "seg2", ins, outs, inits), os.path.join(art, "segments/seg_2.onnx"))

    write_conditional(art, side, thresholds)

    spec = lambda n, shape, axis=0: {"name": n, "dtype": "float32", "shape": shape, "batch_axis": axis}  # noqa: E731
    inputs = [spec("x", [B, 4])] + ([spec("m", [2, B], 1)] if side else [])
    outputs = [spec("logits", [B, NUM_CLASSES])] + ([spec("features", [B, 4])] if side else [])
    carried = [spec("h", [B, 4])] + ([spec("g", [4, B], 1)] if side else []) + [spec("h1", [B, 4])]
    manifest = {
        "format": "exitc", "schema_version": 1, "exitc_version": "0.1.0",
        "source": {"file": "synthetic.onnx", "sha256": "0" * 64, "opset": OPSET},
        "backend": "onnxruntime-cpu",
        "inputs": inputs, "outputs": outputs, "prediction_output": "logits", "num_classes": NUM_CLASSES,
        "carried": carried,
        "segments": [
            {"index": 0, "file": "segments/seg_0.onnx", "inputs": ["x"], "carry_out": ["h"] + (["g"] if side else []),
             "exit": {"index": 0, "logits": "exitc_exit0_logits", "score": "exitc_exit0_score",
                      "threshold": thresholds[0], "candidate": "h"}},
            {"index": 1, "file": "segments/seg_1.onnx", "inputs": ["h"], "carry_out": ["h1"],
             "exit": {"index": 1, "logits": "exitc_exit1_logits", "score": "exitc_exit1_score",
                      "threshold": thresholds[1], "candidate": "h1"}},
            {"index": 2, "file": "segments/seg_2.onnx", "inputs": ["h1"] + (["g", "m"] if side else []),
             "carry_out": [], "exit": None, "outputs": [o["name"] for o in outputs]},
        ],
        "conditional": {"file": "conditional.onnx"},
        "calibration": {"method": "synthetic"},
        "profile": {"batch_size": 8, "predicted_speedup": 1.0},
    }
    with open(os.path.join(art, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return art


def write_conditional(art, side, thresholds):
    """Single graph with nested If nodes: exit 0 -> (logits0, 0), exit 1 -> (logits1, 1), else last."""
    B = "batch"
    int64 = TensorProto.INT64
    zeros_features = np.zeros((1, 4), np.float32)

    def branch(name, nodes, inits, logits, index, features=None):
        nodes = list(nodes) + [helper.make_node("Identity", [logits], [name + "_logits"])]
        inits = list(inits) + [const(name + "_idx", np.array([index], np.int64))]
        nodes.append(helper.make_node("Identity", [name + "_idx"], [name + "_exit"]))
        outs = [vi(name + "_logits", None)]
        if side:
            if features is None:
                inits.append(const(name + "_zf", zeros_features))
                features = name + "_zf"
            nodes.append(helper.make_node("Identity", [features], [name + "_features"]))
            outs.append(vi(name + "_features", None))
        outs.append(vi(name + "_exit", None, int64))
        return helper.make_graph(nodes, name, [], outs, inits)

    n2, i2 = seg2_nodes("c2_", "c1_h1", "c0_g", "m", side, "c2_logits", "c2_features")
    last = branch("last", n2, i2, "c2_logits", 2, "c2_features" if side else None)
    exit1 = branch("exit1", [], [], "c1_logits1", 1)
    n1, i1 = seg1_nodes("c1_", "c0_h")
    n1 += [helper.make_node("GreaterOrEqual", ["c1_score1", "c1_thr"], ["c1_cond"]),
           helper.make_node("If", ["c1_cond"], ["else0_logits"] + (["else0_features"] if side else []) + ["else0_exit"],
                            then_branch=exit1, else_branch=last)]
    i1.append(const("c1_thr", np.array([thresholds[1]], np.float32)))
    after0 = helper.make_graph(n1, "after0", [], [vi("else0_logits", None)] + ([vi("else0_features", None)] if side else [])
                               + [vi("else0_exit", None, int64)], i1)
    # then/else outputs are renamed by the If node; wrap so each branch exports its own names
    exit0 = branch("exit0", [], [], "c0_logits0", 0)
    n0, i0 = seg0_nodes("c0_", side)
    n0 += [helper.make_node("GreaterOrEqual", ["c0_score0", "c0_thr"], ["c0_cond"]),
           helper.make_node("If", ["c0_cond"], ["logits"] + (["features"] if side else []) + ["exitc_exit_index"],
                            then_branch=exit0, else_branch=after0)]
    i0.append(const("c0_thr", np.array([thresholds[0]], np.float32)))
    ins = [vi("x", [B, 4])] + ([vi("m", [2, B])] if side else [])
    outs = [vi("logits", [B, NUM_CLASSES])] + ([vi("features", [B, 4])] if side else []) + [vi("exitc_exit_index", [B], int64)]
    save_model(helper.make_graph(n0, "conditional", ins, outs, i0), os.path.join(art, "conditional.onnx"))


def write_cases(root, name, side, thresholds, pool_x, pool_m, rng):
    cases_dir = os.path.join(root, name + ".cases")
    shutil.rmtree(cases_dir, ignore_errors=True)
    os.makedirs(cases_dir)
    _, exit_of_row = reference_run(pool_x, pool_m, side, thresholds)
    selections = []
    for size in (1, 2, 3, 5, 7, 8, 16, 33, 64):
        for rep in range(2):
            selections.append((f"random_b{size}_{rep}", rng.choice(len(pool_x), size, replace=False)))
    for e in range(3):  # every row leaves at the same exit
        rows = np.nonzero(exit_of_row == e)[0]
        selections.append((f"all_exit{e}_b5", rows[:5]))
        selections.append((f"all_exit{e}_b1", rows[:1]))
    # Every exit pattern of 4 rows: rows of exits (e0, e1, e2, e3) for all 3^4 patterns.
    by_exit = [np.nonzero(exit_of_row == e)[0] for e in range(3)]
    for code in range(3 ** 4):
        pattern = [(code // 3 ** k) % 3 for k in range(4)]
        selections.append((f"pattern_{''.join(map(str, pattern))}", np.array([by_exit[e][k] for k, e in enumerate(pattern)])))

    cases = []
    for case_name, rows in selections:
        x = np.ascontiguousarray(pool_x[rows])
        m = np.ascontiguousarray(pool_m[:, rows])
        outs, exit_index = reference_run(x, m, side, thresholds)
        assert (exit_index >= 0).all()
        entry = {"name": case_name, "batch": int(len(rows)), "inputs": [], "outputs": []}

        def dump(kind, tensor_name, arr):
            fname = f"{case_name}.{kind}.{tensor_name}.bin"
            np.ascontiguousarray(arr).tofile(os.path.join(cases_dir, fname))
            return {"name": tensor_name, "dtype": str(arr.dtype), "shape": list(arr.shape), "file": fname}

        entry["inputs"].append(dump("in", "x", x))
        if side:
            entry["inputs"].append(dump("in", "m", m))
        for k, v in outs.items():
            entry["outputs"].append(dump("out", k, v))
        entry["exit_index"] = dump("out", "exitc_exit_index", exit_index)
        cases.append(entry)
    with open(os.path.join(cases_dir, "cases.json"), "w") as f:
        json.dump({"artifact": name + ".exitc", "cases": cases}, f, indent=1)
    return len(cases)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory to write <name>.exitc and <name>.cases into")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    global W
    W = Weights(args.seed)
    rng = np.random.default_rng(args.seed + 1)
    pool_x = rng.normal(size=(400, 4)).astype(np.float32)
    pool_m = rng.normal(size=(2, 400)).astype(np.float32)
    # Thresholds: ~35% of rows leave at exit 0, ~half of the rest at exit 1.
    _, _, _, score0 = np_seg0(pool_x)
    t0 = pick_threshold(score0, 0.65)
    rest = pool_x[score0 < np.float32(t0)]
    _, _, score1 = np_seg1(rest * np.float32(2))
    t1 = pick_threshold(score1, 0.5)
    for name, side in (("tiny", False), ("side", True)):
        write_artifact(args.out, name, side, [t0, t1])
        n = write_cases(args.out, name, side, [t0, t1], pool_x, pool_m, np.random.default_rng(args.seed + 2))
        print(f"wrote {os.path.join(args.out, name + '.exitc')} and {n} cases (thresholds {t0:.6f}, {t1:.6f})")


W: Weights

if __name__ == "__main__":
    main()
