"""Shared helpers for the sample builders (``build_*.py``).

Everything here is deliberately small and dependency-light: ONNX Runtime
session setup, batched inference with progress bars, a softmax-regression
head fitter (scipy L-BFGS), cache bookkeeping via ``meta.json``, a reader for
R lazy-load databases (the data of Debian ``r-cran-*`` packages) and a few
utilities for clean one-line error reporting.
"""

from __future__ import annotations

import argparse
import bz2
import json
import lzma
import os
import platform
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

SAMPLES_DIR = Path(__file__).resolve().parent
CACHE_DIR = SAMPLES_DIR / ".cache"
DEBS_ROOT = CACHE_DIR / "debs" / "root"

ORT_THREADS = 2


class BuildError(RuntimeError):
    """An expected failure that is reported as a single line (no traceback)."""


def run_main(main: Callable[[], None]) -> None:
    """Run ``main`` and turn :class:`BuildError` into a one-line message + exit 1."""
    try:
        main()
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


def quiet_exporter() -> None:
    """Silence the torch.onnx exporter's harmless warnings (torchvision ops, deprecations)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*torch.export.*")
    warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)


def require_file(path: Path, hint: str) -> Path:
    """Return ``path`` if it exists, else raise a BuildError mentioning ``hint``."""
    if not path.exists():
        raise BuildError(f"{path} not found; {hint}")
    return path


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed versions of the given distributions (missing ones are skipped)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------
# Cache bookkeeping
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class RowCount:
    """A builder's row-count option: its default (None: the builder derives it), bounds and help."""

    default: int | None
    minimum: int
    help: str
    maximum: int | None = None


def parse_sample_args(doc: str, out: Path, calib: RowCount, test: RowCount, head: RowCount) -> argparse.Namespace:
    """Every builder's command line (--out, --calib-rows, --test-rows, --head-rows, --force), each
    row count checked against its bounds: a BuildError names the option."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=out, help="output directory")
    counts = {"--calib-rows": calib, "--test-rows": test, "--head-rows": head}
    for flag, rows in counts.items():
        p.add_argument(flag, type=int, default=rows.default, help=rows.help)
    p.add_argument("--force", action="store_true", help="rebuild even if outputs are fresh")
    args = p.parse_args()
    for flag, rows in counts.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if rows.maximum is not None and not rows.minimum <= value <= rows.maximum:
            raise BuildError(f"{flag} must be in {rows.minimum}..{rows.maximum}")
        if value < rows.minimum:
            raise BuildError(f"{flag} must be >= {rows.minimum}")
    return args


BUILD_PACKAGES = ["torch", "onnx", "onnxruntime", "onnxscript", "numpy", "scipy"]


def result_meta(head: Mapping, accuracy: float, max_diff: float, rows_per_s: float, build_s: float,
                packages: Sequence[str], majority: float | None = None) -> dict:
    """The meta.json fields every builder writes about what it built: the head fit, test accuracy
    (and the majority-class baseline where given), ONNX vs torch, ORT throughput, build time and
    the versions of the packages it was built with (BUILD_PACKAGES + `packages`)."""
    meta = {"head": {"l2": head["l2"], "holdout_accuracy": head["holdout_accuracy"],
                     "train_accuracy": head["train_accuracy"]},
            "test_accuracy": accuracy}
    if majority is not None:
        meta["test_majority_baseline"] = majority
    meta.update({"onnx_vs_torch_max_abs_diff": max_diff, "ort_rows_per_s_batch32": rows_per_s,
                 "ort_threads": ORT_THREADS, "build_seconds": build_s,
                 "versions": package_versions(BUILD_PACKAGES + list(packages))})
    return meta


def clear_outputs(out: Path, files: Iterable[str]) -> None:
    """Create `out` and remove the builder's previous outputs there: a failed build never leaves a
    half-stale set behind."""
    out.mkdir(parents=True, exist_ok=True)
    for name in files:
        (out / name).unlink(missing_ok=True)


def start_torch(seed: int):
    """torch, seeded, on the builders' thread count, with the exporter's chatter silenced."""
    import torch

    quiet_exporter()
    torch.manual_seed(seed)
    torch.set_num_threads(ORT_THREADS)
    return torch


def cache_is_fresh(out_dir: Path, files: Iterable[str], args: Mapping) -> bool:
    """True if all ``files`` exist in ``out_dir`` and meta.json records ``args``."""
    meta_path = out_dir / "meta.json"
    if not meta_path.exists() or not all((out_dir / f).exists() for f in files):
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("args") == dict(args)


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as pretty JSON atomically (write temp file, then rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Save arrays uncompressed to ``path`` atomically."""
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# R lazy-load databases (Rdata.rdx / Rdata.rdb of Debian r-cran-* packages)
# --------------------------------------------------------------------------

