"""Unit tests for the sample builders' own code that needs no sample data (fast).

The builders themselves (and their data) run in bench/run_samples.py; here: the Austen passage
splitter, TF 'same' padding and the Keras-HDF5-to-torch rebuild of build_cv_native.py on a tiny
synthetic Keras graph, checked against numpy.
"""

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "samples"))


def test_austen_passages_split_paragraphs_drop_headings_and_cut_long_ones():
    pytest.importorskip("torch")  # build_nlp_austen imports build_nlp, which sets up torch exports
    from build_nlp_austen import MAX_WORDS, MIN_WORDS, passages

    long_para = " ".join(f"w{i}" for i in range(2 * MAX_WORDS + MIN_WORDS - 1))
    lines = ["CHAPTER I", "", "Too short here.", "", "one two three four", "five six seven eight",
             "", long_para, "", "Chapter 2 begins here with enough words to pass the minimum", ""]
    out = passages(lines)
    assert out[0] == "one two three four five six seven eight"  # lines of a paragraph joined
    assert [len(p.split()) for p in out[1:]] == [MAX_WORDS, MAX_WORDS]  # short tail dropped
    assert all("Chapter" not in p and "CHAPTER" not in p for p in out)


def test_tf_same_padding():
    pytest.importorskip("torch")
    from build_cv_native import _same_pad

    assert _same_pad(160, 3, 2) == (0, 1)  # TF puts the odd pixel after
    assert _same_pad(5, 3, 1) == (1, 1)
    assert _same_pad(7, 3, 2) == (1, 1)
    assert _same_pad(8, 1, 1) == (0, 0)


def _keras_layer(kind, name, inputs, **cfg):
    args = [{"class_name": "__keras_tensor__", "config": {"keras_history": [i, 0, 0]}} for i in inputs]
    return {"class_name": kind, "name": name, "config": {"name": name, **cfg},
            "inbound_nodes": [{"args": [args] if len(args) > 1 else args, "kwargs": {}}] if inputs else []}


def test_keras_graph_rebuild_matches_numpy(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    h5py = pytest.importorskip("h5py")
    import build_cv_native as b

    rng = np.random.default_rng(0)
    c_in, c_out = 3, 4
    k_dw = rng.normal(size=(3, 3, c_in, 1)).astype(np.float32)
    k_pw = rng.normal(size=(1, 1, c_in, c_out)).astype(np.float32)
    bn = {"gamma": rng.uniform(0.5, 2, c_out), "beta": rng.normal(size=c_out),
          "moving_mean": rng.normal(size=c_out), "moving_variance": rng.uniform(0.5, 2, c_out)}
    bn = {k: v.astype(np.float32) for k, v in bn.items()}
    layers = [
        _keras_layer("InputLayer", "inp", []),
        _keras_layer("ZeroPadding2D", "pad", ["inp"], padding=[[0, 1], [0, 1]]),
        _keras_layer("DepthwiseConv2D", "dw", ["pad"], strides=[2, 2], padding="valid", use_bias=False),
        _keras_layer("Conv2D", "pw", ["dw"], strides=[1, 1], padding="same", use_bias=False),
        _keras_layer("BatchNormalization", "bn", ["pw"], epsilon=1e-3),
        _keras_layer("ReLU", "relu", ["bn"], max_value=6.0),
        _keras_layer("Conv2D", "pw2", ["relu"], strides=[1, 1], padding="same", use_bias=False),
        _keras_layer("Add", "add", ["relu", "pw2"]),
    ]
    k_pw2 = rng.normal(size=(1, 1, c_out, c_out)).astype(np.float32)
    config = {"class_name": "Functional", "config": {"layers": [
        {"class_name": "Functional", "name": b.KERAS_BACKBONE,
         "config": {"layers": layers, "output_layers": ["add", 0, 0]}}]}}
    path = tmp_path / "tiny.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        g = f.create_group(f"model_weights/{b.KERAS_BACKBONE}")
        g.create_dataset("dw/kernel", data=k_dw)
        g.create_dataset("pw/kernel", data=k_pw)
        g.create_dataset("pw2/kernel", data=k_pw2)
        for k, v in bn.items():
            g.create_dataset(f"bn/{k}", data=v)
    net = b.build_keras_backbone(path)

    x = rng.normal(size=(2, c_in, 8, 8)).astype(np.float32)
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()

    # numpy reference in NHWC, as Keras computes it
    h = np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (0, 1), (0, 1), (0, 0)))
    dw = np.zeros((2, 4, 4, c_in), np.float32)
    for i in range(4):
        for j in range(4):
            patch = h[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]
            dw[:, i, j, :] = np.einsum("nhwc,hwc->nc", patch, k_dw[..., 0])
    pw = dw @ k_pw[0, 0]
    y = (pw - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + 1e-3) * bn["gamma"] + bn["beta"]
    y = np.clip(y, 0, 6)
    want = (y + y @ k_pw2[0, 0]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
