"""Small synthetic classifiers built with onnx.helper, for unit tests of the passes and runtime.

Weights are seeded and chosen so that the models' predictions are spread over the classes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def tiny_cnn(opset: int = 17, blocks: int = 3, channels: int = 8, classes: int = 5, batch: int | str = "N",
             seed: int = 0) -> onnx.ModelProto:
    """x[B,3,16,16] -> conv stem -> `blocks` residual blocks -> GAP -> Gemm -> logits[B,classes]."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    c = channels
    inits.append(_init("stem_w", (rng.standard_normal((c, 3, 3, 3)) * 0.4).astype(np.float32)))
    inits.append(_init("stem_b", np.zeros(c, np.float32)))
    nodes += [helper.make_node("Conv", ["x", "stem_w", "stem_b"], ["stem"], pads=[1, 1, 1, 1], name="stem_conv"),
              helper.make_node("Relu", ["stem"], ["h0"], name="stem_relu")]
    h = "h0"
    for b in range(blocks):
        for j in (1, 2):
            inits.append(_init(f"b{b}_w{j}", (rng.standard_normal((c, c, 3, 3)) * (0.3 / np.sqrt(c))).astype(np.float32)))
            inits.append(_init(f"b{b}_b{j}", (rng.standard_normal(c) * 0.05).astype(np.float32)))
        nodes += [
            helper.make_node("Conv", [h, f"b{b}_w1", f"b{b}_b1"], [f"b{b}_c1"], pads=[1, 1, 1, 1], name=f"b{b}_conv1"),
            helper.make_node("Relu", [f"b{b}_c1"], [f"b{b}_r1"], name=f"b{b}_relu1"),
            helper.make_node("Conv", [f"b{b}_r1", f"b{b}_w2", f"b{b}_b2"], [f"b{b}_c2"], pads=[1, 1, 1, 1], name=f"b{b}_conv2"),
            helper.make_node("Add", [h, f"b{b}_c2"], [f"b{b}_sum"], name=f"b{b}_add"),
            helper.make_node("Relu", [f"b{b}_sum"], [f"h{b + 1}"], name=f"b{b}_relu2"),
        ]
        h = f"h{b + 1}"
    inits.append(_init("fc_w", (rng.standard_normal((classes, c)) * 1.5).astype(np.float32)))
    inits.append(_init("fc_b", np.zeros(classes, np.float32)))
    nodes += [helper.make_node("GlobalAveragePool", [h], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], axis=1, name="flatten"),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "tiny_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="exitc-tests")
    model.ir_version = 7 if opset <= 13 else 8
    onnx.checker.check_model(model)
    return model


