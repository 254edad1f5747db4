#!/usr/bin/env python3
"""Benchmark exitc on the real samples and print one side-by-side table.

For each sample (built by samples/build_*.py): compile it (unless a compiled artifact exists and
--recompile is not given), then run `exitc bench` on the held-out test split, once per runtime
engine (C++ libexitc and the Python reference). Every ratio is measured within one run, original
and compiled interleaved. Each runtime also reports the time it spends outside the
segment engines (exit decisions, compaction, scatter) relative to the original model's time
("decide+compact"), for each runtime.

    .venv/bin/python bench/run_samples.py [--samples cv,nlp] [--engines cpp,python] [--rounds 3]
        [--seeds 0,1,2] [--calib-rows 3000]

Samples (each built by samples/build_<name>.py into samples/.cache/<name>/): cv, nlp (the
default), and the slower ones kept out of CI: cv_native (MobileNetV2 on preprocessed 3x160x160
images, 3000 calibration rows) and nlp_austen (6-class MiniLM, 2000 calibration rows).
`--samples new` runs those two, `--samples all` all four. `nlp_ortopt` is the NLP sample
after ONNX Runtime's transformer optimizer (samples/build_nlp_ortopt.py), run by name only.

`--seeds` compiles each sample once per seed (`exitc compile --seed`: another fit/certification
split, other neighbours), `--calib-rows N` from only the first N calibration rows (the "CV from
3000 rows" figures: `--samples cv --calib-rows 3000`); each such artifact has its own directory
(model.seed1.exitc, model.rows3000.seed0.exitc, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from exitc.bench import BenchOptions, bench  # noqa: E402
from exitc.manifest import input_infos  # noqa: E402
from exitc.data import batches, load_dataset  # noqa: E402
from exitc.report import format_table  # noqa: E402
from exitc.runtime import load  # noqa: E402


SAMPLE_SETS = {"new": ["cv_native", "nlp_austen"], "all": ["cv", "nlp", "cv_native", "nlp_austen"]}


def sample_names(spec: str) -> list[str]:
    """`--samples` value -> sample names (comma-separated names or sets from SAMPLE_SETS)."""
    names = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        for name in SAMPLE_SETS.get(part, [part]):
            if not os.path.exists(os.path.join(ROOT, "samples", f"build_{name}.py")):
                raise SystemExit(f"run_samples: unknown sample {name!r} (no samples/build_{name}.py)")
            if name not in names:
                names.append(name)
    return names


def sample_dir(name: str) -> str:
    return os.path.join(ROOT, "samples", ".cache", name)


def ensure_built(name: str) -> None:
    subprocess.run([sys.executable, os.path.join(ROOT, "samples", f"build_{name}.py")], check=True)


def calib_file(name: str, rows: int | None) -> str:
    """The sample's calibration set, or a cached copy of its first `rows` rows."""
    full = os.path.join(sample_dir(name), "calib.npz")
    if rows is None:
        return full
    path = os.path.join(sample_dir(name), f"calib.first{rows}.npz")
    if not os.path.exists(path):
        with np.load(full) as z:
            arrays = {k: z[k][:rows] for k in z.files}
        if len(next(iter(arrays.values()))) < rows:
            raise SystemExit(f"run_samples: {full} has fewer than {rows} rows")
        np.savez(path + ".tmp.npz", **arrays)
        os.replace(path + ".tmp.npz", path)
    return path


def ensure_compiled(name: str, recompile: bool, target: float, seed: int = 0,
                    calib_rows: int | None = None) -> tuple[str, float | None]:
    d = sample_dir(name)
    tag = (f".rows{calib_rows}" if calib_rows else "") + (f".seed{seed}" if seed or calib_rows else "")
    out = os.path.join(d, f"model{tag}.exitc")
    if os.path.isdir(out) and not recompile:
        return out, None
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "exitc", "compile", os.path.join(d, "model.onnx"), "--calib",
                    calib_file(name, calib_rows), "--target-acc", str(target), "--seed", str(seed), "-o", out,
                    "--force"], check=True)
    return out, time.perf_counter() - t


