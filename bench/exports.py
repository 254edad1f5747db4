"""What the family benches (bench/families.py, bench/text_families.py) share: torch.onnx export
with torch's failure kept to one line, `exitc compile` run on an exported model and its report
read, and their command line."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def torch_export(export, *args, **kwargs) -> str | None:
    """Runs ``export(*args, **kwargs)`` (torch.onnx.export) with its output kept out of the
    table; returns torch's one-line reason where the export fails, else None."""
    try:  # torch prints whole graphs on some failures
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            export(*args, **kwargs)
    except Exception as exc:  # torch's own failure, reported as a row of the table
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines()[0]  # no terminal colours in the table
        return f"{type(exc).__name__}: {first[:100]}"
    return None


def compile_and_read(d: Path, extra: list[str] | tuple[str, ...] = ()) -> dict:
    """`exitc compile d/model.onnx --calib d/calib.npz --target-acc 0.99` (plus `extra`) into
    d/model.exitc; the exits, their certification fractions, the batch speedup predicted and
    measured on held-out rows, full-depth max abs diff, whether token rows are cut to their
    length (and the compile's line saying why not), or the error line and how many lines stderr had."""
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "exitc", "compile", str(d / "model.onnx"), "--calib",
                          str(d / "calib.npz"), "--target-acc", "0.99", "-o", str(d / "model.exitc"), "--force",
                          "--quiet", *extra], capture_output=True, text=True, cwd=ROOT)
    took = time.perf_counter() - t
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {res.returncode}", "lines": len(lines), "seconds": took}
    rep = json.loads((d / "model.exitc" / "report.json").read_text())
    manifest = json.loads((d / "model.exitc" / "manifest.json").read_text())
    plan, check = rep["plan"], rep["validation"]
    padded = [line.split("rows run at the padded length: ", 1)[1] for line in res.stdout.splitlines()
              if "rows run at the padded length: " in line]
    return {"exits": plan["exits"], "fractions": [round(f, 2) for f in plan["exit_fractions_certify"]],
            "predicted": plan["predicted_speedup_batch"] if plan["exits"] else 1.0,
            "measured": check.get("throughput_ratio") if plan["exits"] else None,
            "full_depth_diff": check["max_abs_diff_full_depth"], "reason": plan.get("reason", ""),
            "cut_to_length": manifest.get("sequence") is not None, "why_padded": padded[0] if padded else "",
            "seconds": took}


def parse_args(description: str, prog: str, known: list[str], steps: int, exporters: list[str],
               default_exporters: list[str] | None = None) -> tuple[argparse.Namespace, list[str], Path] | None:
    """The benches' command line; (arguments, the names to run, the directory models and
    artifacts go to), or None (after a one-line error on stderr) where --only names one not in
    `known` or --exporters one not in `exporters`. `a.exporters` is the list of exporters to run
    (default `default_exporters`, else all)."""
    default_exporters = default_exporters or exporters
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--only", help=f"comma-separated names (default: all of {', '.join(known)})")
    ap.add_argument("--exporters", default=",".join(default_exporters),
                    help=f"comma-separated, of {', '.join(exporters)} (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=steps, help="Adam steps of 64 rows before export")
    ap.add_argument("--out", help="keep models and artifacts here (default: a temporary directory)")
    ap.add_argument("--json", help="write the rows as JSON here")
    ap.add_argument("--compile-args", default="", help="more `exitc compile` arguments, e.g. \"--trim-padding always\"")
    a = ap.parse_args()
    names = a.only.split(",") if a.only else list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"{prog}: unknown name {unknown[0]!r} ({', '.join(known)})", file=sys.stderr)
        return None
    a.exporters = [e for e in a.exporters.split(",") if e]
    unknown = [e for e in a.exporters if e not in exporters]
    if unknown or not a.exporters:
        print(f"{prog}: unknown exporter {(unknown or [''])[0]!r} ({', '.join(exporters)})", file=sys.stderr)
        return None
    return a, names, Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix=f"exitc-{Path(prog).stem}-"))