def tiny_transformer(layers: int = 3, hidden: int = 16, seq: int = 8, vocab: int = 50, classes: int = 3,
                     carry_mask: bool = False, seed: int = 0, opset: int = 17,
                     torchscript_style: bool = False) -> onnx.ModelProto:
    """input_ids/attention_mask[B,T] -> embeddings -> `layers` attention blocks -> masked mean -> logits.

    The extended attention mask is built once from `attention_mask` and read by every layer, as in
    exported BERT graphs. With ``carry_mask`` it passes through a non-recomputable op (Sigmoid),
    so every cut must carry two tensors (hidden state + mask). With ``torchscript_style``, as the
    TorchScript exporter writes transformers >= 4.4x: the embeddings pass a LayerNorm spelled out
    as ReduceMean/Sub/Pow/Sqrt/Div, and the mask is expanded to [B, T, T] at sizes read with
    Shape from that LayerNorm's output (not from an input).
    """
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    H = hidden
    inits += [_init("emb", (rng.standard_normal((vocab, H)) * 0.5).astype(np.float32)),
              _init("pos", (rng.standard_normal((1, seq, H)) * 0.1).astype(np.float32)),
              _init("one", np.array(1.0, np.float32)), _init("neg", np.array(-1e4, np.float32)),
              _init("mshape", np.array([0, 1, -1], np.int64)),
              _init("scale", np.array(1 / np.sqrt(H), np.float32))]
    nodes += [helper.make_node("Gather", ["emb", "input_ids"], ["tok"], axis=0, name="embed"),
              helper.make_node("Add", ["tok", "pos"], ["h0"], name="add_pos"),
              helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT, name="mask_cast"),
              helper.make_node("Reshape", ["mf", "mshape"], ["m3"], name="mask_reshape"),
              helper.make_node("Sub", ["one", "m3"], ["inv"], name="mask_inv"),
              helper.make_node("Mul", ["inv", "neg"], ["ext0"], name="mask_ext")]
    ext = "ext0"
    h = "h0"
    if torchscript_style:
        inits += [_init("ax_last", np.array([-1], np.int64)), _init("two", np.array(2.0, np.float32)),
                  _init("ln_eps", np.array(1e-5, np.float32)), _init("i0", np.array([0], np.int64)),
                  _init("i1", np.array([1], np.int64))]
        nodes += [helper.make_node("ReduceMean", ["h0", "ax_last"] if opset >= 18 else ["h0"], ["e_mu"],
                                   **({} if opset >= 18 else {"axes": [-1]}), name="emb_ln_mean"),
                  helper.make_node("Sub", ["h0", "e_mu"], ["e_c"], name="emb_ln_sub"),
                  helper.make_node("Pow", ["e_c", "two"], ["e_sq"], name="emb_ln_pow"),
                  helper.make_node("ReduceMean", ["e_sq", "ax_last"] if opset >= 18 else ["e_sq"], ["e_var"],
                                   **({} if opset >= 18 else {"axes": [-1]}), name="emb_ln_var"),
                  helper.make_node("Add", ["e_var", "ln_eps"], ["e_ve"], name="emb_ln_add"),
                  helper.make_node("Sqrt", ["e_ve"], ["e_sd"], name="emb_ln_sqrt"),
                  helper.make_node("Div", ["e_c", "e_sd"], ["h0n"], name="emb_ln_div"),
                  helper.make_node("Shape", ["h0n"], ["h_shape"], name="mask_shape"),
                  helper.make_node("Gather", ["h_shape", "i0"], ["h_b"], axis=0, name="mask_b"),
                  helper.make_node("Gather", ["h_shape", "i1"], ["h_t"], axis=0, name="mask_t"),
                  helper.make_node("Concat", ["h_b", "h_t", "h_t"], ["m_shape"], axis=0, name="mask_dims"),
                  helper.make_node("Expand", ["ext0", "m_shape"], ["ext4"], name="mask_expand")]
        ext, h = "ext4", "h0n"
    if carry_mask:
        nodes += [helper.make_node("Sigmoid", [ext], ["ext_sig"], name="mask_sig"),
                  helper.make_node("Mul", ["ext_sig", "neg"], ["ext"], name="mask_scale")]
        ext = "ext"
    for l in range(layers):
        for w in ("q", "k", "v", "o", "f1", "f2"):
            inits.append(_init(f"l{l}_{w}", (rng.standard_normal((H, H)) / np.sqrt(H)).astype(np.float32)))
        p = f"l{l}"
        nodes += [
            helper.make_node("MatMul", [h, f"{p}_q"], [f"{p}_Q"], name=f"{p}_mq"),
            helper.make_node("MatMul", [h, f"{p}_k"], [f"{p}_K"], name=f"{p}_mk"),
            helper.make_node("MatMul", [h, f"{p}_v"], [f"{p}_V"], name=f"{p}_mv"),
            helper.make_node("Transpose", [f"{p}_K"], [f"{p}_KT"], perm=[0, 2, 1], name=f"{p}_kt"),
            helper.make_node("MatMul", [f"{p}_Q", f"{p}_KT"], [f"{p}_S0"], name=f"{p}_qk"),
            helper.make_node("Mul", [f"{p}_S0", "scale"], [f"{p}_S1"], name=f"{p}_scale"),
            helper.make_node("Add", [f"{p}_S1", ext], [f"{p}_S"], name=f"{p}_mask"),
            helper.make_node("Softmax", [f"{p}_S"], [f"{p}_A"], axis=-1, name=f"{p}_softmax"),
            helper.make_node("MatMul", [f"{p}_A", f"{p}_V"], [f"{p}_C"], name=f"{p}_av"),
            helper.make_node("MatMul", [f"{p}_C", f"{p}_o"], [f"{p}_O"], name=f"{p}_mo"),
            helper.make_node("Add", [h, f"{p}_O"], [f"{p}_h1"], name=f"{p}_res1"),
            helper.make_node("MatMul", [f"{p}_h1", f"{p}_f1"], [f"{p}_F1"], name=f"{p}_mf1"),
            helper.make_node("Relu", [f"{p}_F1"], [f"{p}_R"], name=f"{p}_relu"),
            helper.make_node("MatMul", [f"{p}_R", f"{p}_f2"], [f"{p}_F2"], name=f"{p}_mf2"),
            helper.make_node("Add", [f"{p}_h1", f"{p}_F2"], [f"{p}_h2"], name=f"{p}_res2"),
            helper.make_node("LayerNormalization", [f"{p}_h2", "ln_g", "ln_b"], [f"h{l + 1}"], axis=-1, name=f"{p}_ln"),
        ]
        h = f"h{l + 1}"
    inits += [_init("ln_g", np.ones(H, np.float32)), _init("ln_b", np.zeros(H, np.float32)),
              _init("col", np.array([0, -1, 1], np.int64)),
              _init("cls_w", (rng.standard_normal((H, classes)) * 2).astype(np.float32)),
              _init("cls_b", np.zeros(classes, np.float32)), _init("eps", np.array(1e-6, np.float32)),
              _init("axes1", np.array([1], np.int64))]
    nodes += [helper.make_node("Reshape", ["mf", "col"], ["mcol"], name="pool_mcol"),
              helper.make_node("Mul", [h, "mcol"], ["hm"], name="pool_mul"),
              helper.make_node("ReduceSum", ["hm", "axes1"], ["hs"], keepdims=0, name="pool_sum"),
              helper.make_node("ReduceSum", ["mcol", "axes1"], ["cnt"], keepdims=0, name="pool_cnt"),
              helper.make_node("Max", ["cnt", "eps"], ["cnt1"], name="pool_max"),
              helper.make_node("Div", ["hs", "cnt1"], ["pooled"], name="pool_div"),
              helper.make_node("MatMul", ["pooled", "cls_w"], ["lg0"], name="cls_mm"),
              helper.make_node("Add", ["lg0", "cls_b"], ["logits"], name="cls_add")]
    graph = helper.make_graph(nodes, "tiny_transformer",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", seq]),
                               helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", seq])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", classes])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="exitc-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def tiny_cnn1d(blocks: int = 3, channels: int = 8, length: int = 64, classes: int = 4, seed: int = 0) -> onnx.ModelProto:
    """signal[N,1,L] -> blocks of Conv1d(k=3, pad 1) + ReLU with a residual Add -> mean over L ->
    logits: a 1-D CNN (audio, ECG, sensor series) whose activations are [batch, channels, length]."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, cin = "signal", 1
    for b in range(blocks):
        inits += [_init(f"c{b}_w", (rng.standard_normal((channels, cin, 3)) / np.sqrt(3 * cin)).astype(np.float32)),
                  _init(f"c{b}_b", np.zeros(channels, np.float32)),
                  _init(f"d{b}_w", (rng.standard_normal((channels, channels, 3)) / np.sqrt(3 * channels)).astype(np.float32))]
        nodes += [helper.make_node("Conv", [x, f"c{b}_w", f"c{b}_b"], [f"c{b}"], pads=[1, 1], name=f"conv{b}"),
                  helper.make_node("Relu", [f"c{b}"], [f"r{b}"], name=f"relu{b}"),
                  helper.make_node("Conv", [f"r{b}", f"d{b}_w"], [f"d{b}"], pads=[1, 1], name=f"conv{b}b"),
                  helper.make_node("Add", [f"r{b}", f"d{b}"], [f"h{b}"], name=f"res{b}")]
        x, cin = f"h{b}", channels
    inits += [_init("axes2", np.array([2], np.int64)),
              _init("fc_w", (rng.standard_normal((channels, classes)) * 2).astype(np.float32)),
              _init("fc_b", np.zeros(classes, np.float32))]
    nodes += [helper.make_node("ReduceMean", [x, "axes2"], ["pooled"], keepdims=0, name="gap"),
              helper.make_node("MatMul", ["pooled", "fc_w"], ["z"], name="fc"),
              helper.make_node("Add", ["z", "fc_b"], ["logits"], name="fc_add")]
    graph = helper.make_graph(nodes, "tiny_cnn1d",
                              [helper.make_tensor_value_info("signal", TensorProto.FLOAT, ["N", 1, length])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="exitc-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def tiny_mlp(layers: int = 4, width: int = 32, features: int = 16, classes: int = 4, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    h, d = "x", features
    for l in range(layers):
        inits += [_init(f"w{l}", (rng.standard_normal((d, width)) * np.sqrt(2 / d)).astype(np.float32)),
                  _init(f"b{l}", np.zeros(width, np.float32))]
        nodes += [helper.make_node("Gemm", [h, f"w{l}", f"b{l}"], [f"z{l}"], name=f"fc{l}"),
                  helper.make_node("Relu", [f"z{l}"], [f"a{l}"], name=f"relu{l}")]
        h, d = f"a{l}", width
    inits += [_init("wo", (rng.standard_normal((d, classes)) * 0.5).astype(np.float32)), _init("bo", np.zeros(classes, np.float32))]
    nodes.append(helper.make_node("Gemm", [h, "wo", "bo"], ["logits"], name="out"))
    graph = helper.make_graph(nodes, "tiny_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="exitc-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def tiny_rnn(layers: int = 3, steps: int = 12, features: int = 6, hidden: int = 16, classes: int = 4,
             cell: str = "GRU", seed: int = 0, input_dims: list | None = None,
             final_states: bool = False) -> onnx.ModelProto:
    """x[B,T,F] (batch-first, as exporters take it) -> Transpose to [T,B,F] -> `layers` ONNX
    recurrent ops (LSTM, GRU or RNN; each Y [T,1,B,H] squeezed to [T,B,H]: time-major between the
    layers, as torch.onnx writes an nn.GRU/nn.LSTM stack) -> last step -> Gemm -> logits[B,classes].
    Weights are scaled so that the class varies from row to row. `input_dims` given: x is
    time-major with those dims ([T, B, F], as a batch_first=False module takes it), no Transpose.
    final_states: the classifier reads the last layer's final state out of every layer's Y_h
    concatenated ([layers, B, H], as torch.onnx writes h_n of an nn.GRU stack; `fc(h_n[-1])`), so
    each layer's Y_h is carried to the end beside the sequence."""
    rng = np.random.default_rng(seed)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[cell]
    nodes = [] if input_dims else [helper.make_node("Transpose", ["x"], ["t0"], perm=[1, 0, 2], name="time_major")]
    inits = [_init("sq_axes", np.array([1], np.int64)), _init("last", np.array(-1, np.int64))]
    h, d = ("x" if input_dims else "t0"), features
    for l in range(layers):
        inits += [_init(f"W{l}", (rng.standard_normal((1, gates * hidden, d)) / np.sqrt(d)).astype(np.float32)),
                  _init(f"R{l}", (rng.standard_normal((1, gates * hidden, hidden)) * 0.5 / np.sqrt(hidden)).astype(np.float32)),
                  _init(f"B{l}", (rng.standard_normal((1, 2 * gates * hidden)) * 0.1).astype(np.float32))]
        nodes += [helper.make_node(cell, [h, f"W{l}", f"R{l}", f"B{l}"], [f"y{l}", f"yh{l}"][:1 + final_states],
                                   hidden_size=hidden, name=f"{cell.lower()}{l}"),
                  helper.make_node("Squeeze", [f"y{l}", "sq_axes"], [f"t{l + 1}"], name=f"squeeze{l}")]
        h, d = f"t{l + 1}", hidden
    inits += [_init("fc_w", (rng.standard_normal((classes, hidden)) * 4.0).astype(np.float32)),
              _init("fc_b", np.zeros(classes, np.float32))]
    if final_states:
        nodes.append(helper.make_node("Concat", [f"yh{l}" for l in range(layers)], ["h_n"], axis=0, name="h_n"))
        h = "h_n"
    nodes += [helper.make_node("Gather", [h, "last"], ["final"], axis=0, name="last_step"),
              helper.make_node("Gemm", ["final", "fc_w", "fc_b"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "tiny_rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                              input_dims or ["N", steps, features])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="exitc-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def preprocessed_cnn(opset: int = 17) -> onnx.ModelProto:
    """tiny_cnn whose stem reads tanh(x): the cut before the stem is an image-like input exit."""
    m = tiny_cnn(opset=opset)
    stem = next(n for n in m.graph.node if n.op_type == "Conv")
    stem.input[0] = "x_pre"
    m.graph.node.insert(0, onnx.helper.make_node("Tanh", ["x"], ["x_pre"], name="preprocess"))
    return m


def uint8_nhwc_cnn(opset: int = 17) -> onnx.ModelProto:
    """tiny_cnn fed a uint8 NHWC image "img" [B,16,16,3], prepared inside the graph as tf2onnx
    and image pipelines write it: Cast to float, Transpose to NCHW, scale and shift (light ops
    only, so every tensor before the stem is recomputable from the input)."""
    m = tiny_cnn(opset=opset)
    g = m.graph
    g.input[0].CopyFrom(helper.make_tensor_value_info("img", TensorProto.UINT8, ["N", 16, 16, 3]))
    g.initializer.extend([numpy_helper.from_array(np.array(1 / 64.0, np.float32), "img_scale"),
                          numpy_helper.from_array(np.array(2.0, np.float32), "img_shift")])
    prepare = [helper.make_node("Cast", ["img"], ["img_f"], to=TensorProto.FLOAT, name="img_cast"),
               helper.make_node("Transpose", ["img_f"], ["img_t"], perm=[0, 3, 1, 2], name="img_nchw"),
               helper.make_node("Mul", ["img_t", "img_scale"], ["img_s"], name="img_mul"),
               helper.make_node("Sub", ["img_s", "img_shift"], ["x"], name="img_sub")]
    nodes = prepare + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(m)
    return m


def transformer_feeds(n: int, seq: int = 8, vocab: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(n, seq)).astype(np.int64)
    lengths = rng.integers(2, seq + 1, size=n)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}


def numpy_pooled(x: np.ndarray, layout: str, mask: np.ndarray | None = None, pooling=None) -> np.ndarray:
    """Pooled features [batch, D] written out in numpy from the definition in
    exitc.passes.heads.pooling_nodes, independently of the ONNX nodes and of passes.fx.pool_features
    (a reference for the tests: global average and max, the grid of averages or the random-filter
    responses for nchw; masked mean and first token for btc; mean, max and last step over time
    for tbc, whose x is [time, batch, C]; the features themselves for bf)."""
    from numpy.lib.stride_tricks import sliding_window_view

    def avg_pool(a, k):  # AveragePool with kernel = stride, no padding
        oh, ow = a.shape[2] // k[0], a.shape[3] // k[1]
        a = a[:, :, :oh * k[0], :ow * k[1]]
        return a.reshape(a.shape[0], a.shape[1], oh, k[0], ow, k[1]).mean(axis=(3, 5))

    x = x.astype(np.float64)
    n = len(x)
    if layout == "ncl":  # 1-D maps: pooled as [B, C, L, 1]
        x, layout = x[..., None], "nchw"
    if layout == "nchw":
        parts = [x.mean(axis=(2, 3)), x.max(axis=(2, 3))]
        if pooling is not None and pooling.grid is not None:
            parts.append(avg_pool(x, pooling.grid).reshape(n, -1))
        if pooling is not None and pooling.filters is not None:
            rf = pooling.filters
            small = avg_pool(x, rf.pre)
            windows = sliding_window_view(small, (rf.size, rf.size), axis=(2, 3))  # [n, c, h, w, s, s]
            resp = np.maximum(np.einsum("nchwij,kcij->nkhw", windows, rf.weights().astype(np.float64)), 0)
            parts.append(avg_pool(resp, rf.cell).reshape(n, -1))
        return np.concatenate(parts, axis=1).astype(np.float32)
    if layout == "btc":
        if mask is None:
            mean = x.mean(axis=1)
        else:
            m = mask.astype(np.float64)
            mean = (m[:, :, None] * x).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)[:, None]
        return np.concatenate([mean, x[:, 0]], axis=1).astype(np.float32)
    if layout == "tbc":
        return np.concatenate([x.mean(axis=0), x.max(axis=0), x[-1]], axis=1).astype(np.float32)
    if layout == "bf":
        return x.astype(np.float32)
    raise ValueError(layout)


def quantized_cnn(mode: str, seed: int = 0) -> onnx.ModelProto:
    """tiny_cnn (opset 13) quantized by onnxruntime.quantization as users quantize for CPUs:
    "qdq" (QuantizeLinear/DequantizeLinear pairs around float ops), "qoperator" (QLinearConv,
    QLinearAdd) or "dynamic" (each activation's scale computed over the whole batch at run time)."""
    rows = np.random.default_rng(seed).standard_normal((32, 3, 16, 16)).astype(np.float32)
    return quantized(tiny_cnn(opset=13, seed=seed), {"x": rows}, mode, op_types=["Conv"])


def quantized(model: onnx.ModelProto, rows: dict[str, np.ndarray], mode: str,
              op_types: list[str] | None = None) -> onnx.ModelProto:
    """`model` quantized by onnxruntime.quantization (see quantized_cnn for `mode`), calibrated on
    `rows` in batches of 8."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    n = len(next(iter(rows.values())))

    class Rows(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{k: v[i:i + 8] for k, v in rows.items()} for i in range(0, n, 8)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        if mode == "dynamic":
            quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=op_types)
        else:
            fmt = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}[mode]
            quantize_static(str(src), str(out), Rows(), quant_format=fmt, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return onnx.load(str(out))


def binary_cnn(sigmoid: bool, seed: int = 0) -> onnx.ModelProto:
    """tiny_cnn with one score per row: logits [B, 1] (a single logit), or with `sigmoid` the
    probability of class 1 ("probs" [B, 1]). The logit's bias puts the decision at its median
    over standard-normal images, so both classes occur."""
    import onnxruntime as ort

    m = tiny_cnn(classes=1, seed=seed)
    x = np.random.default_rng(seed + 100).standard_normal((256, 3, 16, 16)).astype(np.float32)
    z = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    bias = next(t for t in m.graph.initializer if t.name == "fc_b")
    bias.CopyFrom(numpy_helper.from_array(np.array([-np.median(z)], np.float32), "fc_b"))
    if sigmoid:
        m.graph.node.append(helper.make_node("Sigmoid", ["logits"], ["probs"], name="sigmoid"))
        del m.graph.output[:]
        m.graph.output.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 1]))
    onnx.checker.check_model(m)
    return m


def compile_on_noise(model: onnx.ModelProto, tmp, rows: int = 1700, calib_rows: int = 1400, target_acc: float = 0.9):
    """Compile `model` (one input `x` [B,3,16,16]) on standard-normal rows: the first `calib_rows`
    calibrate, the rest are returned with the original's outputs on them, as
    (artifact path, CompileResult, held-out rows, original outputs)."""
    import onnxruntime as ort

    from exitc.driver import CompileOptions, compile_model

    onnx.save(model, str(tmp / "m.onnx"))
    x = np.random.default_rng(0).standard_normal((rows, 3, 16, 16)).astype(np.float32)
    np.savez(tmp / "calib.npz", x=x[:calib_rows])
    res = compile_model(str(tmp / "m.onnx"), str(tmp / "calib.npz"), str(tmp / "m.exitc"),
                        CompileOptions(target_acc=target_acc, progress=False, never_slower=False), log=lambda *a: None)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return str(tmp / "m.exitc"), res, x[calib_rows:], sess.run(None, {"x": x[calib_rows:]})[0]


def cnn_with_functions(blocks: int = 4, seed: int = 0) -> onnx.ModelProto:
    """tiny_cnn with each residual block written as a call to one local function (domain
    ``exitc.tests``), as torch.onnx's export_modules_as_functions writes repeated modules; it
    computes what tiny_cnn(blocks=`blocks`, seed=`seed`) does."""
    plain = tiny_cnn(blocks=blocks, seed=seed)
    body = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
            helper.make_node("Add", ["x", "c2"], ["s"]),
            helper.make_node("Relu", ["s"], ["y"])]
    fn = helper.make_function("exitc.tests", "ResBlock", ["x", "w1", "b1", "w2", "b2"], ["y"], body,
                              [helper.make_opsetid("", 17)])
    nodes = [n for n in plain.graph.node if not n.name.startswith("b")]
    calls = [helper.make_node("ResBlock", [f"h{b}", f"b{b}_w1", f"b{b}_b1", f"b{b}_w2", f"b{b}_b2"], [f"h{b + 1}"],
                              domain="exitc.tests", name=f"block{b}") for b in range(blocks)]
    graph = helper.make_graph(nodes[:2] + calls + nodes[2:], "cnn_with_functions", list(plain.graph.input),
                              list(plain.graph.output), initializer=list(plain.graph.initializer))
    model = helper.make_model(graph, functions=[fn], producer_name="exitc-tests",
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("exitc.tests", 1)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
