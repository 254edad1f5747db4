#!/usr/bin/env python3
"""Text classifiers from the `transformers` library's own modeling code, through both torch.onnx
exporters, one table: what `exitc compile` does with each.

BERT, DistilBERT, RoBERTa, ALBERT, ELECTRA, DeBERTa-v2, GPT-2 (pooled at its last real token)
and MobileBERT, each as a small randomly initialised sequence classifier (32 hidden units, 4
layers, eager attention) fitted for a few hundred steps on a synthetic task (5 classes: which
keyword token a row of random tokens holds, 6-32 tokens padded to 32 on the right, one decoy
keyword in 30% of the rows), so that its predictions spread over the classes. Each is exported
with `input_ids` and `attention_mask` at the padded length, batch open (dynamo, opset 18;
TorchScript, opset 14; TorchScript then onnxruntime.transformers' optimizer, as optimum's ORT
optimisation writes it), compiled by `exitc compile --target-acc 0.99` on 2000 rows, and judged
from the artifact's report: whether rows are cut to their length (and why not), the exits kept,
the compile's own measured batch-32 speedup beside its prediction, and how far full-depth rows
are from the original (exact: at most 1e-4). Models this small are where per-call costs and
ONNX Runtime's handling of open shapes show most; they are not the samples' scale.

    .venv/bin/python bench/text_families.py [--only bert,gpt2] [--exporters dynamo,torchscript] [--steps 200]
                                            [--out DIR] [--json FILE] [--compile-args "--trim-padding always"]

Needs torch and transformers (scripts/setup_samples.sh).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.exports import compile_and_read, parse_args, torch_export  # noqa: E402
from exitc.report import format_table  # noqa: E402

VOCAB, LENGTH, CLASSES = 200, 32, 5
CALIB_ROWS, TEST_ROWS = 2000, 1000
# "torchscript+ort": the TorchScript export after onnxruntime.transformers' optimizer (what
# optimum's ORT optimisation runs): Attention, EmbedLayerNormalization, SkipLayerNormalization and
# fused GELUs from ORT's own domain, and ONNX-domain LayerNormalization at opset 14.
EXPORTERS = {"dynamo": 18, "torchscript": 14, "torchscript+ort": 14}


def keyword_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, attention_mask, labels): rows of random tokens, 6..LENGTH long, padded with 0
    on the right; token 1 first; the label is the class whose keyword (token 3 + class) the row
    holds 1-3 times; 30% of the rows hold one more keyword of any class (a decoy)."""
    g = np.random.default_rng(seed)
    ids = np.zeros((n, LENGTH), np.int64)
    mask = np.zeros((n, LENGTH), np.int64)
    labels = g.integers(0, CLASSES, n)
    for i in range(n):
        length = int(g.integers(6, LENGTH + 1))
        row = g.integers(CLASSES + 10, VOCAB, length)
        at = g.choice(np.arange(1, length), size=int(g.integers(1, 4)), replace=False)
        row[at] = 3 + labels[i]
        if g.random() < 0.3:
            row[g.integers(1, length)] = 3 + g.integers(0, CLASSES)
        row[0] = 1
        ids[i, :length], mask[i, :length] = row, 1
    return ids, mask, labels


