#!/usr/bin/env python3
"""The zoo over full data: compile every zoo model and benchmark it, one table.

For each model in bench/zoo/models.py: make its full data file if missing (bench/zoo/fetch.py
--full), `exitc compile` on all its calibration rows at --target-acc 0.99 where the rows allow it
(else the highest of 0.98/0.95/0.9 they allow), check the artifact's full-depth rows against the
original on both runtimes (bench/zoo/check.py), and run `exitc bench --batch-size 32` on its
held-out rows. Prints model, exporter, opset, output kind, input and the result: speedup at
batch 32 (from `exitc bench`) and the compiled model's agreement with the original file on the
test rows (from the zoo check, which runs the .onnx file itself; a row is flagged where `exitc
bench`'s own agreement figure differs), or the one-line reason exitc gave.

    .venv/bin/python bench/zoo_bench.py [--only a,b] [--batch-size 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.zoo import check, fetch  # noqa: E402
from bench.zoo.models import BY_NAME, ZOO  # noqa: E402
from exitc import analysis  # noqa: E402
from exitc.options import CompileOptions  # noqa: E402

TARGETS = (0.99, 0.98, 0.95, 0.9)


def rows_needed(target: float) -> int:
    """exitc's minimum calibration rows for `target` at the default confidence and certify
    fraction (exitc.analysis.rows_needed, which check_rows enforces)."""
    return analysis.rows_needed(CompileOptions(target_acc=target))


def bench_one(name: str, work: Path, batch: int) -> dict:
    m = BY_NAME[name]
    row = {"model": name, "package": m.package, "exporter": m.exporter, "opset": m.opset,
           "output": m.outputs, "input": m.input_note}
    status = fetch.fetch_all([name], ["full"]).get(name)
    if status != "ok":
        return {**row, "result": f"not fetched: {status}", "ok": False}
    calib, test = fetch.split_npz(fetch.data_path(name, "full"), work / name)
    with np.load(calib) as z:
        rows = len(z[z.files[0]])
    target = next((t for t in TARGETS if rows >= rows_needed(t)), TARGETS[-1])
    extra = ["--output", m.prediction_output] if m.prediction_output else []
    out = work / name / "model.exitc"
    outcome = check.judge(fetch.model_path(name), calib, test, out, target, extra, timeout=1800)
    ok, why = check.verdict(m.classifier, outcome, m.refusal)
    row.update(target=target, calib_rows=rows, compile_s=round(outcome.seconds, 1), ok=ok, kind=outcome.kind)
    if outcome.kind != "compiled":
        return {**row, "result": why}
    res_json = work / name / "bench.json"
    res = subprocess.run([check.EXITC, "bench", str(out), "--data", str(test), "--batch-size", str(batch),
                          "--quiet", "--json", str(res_json)], capture_output=True, text=True)
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines()
        return {**row, "ok": False, "result": f"exitc bench failed: {lines[-1] if lines else res.returncode}"}
    b = json.loads(res_json.read_text())
    row.update(speedup=b.get("speedup_throughput"), bench_agreement=b.get("agreement"), bound=b.get("agreement_bound"),
               p50=b.get("speedup_latency_p50"), exits=outcome.exits, full_depth_diff=max(outcome.diffs.values()),
               agreement=outcome.agreement, exit_fractions=b.get("exit_fractions"))
    notes = [] if ok else [f"NOT OK: {why}"]
    # `exitc bench` compares with its own copy of the original; the zoo check runs the file itself.
    if abs(row["bench_agreement"] - row["agreement"]) > 0.005:
        row["ok"] = False
        notes.append(f"NOT OK: exitc bench reports agreement {row['bench_agreement']:.4f}, "
                     f"but the artifact agrees with the original file on {row['agreement']:.4f} of the same rows")
    if row["bound"] is not None and row["agreement"] < row["bound"] - 0.02:
        notes.append(f"test agreement {row['agreement']:.4f} is well below the certified bound")
    row["result"] = "; ".join([f"{row['speedup']:.2f}x at batch {batch}, p50 batch 1 {row['p50']:.2f}x, agreement "
                               f"{row['agreement']:.4f} (bound {row['bound']:.4f}), {outcome.exits} exits, full-depth "
                               f"diff {row['full_depth_diff']:.1e}"] + notes)
    return row


def table(rows: list[dict]) -> str:
    cols = ["model", "exporter", "opset", "output", "target", "result"]
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if i < len(cols) - 1 else 0 for i, c in enumerate(cols)]
    fmt = lambda xs: "  ".join(x.ljust(w) for x, w in zip(xs, widths)).rstrip()
    return "\n".join([fmt(cols), fmt(["-" * max(w, 6) for w in widths])] + [fmt(x) for x in cells])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated zoo model names (default: all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", help="write the rows as JSON here")
    ap.add_argument("--work", help="keep artifacts here (default: a temporary directory)")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or [m.name for m in ZOO]
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        work = Path(args.work or tmp)
        rows = []
        for name in names:
            rows.append(bench_one(name, work, args.batch_size))
            print(f"zoo_bench: {name}: {rows[-1]['result']}", file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
