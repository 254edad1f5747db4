#!/usr/bin/env python3
"""Backbone families the samples do not have, through both torch.onnx exporters, one table.

Each family is a small hand-written network with the structure that breaks graph passes in
practice: channel shuffles and squeeze-excitation (Reshape/Transpose between convolutions, a
global-pool branch multiplied back), DenseNet concatenations (every cut carries a growing
tensor), Inception branches (several tensors cross most cuts), ConvNeXt blocks (NCHW <-> NHWC
permutes around LayerNorm), a ViT (class token, nn.TransformerEncoderLayer), an MLP-Mixer
returning log-probabilities, an NHWC-input network returning probabilities, and four image
classifiers from the `transformers` library's own modeling code (Swin, MobileViT, ConvNeXt V2,
DeiT; small configs, randomly initialised). Each is fitted
for a few hundred steps on Fashion-MNIST photos (Debian `dataset-fashion-mnist`, resized to
32 px, 3 channels), so that its predictions spread over the classes, then exported by the
dynamo exporter (opset 18) and the TorchScript exporter (opset 13), compiled by `exitc compile
--target-acc 0.99` on 3000 rows, and judged from the artifact's report: the exits kept, the
compile's own measured batch-32 speedup beside its prediction, and how far full-depth rows are
from the original (exact: at most 1e-4). A failed export is torch's and is shown as such; an
exitc failure shows its one-line message.

    .venv/bin/python bench/families.py [--only shuffle_se,dense] [--exporters dynamo,torchscript-batch8]
                                       [--steps 150] [--out DIR]

Needs torch (scripts/setup_samples.sh) and the Fashion-MNIST package (bench/zoo/cache.py).
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.exports import compile_and_read, parse_args, torch_export  # noqa: E402
from bench.zoo.inputs import fashion_train  # noqa: E402
from exitc.report import format_table  # noqa: E402

SIDE = 32
CALIB_ROWS, TEST_ROWS = 3000, 1000


class SqueezeExcite(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.down, self.up = nn.Linear(c, c // 4), nn.Linear(c // 4, c)

    def forward(self, x):
        w = torch.sigmoid(self.up(F.relu(self.down(x.mean((2, 3))))))
        return x * w[:, :, None, None]


class ShuffleSE(nn.Module):
    """Grouped 1x1 convs with a channel shuffle between blocks, depthwise 3x3, SE, residuals."""

    def __init__(self, c: int = 32, groups: int = 4, blocks: int = 6):
        super().__init__()
        self.groups = groups
        self.stem = nn.Conv2d(3, c, 3, 2, 1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 1, groups=groups), nn.BatchNorm2d(c), nn.ReLU(),
                                                  nn.Conv2d(c, c, 3, 1, 1, groups=c), SqueezeExcite(c))
                                    for _ in range(blocks))
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for block in self.blocks:
            n, c, h, w = x.shape
            x = x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)
            x = x + block(x)
        return self.fc(x.mean((2, 3)))


class Dense(nn.Module):
    """Each layer's output concatenated to all before it."""

    def __init__(self, c: int = 16, growth: int = 8, layers: int = 6):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, 2, 1)
        self.layers = nn.ModuleList()
        for _ in range(layers):
            self.layers.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, growth, 3, 1, 1)))
            c += growth
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return self.fc(x.mean((2, 3)))


