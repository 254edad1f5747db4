"""Command line: exitc inspect | compile | bench | run | export-triton | backend-dir.

User errors (ExitcError) print one line `exitc: error: ...` and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exitc", description="Early-exit model compiler.")
    sub = p.add_subparsers(dest="command", required=True)

    i = sub.add_parser("inspect", help="list candidate exits and their measured cost shares")
    i.add_argument("model")
    i.add_argument("--output", help="prediction output name, if the model has several")
    i.add_argument("--data", help=".npz with real inputs to profile on (default: random inputs)")
    i.add_argument("--batch-size", type=int, default=32)

    c = sub.add_parser("compile", help="compile a model into an early-exit model directory")
    c.add_argument("model", help="model.onnx, or FILE.py:NAME for a PyTorch nn.Module/factory (needs torch)")
    c.add_argument("--example-shape", help="FILE.py:NAME only: per-row input shape, e.g. 3,32,32 (checked against --calib)")
    c.add_argument("--calib", required=True, help=".npz calibration data (arrays named after model inputs)")
    c.add_argument("--target-acc", type=float, default=0.99,
                   help="minimum agreement with the original's top-1 prediction (default 0.99)")
    c.add_argument("--confidence", type=float, default=0.95, help="statistical confidence of the guarantee")
    c.add_argument("--batch-size", type=int, default=32, help="deployment batch size to optimise for")
    c.add_argument("--output", help="prediction output name, if the model has several")
    c.add_argument("--latency-weight", type=float, default=0.25,
                   help="weight of batch-1 latency against deployment-batch cost when choosing exits (0..1)")
    c.add_argument("--certify-fraction", type=float, default=None,
                   help="share of calibration rows held out to certify the guarantee (default 0.7)")
    c.add_argument("--max-fit-rows", type=int, default=None,
                   help="fit the heads on at most this many rows; the rest certify (default 4000)")
    c.add_argument("--heads", default="linear,mlp", help="head kinds to try (linear,mlp)")
    c.add_argument("-o", "--out", help="output directory (default: MODEL with suffix .exitc)")
    c.add_argument("--force", action="store_true", help="replace an existing output directory")
    c.add_argument("--quiet", action="store_true", help="no progress bars")

    b = sub.add_parser("bench", help="benchmark a compiled model against the original")
    b.add_argument("artifact")
    b.add_argument("--data", required=True, help=".npz test data never seen by compile")
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument("--latency-rows", type=int, default=300)
    b.add_argument("--original", help="original ONNX model (default: the path recorded at compile time)")
    b.add_argument("--engine", default="auto", choices=["auto", "cpp", "python"])
    b.add_argument("--json", help="write the results as JSON here")
    b.add_argument("--quiet", action="store_true")

    r = sub.add_parser("run", help="run a compiled model on an .npz of inputs")
    r.add_argument("artifact")
    r.add_argument("--input", required=True)
    r.add_argument("-o", "--out", required=True, help="output .npz (model outputs + exitc_exit_index)")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--engine", default="auto", choices=["auto", "cpp", "python"])

    from .triton import add_subcommands as add_triton_subcommands

    p.exitc_extra_handlers = add_triton_subcommands(sub)  # export-triton, backend-dir
    return p


def cmd_inspect(a) -> int:
    import numpy as np

    from .data import load_dataset
    from .passes import find_candidates, load_model, normalize
    from .passes.normalize import example_feeds
    from .passes.split import find_mask_input
    from .profile import profile_backbone
    from .report import format_table

    model, sig = normalize(load_model(a.model), output=a.output, label=a.model)
    cands = find_candidates(model)
    feeds = (load_dataset(a.data, sig.inputs).feeds if a.data else example_feeds(sig, a.batch_size))
    feeds = {k: v[: a.batch_size] for k, v in feeds.items()}
    b = len(next(iter(feeds.values())))
    original, slices, _ = profile_backbone(model, cands, find_mask_input(model), feeds, reps_b1=10, reps_bn=3)
    total = sum(s.at(b) for s in slices)
    acc = np.cumsum([s.at(b) for s in slices])
    rows = [[k, c.tensor[-48:], c.layout, "+".join(c.side) or "-", f"{c.flops_fraction:.2f}", f"{acc[k] / total:.2f}"]
            for k, c in enumerate(cands)]
    print(f"{a.model}: inputs {', '.join(f'{i.name}{i.shape}' for i in sig.inputs)}; prediction output "
          f"{sig.output.name}{sig.output.shape}")
    print(format_table(["#", "carried tensor", "layout", "side tensors", "FLOPs share", f"measured share (b={b})"], rows))
    print(f"original: {original.at(1) * 1e3:.2f} ms at batch 1, {original.at(b) * 1e3:.2f} ms at batch {b}")
    return 0


def cmd_compile(a) -> int:
    from .driver import CompileOptions, compile_model

    if a.certify_fraction is None:
        a.certify_fraction = CompileOptions.certify_fraction
    if a.max_fit_rows is None:
        a.max_fit_rows = CompileOptions.max_fit_rows
    if ":" in a.model and a.model.split(":", 1)[0].endswith(".py"):
        from .torch_frontend import compile_module_cli

        out = a.out or os.path.splitext(a.model.split(":", 1)[0])[0] + ".exitc"
        compile_module_cli(a.model, a.calib, out, example_shape=a.example_shape, force=a.force,
                           target_acc=a.target_acc, confidence=a.confidence, batch_size=a.batch_size,
                           certify_fraction=a.certify_fraction, max_fit_rows=a.max_fit_rows, progress=not a.quiet,
                           head_kinds=tuple(k for k in a.heads.split(",") if k))
        print(f"wrote {out}")
        return 0
    out = a.out or os.path.splitext(a.model)[0] + ".exitc"
    opts = CompileOptions(target_acc=a.target_acc, confidence=a.confidence, batch_size=a.batch_size, output=a.output,
                          certify_fraction=a.certify_fraction, max_fit_rows=a.max_fit_rows,
                          head_kinds=tuple(k for k in a.heads.split(",") if k),
                          latency_weight=a.latency_weight, progress=not a.quiet, force=a.force)
    for k in opts.head_kinds:
        if k not in ("linear", "mlp"):
            from .errors import ExitcError

            raise ExitcError(f"--heads: unknown head kind {k!r} (linear, mlp)")
    compile_model(a.model, a.calib, out, opts)
    print(f"report: {os.path.join(out, 'report.html')}")
    return 0


def cmd_bench(a) -> int:
    from .bench import BenchOptions, bench

    res = bench(a.artifact, a.data, BenchOptions(a.batch_size, a.rounds, a.latency_rows, a.engine, not a.quiet),
                original=a.original)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


def cmd_run(a) -> int:
    import numpy as np

    from .manifest import input_infos
    from .data import batches, load_dataset
    from .runtime import load

    model = load(a.artifact, engine=a.engine)
    data = load_dataset(a.input, input_infos(model.manifest))
    outs, idxs = [], []
    for sl in batches(data.rows, a.batch_size):
        o, i = model.run({k: v[sl] for k, v in data.feeds.items()})
        outs.append(o[0])
        idxs.append(i)
    np.savez(a.out, **{model.prediction_output: np.concatenate(outs), "exitc_exit_index": np.concatenate(idxs)})
    print(f"wrote {a.out}: {data.rows} rows")
    return 0


def main(argv=None) -> int:
    from .errors import ExitcError

    parser = _parser()
    args = parser.parse_args(argv)
    handlers = {"inspect": cmd_inspect, "compile": cmd_compile, "bench": cmd_bench, "run": cmd_run}
    handlers.update(parser.exitc_extra_handlers)
    handler = handlers[args.command]
    try:
        return handler(args)
    except ExitcError as exc:
        print(f"exitc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("exitc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