def make(arch: str) -> nn.Module:
    import transformers as T  # slow to import: only here

    common = dict(vocab_size=VOCAB, num_labels=CLASSES, max_position_embeddings=2 * LENGTH, pad_token_id=0)
    tiny = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, **common)
    eager = dict(attn_implementation="eager")
    build = {
        "bert": lambda: T.BertForSequenceClassification(T.BertConfig(**tiny, **eager)),
        "distilbert": lambda: T.DistilBertForSequenceClassification(T.DistilBertConfig(
            vocab_size=VOCAB, dim=32, n_layers=4, n_heads=4, hidden_dim=64, num_labels=CLASSES,
            max_position_embeddings=2 * LENGTH, pad_token_id=0, **eager)),
        # RoBERTa's positions start after the padding index
        "roberta": lambda: T.RobertaForSequenceClassification(T.RobertaConfig(
            **{**tiny, "max_position_embeddings": 2 * LENGTH + 2}, **eager)),
        "albert": lambda: T.AlbertForSequenceClassification(T.AlbertConfig(embedding_size=16, **tiny, **eager)),
        "electra": lambda: T.ElectraForSequenceClassification(T.ElectraConfig(embedding_size=16, **tiny, **eager)),
        "deberta_v2": lambda: T.DebertaV2ForSequenceClassification(T.DebertaV2Config(**tiny)),
        "gpt2": lambda: T.GPT2ForSequenceClassification(T.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4, n_positions=2 * LENGTH, num_labels=CLASSES,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, **eager)),
        "mobilebert": lambda: T.MobileBertForSequenceClassification(T.MobileBertConfig(
            vocab_size=VOCAB, hidden_size=32, embedding_size=16, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=64, intra_bottleneck_size=16, true_hidden_size=16, num_labels=CLASSES,
            max_position_embeddings=2 * LENGTH, pad_token_id=0)),
    }
    inner = build[arch]()

    class Logits(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = inner

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    return Logits()


ARCHS = ("bert", "distilbert", "roberta", "albert", "electra", "deberta_v2", "gpt2", "mobilebert")


def fit(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Adam steps of 64 rows on the calibration rows' part; accuracy on the test rows."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(steps):
        i = torch.randint(0, CALIB_ROWS, (64,))
        loss = F.cross_entropy(model(ids[i], mask[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(ids[CALIB_ROWS:], mask[CALIB_ROWS:]).argmax(1) == y[CALIB_ROWS:]).float().mean())


def export(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, path: Path, exporter: str) -> str | None:
    """Writes `path` (batch open, length fixed as exporters write text models); torch's one-line
    reason where the export fails."""
    dynamo = exporter == "dynamo"
    names = ["input_ids", "attention_mask"]
    failed = torch_export(torch.onnx.export, model, (ids[:2], mask[:2]), str(path), input_names=names,
                          output_names=["logits"], dynamo=dynamo, opset_version=EXPORTERS[exporter],
                          dynamic_shapes=({0: torch.export.Dim("n")}, {0: torch.export.Dim("n")}) if dynamo else None,
                          dynamic_axes=None if dynamo else {n: {0: "n"} for n in names + ["logits"]})
    if failed or exporter != "torchscript+ort":
        return failed
    from onnxruntime.transformers.optimizer import optimize_model

    kind = "gpt2" if "GPT2" in type(model.model).__name__ else "bert"
    heads, hidden = model.model.config.num_attention_heads, model.model.config.hidden_size
    optimize_model(str(path), model_type=kind, num_heads=heads, hidden_size=hidden, opt_level=1).save_model_to_file(
        str(path))
    return None


def main() -> int:
    parsed = parse_args(__doc__.split("\n\n")[0], "text_families.py", list(ARCHS), steps=200,
                        exporters=list(EXPORTERS))
    if parsed is None:
        return 2
    a, names, out = parsed
    ids_np, mask_np, y_np = keyword_rows(CALIB_ROWS + TEST_ROWS)
    ids, mask, y = map(torch.from_numpy, (ids_np, mask_np, y_np))
    rows, results = [], []
    for name in names:
        model = make(name)
        acc = fit(model, ids, mask, y, a.steps)
        for exporter in a.exporters:
            d = out / f"{name}_{exporter}"
            d.mkdir(parents=True, exist_ok=True)
            failed = export(model, ids, mask, d / "model.onnx", exporter)
            r = {"architecture": name, "exporter": exporter, "accuracy": round(acc, 3)}
            if failed:
                r["export_error"] = failed
                rows.append([name, exporter, f"{acc:.2f}", "-", "-", "-", "-", "-", f"export failed in torch: {failed}"])
            else:
                np.savez(d / "calib.npz", input_ids=ids_np[:CALIB_ROWS], attention_mask=mask_np[:CALIB_ROWS])
                np.savez(d / "test.npz", input_ids=ids_np[CALIB_ROWS:], attention_mask=mask_np[CALIB_ROWS:])
                r.update(compile_and_read(d, a.compile_args.split()))
                if "error" in r:
                    rows.append([name, exporter, f"{acc:.2f}", "-", "-", "-", "-", "-",
                                 f"{r['error']} ({r['lines']} line(s))"])
                else:
                    measured = f"{r['measured']:.2f}x" if r["measured"] else "-"
                    cut = "yes" if r["cut_to_length"] else "no: " + r["why_padded"][:70]
                    rows.append([name, exporter, f"{acc:.2f}", cut, " ".join(map(str, r["exits"])) or "none",
                                 " ".join(map(str, r["fractions"])), f"{r['predicted']:.2f}x / {measured}",
                                 f"{r['full_depth_diff']:.1e}", r["reason"]])
            results.append(r)
            print(f"text_families: {name} {exporter} done", file=sys.stderr, flush=True)
    print(format_table(["architecture", "exporter", "accuracy", "rows cut to length", "exits",
                        "fractions (certification)", "batch 32 predicted / measured", "full-depth diff", "note"], rows))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