class Inception(nn.Module):
    """Three parallel branches (1x1, 3x3, max-pool + 1x1) concatenated, five times."""

    def __init__(self, c: int = 24, blocks: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, 2, 1)
        self.blocks = nn.ModuleList(nn.ModuleList([nn.Conv2d(c, c // 3, 1), nn.Conv2d(c, c // 3, 3, 1, 1),
                                                   nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(c, c // 3, 1))])
                                    for _ in range(blocks))
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for branches in self.blocks:
            x = F.relu(torch.cat([b(x) for b in branches], 1))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ConvNeXtLike(nn.Module):
    """Patchify stem, depthwise 7x7, then LayerNorm and the MLP in channels-last (permutes)."""

    def __init__(self, c: int = 32, blocks: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 4, 4)
        self.dw = nn.ModuleList(nn.Conv2d(c, c, 7, 1, 3, groups=c) for _ in range(blocks))
        self.norm = nn.ModuleList(nn.LayerNorm(c) for _ in range(blocks))
        self.expand = nn.ModuleList(nn.Linear(c, 3 * c) for _ in range(blocks))
        self.project = nn.ModuleList(nn.Linear(3 * c, c) for _ in range(blocks))
        self.head = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, 10))

    def forward(self, x):
        x = self.stem(x)
        for dw, norm, expand, project in zip(self.dw, self.norm, self.expand, self.project):
            y = dw(x).permute(0, 2, 3, 1)
            x = x + project(F.gelu(expand(norm(y)))).permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


class ViTLike(nn.Module):
    """8 px patches, a class token, learned positions, four encoder layers."""

    def __init__(self, d: int = 64, layers: int = 4):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 8, 8)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, (SIDE // 8) ** 2 + 1, d) * 0.02)
        self.encoder = nn.ModuleList(nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True)
                                     for _ in range(layers))
        self.fc = nn.Linear(d, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for layer in self.encoder:
            x = layer(x)
        return self.fc(x[:, 0])


class Mixer(nn.Module):
    """Token-mixing MLPs on the transposed patch grid, channel-mixing MLPs; log-probabilities out."""

    def __init__(self, d: int = 64, layers: int = 4):
        super().__init__()
        tokens = (SIDE // 8) ** 2
        self.patch = nn.Conv2d(3, d, 8, 8)
        self.token_mlp = nn.ModuleList(nn.Sequential(nn.Linear(tokens, 32), nn.GELU(), nn.Linear(32, tokens))
                                       for _ in range(layers))
        self.channel_mlp = nn.ModuleList(nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
                                         for _ in range(layers))
        self.norm1 = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        self.norm2 = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        self.fc = nn.Linear(d, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        for tok, ch, n1, n2 in zip(self.token_mlp, self.channel_mlp, self.norm1, self.norm2):
            x = x + tok(n1(x).transpose(1, 2)).transpose(1, 2)
            x = x + ch(n2(x))
        return torch.log_softmax(self.fc(x.mean(1)), -1)


class NhwcProbs(nn.Module):
    """An NHWC image permuted inside the graph, six convolutions; probabilities out."""

    def __init__(self, c: int = 24):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3 if i == 0 else c, c, 3, 2 if i < 3 else 1, 1) for i in range(6))
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = x.permute(0, 3, 1, 2)
        for conv in self.convs:
            x = F.relu(conv(x))
        return torch.softmax(self.fc(x.mean((2, 3))), -1)


class Transformers(nn.Module):
    """An image classifier as the `transformers` library writes it (randomly initialised from a
    small config, then fitted like the others): its modeling code is what users export, with
    its own reshapes (Swin's window partitions and shifted-window rolls, MobileViT's unfolding
    into patches, ConvNeXt V2's global response norm, DeiT's two tokens)."""

    def __init__(self, arch: str):
        super().__init__()
        import transformers as T  # slow to import: only where these families run

        make = {
            "swin": lambda: T.SwinForImageClassification(T.SwinConfig(
                image_size=SIDE, patch_size=2, embed_dim=24, depths=[2, 2], num_heads=[2, 4], window_size=4,
                num_labels=10, attn_implementation="eager")),
            "mobilevit": lambda: T.MobileViTForImageClassification(T.MobileViTConfig(
                image_size=SIDE, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 8, 16, 24, 32, 40, 160],
                num_labels=10, attn_implementation="eager")),
            "convnextv2": lambda: T.ConvNextV2ForImageClassification(T.ConvNextV2Config(
                patch_size=2, hidden_sizes=[16, 32, 64], depths=[1, 2, 1], num_stages=3, num_labels=10)),
            "deit": lambda: T.DeiTForImageClassification(T.DeiTConfig(
                image_size=SIDE, patch_size=4, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                intermediate_size=128, num_labels=10, attn_implementation="eager")),
        }
        # attn_implementation="eager": attention as plain MatMul/Softmax, as models exported for
        # ONNX are usually written (the SDPA default does not export at opset 13 and kept Swin
        # from exporting through the dynamo exporter too).
        self.model = make[arch]()

    def forward(self, x):
        return self.model(pixel_values=x).logits


# name -> (module factory, what its output holds, whether its input is NHWC)
FAMILIES = {
    "shuffle_se": (ShuffleSE, "logits", False),
    "dense": (Dense, "logits", False),
    "inception": (Inception, "logits", False),
    "convnext_like": (ConvNeXtLike, "logits", False),
    "vit_like": (ViTLike, "logits", False),
    "mixer": (Mixer, "log_probabilities", False),
    "nhwc_probs": (NhwcProbs, "probabilities", True),
    "hf_swin": (partial(Transformers, "swin"), "logits", False),
    "hf_mobilevit": (partial(Transformers, "mobilevit"), "logits", False),
    "hf_convnextv2": (partial(Transformers, "convnextv2"), "logits", False),
    "hf_deit": (partial(Transformers, "deit"), "logits", False),
}
# Opsets of each export. Besides the two exporters, two forms users' files often have (run with
# --exporters): "torchscript-batch8", exported without dynamic axes from an example of 8 rows, so
# the batch is fixed to 8 and folded into Reshape targets; "torchscript+ort-saved", the
# TorchScript export as ONNX Runtime saves it after its extended graph optimisations
# (optimized_model_filepath: FusedConv, FusedGemm, FusedMatMul, BiasGelu from ORT's own domain).
EXPORTERS = {"dynamo": 18, "torchscript": 13, "torchscript-batch8": 13, "torchscript+ort-saved": 13}
DEFAULT_EXPORTERS = ["dynamo", "torchscript"]


def photos(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = fashion_train(n)
    x = torch.tensor(x, dtype=torch.float32)[:, None] / 255.0
    return F.interpolate(x, size=SIDE, mode="bilinear").repeat(1, 3, 1, 1), torch.tensor(y, dtype=torch.int64)


def fit(model: nn.Module, kind: str, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """A few hundred Adam steps on the first rows; held-out accuracy on the rest."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    model.train()
    n_fit = len(x) - TEST_ROWS
    for _ in range(steps):
        i = torch.randint(0, n_fit, (64,))
        out = model(x[i])
        log_p = {"logits": F.log_softmax(out, -1), "log_probabilities": out,
                 "probabilities": torch.log(out + 1e-9)}[kind]
        loss = F.nll_loss(log_p, y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(x[n_fit:]).argmax(1) == y[n_fit:]).float().mean())


def export(model: nn.Module, x: torch.Tensor, path: Path, exporter: str) -> str | None:
    """Writes `path`; returns torch's one-line reason where the export fails."""
    dynamo = exporter == "dynamo"
    fixed = exporter == "torchscript-batch8"
    saved = exporter == "torchscript+ort-saved"
    raw = path.with_name(path.stem + ".torchscript.onnx") if saved else path
    failed = torch_export(torch.onnx.export, model, (x[:8] if fixed else x[:2],), str(raw), input_names=["img"],
                          output_names=["out"], dynamo=dynamo, opset_version=EXPORTERS[exporter],
                          dynamic_shapes=({0: torch.export.Dim("n")},) if dynamo else None,
                          dynamic_axes=None if dynamo or fixed else {"img": {0: "n"}, "out": {0: "n"}})
    if failed or not saved:
        return failed
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(path)
    ort.InferenceSession(str(raw), opts, providers=["CPUExecutionProvider"])
    raw.unlink()
    return None


def main() -> int:
    parsed = parse_args(__doc__.split("\n\n")[0], "families.py", list(FAMILIES), steps=150,
                        exporters=list(EXPORTERS), default_exporters=DEFAULT_EXPORTERS)
    if parsed is None:
        return 2
    a, names, out = parsed
    x, y = photos(CALIB_ROWS + TEST_ROWS)
    rows, results = [], []
    for name in names:
        cls, kind, nhwc = FAMILIES[name]
        model = cls()
        xin = x.permute(0, 2, 3, 1).contiguous() if nhwc else x
        acc = fit(model, kind, xin, y, a.steps)
        for exporter in a.exporters:
            d = out / f"{name}_{exporter}"
            d.mkdir(parents=True, exist_ok=True)
            failed = export(model, xin, d / "model.onnx", exporter)
            r = {"family": name, "exporter": exporter, "accuracy": round(acc, 3)}
            if failed:
                r["export_error"] = failed
                rows.append([name, exporter, f"{acc:.2f}", "-", "-", "-", "-", f"export failed in torch: {failed}"])
            else:
                np.savez(d / "calib.npz", img=xin[:CALIB_ROWS].numpy())
                r.update(compile_and_read(d, a.compile_args.split()))
                if "error" in r:
                    rows.append([name, exporter, f"{acc:.2f}", "-", "-", "-", "-", f"{r['error']} ({r['lines']} line(s))"])
                else:
                    measured = f"{r['measured']:.2f}x" if r["measured"] else "-"
                    exits = " ".join(map(str, r["exits"])) or "none"
                    rows.append([name, exporter, f"{acc:.2f}", exits, " ".join(map(str, r["fractions"])),
                                 f"{r['predicted']:.2f}x / {measured}", f"{r['full_depth_diff']:.1e}", r["reason"]])
            results.append(r)
            print(f"families: {name} {exporter} done", file=sys.stderr, flush=True)
    print(format_table(["family", "exporter", "accuracy", "exits", "fractions (certification)",
                        "batch 32 predicted / measured", "full-depth diff", "note"], rows))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