def _decompress_rdb_chunk(chunk: bytes, kind: int) -> bytes:
    """Decompress one object of an R lazy-load database.

    Layout (R's ``R_compress{1,2,3}``): 4-byte big-endian uncompressed length,
    then for kind 1 a zlib stream; for kinds 2/3 one type byte ('0' = stored,
    '2' = bzip2, 'Z' = raw LZMA2) followed by the payload.
    """
    size = int.from_bytes(chunk[:4], "big")
    if kind == 1:
        data = zlib.decompress(chunk[4:])
    else:
        tag, payload = chunk[4:5], chunk[5:]
        if tag == b"0":
            data = payload
        elif tag == b"2":
            data = bz2.decompress(payload)
        elif tag == b"Z":
            data = lzma.decompress(payload, format=lzma.FORMAT_RAW,
                                   filters=[{"id": lzma.FILTER_LZMA2}])
        else:
            raise BuildError(f"unknown R lazy-load compression tag {tag!r}")
    if len(data) != size:
        raise BuildError("corrupt R lazy-load database entry (size mismatch)")
    return data


def read_r_lazyload(data_dir: Path, names: Sequence[str], hint: str) -> dict:
    """The named objects of the lazy-load database ``data_dir/Rdata.{rdx,rdb}``, converted
    by ``rdata`` (data frames to pandas, character vectors to numpy), in ``names`` order."""
    import rdata

    rdx = require_file(Path(data_dir) / "Rdata.rdx", hint)
    rdb = require_file(Path(data_dir) / "Rdata.rdb", hint)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata: unknown tibble classes, RDS guess
        index = rdata.read_rds(rdx)
        kind = int(np.asarray(index["compressed"]).ravel()[0])
        blob = rdb.read_bytes()
        for name in names:
            if name not in index["variables"]:
                raise BuildError(f"{name} missing from {rdx}")
            offset, length = (int(v) for v in index["variables"][name])
            raw = _decompress_rdb_chunk(blob[offset:offset + length], kind)
            out[name] = rdata.conversion.convert(rdata.parser.parse_data(raw))
    return out


# --------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------

def ort_session(model_path: Path, threads: int = ORT_THREADS):
    """CPU ORT session with ``threads`` intra-op threads and spinning disabled."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


def run_batched(sess, feeds: Mapping[str, np.ndarray], batch: int = 64,
                desc: str = "ort") -> np.ndarray:
    """Run the (single-output) session over ``feeds`` in batches; concatenate results."""
    from tqdm import tqdm

    n = len(next(iter(feeds.values())))
    outs = []
    with tqdm(total=n, desc=desc, unit="row", dynamic_ncols=True) as bar:
        for i in range(0, n, batch):
            chunk = {k: v[i:i + batch] for k, v in feeds.items()}
            outs.append(sess.run(None, chunk)[0])
            bar.update(len(outs[-1]))
    return np.concatenate(outs, axis=0)


def throughput(sess, feeds: Mapping[str, np.ndarray], batch: int = 32,
               min_seconds: float = 3.0) -> float:
    """Rows/s of ``sess`` at a fixed ``batch`` (first ``batch`` rows, after warm-up)."""
    chunk = {k: np.ascontiguousarray(v[:batch]) for k, v in feeds.items()}
    sess.run(None, chunk)  # warm-up
    runs, start = 0, time.perf_counter()
    while True:
        sess.run(None, chunk)
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and runs >= 3:
            return runs * batch / elapsed


def check_onnx(model_path: Path) -> None:
    """Run onnx.checker (full check) and strict shape inference on ``model_path``."""
    import onnx

    try:
        onnx.checker.check_model(str(model_path), full_check=True)
        model = onnx.load(str(model_path))
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx raises several exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BuildError(f"ONNX validation failed for {model_path.name}: {first}") from exc


def inline_functions(model_path: Path) -> int:
    """Inline ONNX local functions in place; return how many there were."""
    import onnx
    import onnx.inliner

    model = onnx.load(str(model_path))
    count = len(model.functions)
    if count:
        model = onnx.inliner.inline_local_functions(model)
        onnx.save(model, str(model_path))
    return count


# --------------------------------------------------------------------------
# Linear head fitting
# --------------------------------------------------------------------------

def _softmax_regression(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float,
                        max_iter: int, init: np.ndarray | None = None) -> np.ndarray:
    """Multinomial logistic regression with L2 on the weights (not the bias).

    Minimises mean cross-entropy + l2/2 * ||W||^2 with L-BFGS. Matrix products
    run in float32 (features are standardised), the optimiser in float64.
    Returns the flat parameter vector ``[W.ravel(), b]`` (``W`` is (C, d));
    ``init`` warm-starts from such a vector.
    """
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    n, d = x.shape
    x = np.ascontiguousarray(x, dtype=np.float32)
    onehot = np.zeros((n, n_classes), dtype=np.float32)
    onehot[np.arange(n), y] = 1.0

    def loss_grad(theta):
        w = theta[: n_classes * d].reshape(n_classes, d)
        b = theta[n_classes * d:]
        z = (x @ w.T.astype(np.float32)).astype(np.float64) + b
        lse = logsumexp(z, axis=1, keepdims=True)
        loss = float(np.mean(lse[:, 0] - np.sum(z * onehot, axis=1))) + 0.5 * l2 * float(np.sum(w * w))
        g = ((np.exp(z - lse) - onehot) / n).astype(np.float32)
        gw = (g.T @ x).astype(np.float64) + l2 * w
        return loss, np.concatenate([gw.ravel(), g.sum(axis=0, dtype=np.float64)])

    theta0 = np.zeros(n_classes * d + n_classes) if init is None else init
    res = minimize(loss_grad, theta0, jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter})
    return res.x


def _split_params(theta: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat parameter vector -> (W (C, d), b (C,))."""
    return theta[:-n_classes].reshape(n_classes, -1), theta[-n_classes:]


