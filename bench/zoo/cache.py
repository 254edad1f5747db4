"""The zoo's cache under <repo>/.cache/zoo/ (or $EXITC_ZOO_CACHE): where models and data files
live, atomic writes into it, one-line fetch errors, and Fashion-MNIST from its Debian package.
Imported by fetch, export and inputs; imports none of them."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("EXITC_ZOO_CACHE", ROOT / ".cache" / "zoo"))


class FetchError(Exception):
    """One line: what could not be fetched and why."""


def model_path(name: str) -> Path:
    return CACHE / "models" / f"{name}.onnx"


def data_path(name: str, kind: str) -> Path:
    return CACHE / "data" / f"{name}.{kind}.npz"


def fashion_mnist_dir() -> Path:
    """Fashion-MNIST from the Debian package, reusing the samples' unpacked copy if present."""
    for root in (ROOT / "samples" / ".cache" / "debs" / "root", CACHE / "debs" / "root"):
        d = root / "usr" / "share" / "datasets" / "fashion-mnist"
        if (d / "t10k-images-idx3-ubyte.gz").is_file():
            return d
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob("dataset-fashion-mnist_*.deb")):
        res = subprocess.run(["apt-get", "download", "dataset-fashion-mnist"], cwd=debs, capture_output=True, text=True)
        if res.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            res = subprocess.run(["apt-get", "download", "dataset-fashion-mnist"], cwd=debs, capture_output=True, text=True)
        if res.returncode != 0:
            raise FetchError(f"apt-get download dataset-fashion-mnist failed: {last_line(res.stderr)}")
    deb = sorted(debs.glob("dataset-fashion-mnist_*.deb"))[-1]
    res = subprocess.run(["dpkg", "-x", str(deb), str(debs / "root")], capture_output=True, text=True)
    if res.returncode != 0:
        raise FetchError(f"dpkg -x {deb.name} failed: {last_line(res.stderr)}")
    return debs / "root" / "usr" / "share" / "datasets" / "fashion-mnist"


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip() and "is ignored" not in ln]
    return lines[-1] if lines else "no output"


class open_atomic:
    """Write to a temporary file beside `path`, rename on success (no half-written cache)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = tempfile.NamedTemporaryFile(dir=self.path.parent, delete=False, suffix=".part")
        return self.tmp

    def __exit__(self, exc_type, *rest):
        self.tmp.close()
        if exc_type is None:
            os.chmod(self.tmp.name, 0o644)
            os.replace(self.tmp.name, self.path)
        else:
            os.unlink(self.tmp.name)