def runtime_overhead(artifact: str, engine: str, test_path: str, batch: int, original_seconds_per_row: float) -> float:
    """Share of the original model's time that a runtime spends outside its segment engines
    (exit decisions, compaction, scatter), over the test split at `batch`."""
    model = load(artifact, engine=engine)
    data = load_dataset(test_path, input_infos(model.manifest))
    model.run({k: v[:batch] for k, v in data.feeds.items()})  # warm-up, not counted
    before = model.overhead_seconds
    for sl in batches(data.rows, batch):
        model.run({k: v[sl] for k, v in data.feeds.items()})
    return (model.overhead_seconds - before) / (original_seconds_per_row * data.rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", default="cv,nlp",
                    help="comma-separated: cv, nlp, cv_native, nlp_austen, new, all")
    ap.add_argument("--engines", default="cpp,python")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--latency-rows", type=int, default=300)
    ap.add_argument("--target-acc", type=float, default=0.99)
    ap.add_argument("--recompile", action="store_true")
    ap.add_argument("--seeds", default="0", help="comma-separated compile seeds (exitc compile --seed)")
    ap.add_argument("--calib-rows", type=int, help="compile from only the first N calibration rows")
    ap.add_argument("--json", default=os.path.join(ROOT, "samples", ".cache", "bench_samples.json"))
    a = ap.parse_args()
    rows, results = [], []
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    runs = [(name, seed) for name in sample_names(a.samples) for seed in seeds]
    for name, seed in runs:
        ensure_built(name)
        artifact, compile_s = ensure_compiled(name, a.recompile, a.target_acc, seed, a.calib_rows)
        test = os.path.join(sample_dir(name), "test.npz")
        label = (name + (f" ({a.calib_rows} rows)" if a.calib_rows else "")
                 + (f" seed {seed}" if len(seeds) > 1 or seed else ""))
        for engine in a.engines.split(","):
            r = bench(artifact, test, BenchOptions(a.batch_size, a.rounds, a.latency_rows, engine, progress=False),
                      log=lambda *x: None)
            r.update(sample=name, seed=seed, calib_rows=a.calib_rows, engine=engine, compile_seconds=compile_s)
            r["runtime_overhead_share"] = runtime_overhead(artifact, engine, test, a.batch_size,
                                                           1.0 / r["throughput_original"])
            results.append(r)
            rows.append([label, engine, f"{r['agreement']:.4f}", f"{r['agreement_bound']:.4f}",
                         f"{r.get('accuracy_original', float('nan')):.4f}/{r.get('accuracy_exitc', float('nan')):.4f}",
                         f"{r['throughput_original']:.1f}", f"{r['throughput_exitc']:.1f}", f"{r['speedup_throughput']:.2f}x",
                         f"{r['latency_p50_ms_original']:.2f}", f"{r['latency_p50_ms_exitc']:.2f}",
                         f"{r['speedup_latency_p50']:.2f}x",
                         f"{r['latency_mean_ms_original'] / r['latency_mean_ms_exitc']:.2f}x",
                         " ".join(f"{f:.2f}" for f in r["exit_fractions"]),
                         f"{r['runtime_overhead_share'] * 100:.2f}%",
                         f"{compile_s:.0f}s" if compile_s else "cached"])
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs; batch {a.batch_size}; "
          f"{a.rounds} interleaved rounds")
    print(format_table(["sample", "engine", "agreement", "bound", "acc orig/exitc", "rows/s orig", "rows/s exitc",
                        "speedup b32", "p50 ms orig", "p50 ms exitc", "speedup p50", "speedup mean b1", "exit fractions",
                        "decide+compact", "compile"], rows))
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"results: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