def fit_linear_head(x: np.ndarray, y: np.ndarray, n_classes: int, seed: int,
                    l2_grid: Iterable[float] = (3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0),
                    holdout: float = 0.2, max_iter: int = 200) -> dict:
    """Fit a softmax-regression head on features ``x`` with labels ``y``.

    Features are standardised for the fit; the standardisation is folded back
    into the returned weights, so ``logits = x @ W.T + b`` on raw features.
    The L2 strength is picked on a random ``holdout`` fraction, then the head
    is refitted on all rows.

    Returns a dict with ``weight`` (C, d) float32, ``bias`` (C,) float32,
    ``l2``, ``holdout_accuracy`` (of the chosen l2) and ``train_accuracy``.
    """
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-6
    xs = (x - mean) / std

    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    n_val = max(1, int(round(holdout * len(x))))
    val, tr = perm[:n_val], perm[n_val:]

    from tqdm import tqdm

    best = None  # (holdout accuracy, l2, params)
    theta = None
    # Strongest regularisation first; each fit warm-starts from the previous one.
    grid = sorted(l2_grid, reverse=True)
    for l2 in tqdm(grid, desc="head l2 grid", unit="fit", dynamic_ncols=True):
        theta = _softmax_regression(xs[tr], y[tr], n_classes, l2, max_iter, init=theta)
        w, b = _split_params(theta, n_classes)
        acc = float(np.mean(np.argmax(xs[val] @ w.T + b, axis=1) == y[val]))
        if best is None or acc > best[0]:
            best = (acc, l2, theta)

    val_acc, l2, theta = best
    theta = _softmax_regression(xs, y, n_classes, l2, max_iter, init=theta)
    w, b = _split_params(theta, n_classes)
    train_acc = float(np.mean(np.argmax(xs @ w.T + b, axis=1) == y))
    weight = w / std  # fold standardisation into the linear layer
    bias = b - weight @ mean
    return {
        "weight": weight.astype(np.float32),
        "bias": bias.astype(np.float32),
        "l2": float(l2),
        "holdout_accuracy": val_acc,
        "train_accuracy": train_acc,
    }


def set_linear(layer, weight: np.ndarray, bias: np.ndarray) -> None:
    """Copy numpy weights (read-only ones too, e.g. from an ONNX file) into a ``torch.nn.Linear``."""
    import torch

    with torch.no_grad():
        layer.weight.copy_(torch.tensor(np.asarray(weight)))
        layer.bias.copy_(torch.tensor(np.asarray(bias)))


def fit_and_set_head(layer, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> dict:
    """Fit the linear head on backbone features `x` (fit_linear_head), load it into `layer`, and
    say how it fits."""
    print("fitting linear head ...")
    head = fit_linear_head(x, y, n_classes, seed=seed)
    set_linear(layer, head["weight"], head["bias"])
    print(f"head: l2={head['l2']:g} holdout acc={head['holdout_accuracy']:.4f} "
          f"train acc={head['train_accuracy']:.4f}")
    return head


def check_against_torch(sess, model, feeds: Mapping[str, np.ndarray], order: Sequence[str]) -> tuple[np.ndarray, float]:
    """The exported model's output on ``feeds`` and its max abs difference from the torch
    model's (called with the feeds in ``order``); BuildError above 1e-3."""
    import torch

    with torch.no_grad():
        ref = model(*(torch.from_numpy(feeds[k]) for k in order)).numpy()
    got = sess.run(None, dict(feeds))[0]
    max_diff = float(np.max(np.abs(got - ref)))
    print(f"ONNX vs torch max abs diff on {len(got)} rows: {max_diff:.3g}")
    if max_diff > 1e-3:
        raise BuildError(f"ONNX output differs from torch (max abs diff {max_diff:.3g})")
    return got, max_diff
