"""Command line: exitc inspect | compile | bench | run | export-triton | backend-dir.

Every failure is one line on stderr and a non-zero exit status, never a traceback:
user errors (ExitcError) print `exitc: error: ...` (status 2); anything else is a bug and prints
`exitc: internal error in <stage>: ...; details in <log>` (status 3) with the traceback in that
log file. `--debug` shows tracebacks and library warnings instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings


class _DefaultsFormatter(argparse.HelpFormatter):
    """Shows each option's default after its help, where it has a value to show (not for flags,
    nor options whose absence means something the help already says)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not any(action.default is v for v in (None, False, argparse.SUPPRESS)) and "%(default)" not in text
                and action.option_strings and action.nargs != 0):
            text += " (default: %(default)s)"
        return text


def _parser(version: str) -> argparse.ArgumentParser:
    from .options import CompileOptions as D  # defaults, one definition (imports nothing heavy)
    from .options import TRIM_PADDING

    p = argparse.ArgumentParser(prog="exitc", description="Early-exit model compiler.")
    p.add_argument("--version", action="version", version=f"exitc {version}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    fmt = _DefaultsFormatter
    sub = p.add_subparsers(dest="command", required=True, parser_class=lambda **k: argparse.ArgumentParser(
        parents=[common], formatter_class=fmt, **k))

    i = sub.add_parser("inspect", help="list candidate exits and their measured cost shares")
    i.add_argument("model")
    i.add_argument("--output", help="prediction output name, if the model has several")
    i.add_argument("--data", help=".npz (or .npy, one input) with real inputs to profile on (default: random inputs)")
    i.add_argument("--batch-size", type=int, default=32, help="batch size to measure costs at")

    c = sub.add_parser("compile", help="compile a model into an early-exit model directory")
    c.add_argument("model", help="model.onnx, or FILE.py:NAME for a PyTorch nn.Module/factory (needs torch)")
    c.add_argument("--example-shape", help="FILE.py:NAME only: per-row input shape, e.g. 3,32,32 (checked against --calib)")
    c.add_argument("--calib", required=True, help=".npz calibration data (arrays named after model inputs; a model with one input also takes an .npy)")
    c.add_argument("--target-acc", type=float, default=D.target_acc,
                   help="minimum agreement with the original's top-1 prediction")
    c.add_argument("--confidence", type=float, default=D.confidence, help="statistical confidence of the guarantee")
    c.add_argument("--batch-size", type=int, default=D.batch_size, help="deployment batch size to optimise for")
    c.add_argument("--output", help="prediction output name, if the model has several")
    c.add_argument("--latency-weight", type=float, default=D.latency_weight,
                   help="weight of batch-1 latency against deployment-batch cost when choosing exits (0..1)")
    c.add_argument("--certify-fraction", type=float, default=D.certify_fraction,
                   help="share of calibration rows held out to certify the guarantee")
    c.add_argument("--max-fit-rows", type=int, default=D.max_fit_rows,
                   help="fit the heads on at most this many rows; the rest certify")
    c.add_argument("--heads", default=",".join(D.head_kinds), help="head kinds to try (linear, mlp)")
    c.add_argument("--seed", type=int, default=D.seed,
                   help="seed of the fit/certification split, the synthetic neighbours and the head fits")
    c.add_argument("--no-augment", action="store_true",
                   help="fit heads on the calibration rows only, without synthetic neighbours labelled by the original")
    c.add_argument("--trim-padding", choices=TRIM_PADDING, default=D.trim_padding,
                   help="token models: cut rows to their length where the cut graph is exact and (auto) measures "
                        "faster than the padded model on calibration rows, wherever it is exact (always), or never")
    c.add_argument("--no-trim-padding", action="store_const", const="never", dest="trim_padding",
                   help="the same as --trim-padding never")
    c.add_argument("--allow-slower", action="store_true",
                   help="accept plans whose median batch-1 request or batch cost is slower than the original's")
    c.add_argument("-o", "--out", help="output directory (default: MODEL with suffix .exitc)")
    c.add_argument("--force", action="store_true", help="replace an existing output directory")
    c.add_argument("--quiet", action="store_true", help="no progress bars")

    b = sub.add_parser("bench", help="benchmark a compiled model against the original")
    b.add_argument("artifact")
    b.add_argument("--data", required=True, help=".npz (or .npy, one input) test data never seen by compile")
    b.add_argument("--batch-size", type=int, default=32, help="rows per call for the throughput comparison")
    b.add_argument("--rounds", type=int, default=3, help="interleaved passes over the data (the median is reported)")
    b.add_argument("--latency-rows", type=int, default=300, help="rows timed one by one for batch-1 latency")
    b.add_argument("--original", help="original ONNX model (default: the path recorded at compile time)")
    b.add_argument("--engine", default="auto", choices=["auto", "cpp", "python"],
                   help="runtime: libexitc (cpp), the Python reference, or auto (cpp where built)")
    b.add_argument("--json", help="write the results as JSON here")
    b.add_argument("--quiet", action="store_true", help="no progress bars")

    r = sub.add_parser("run", help="run a compiled model on an .npz of inputs")
    r.add_argument("artifact")
    r.add_argument("--input", required=True, help=".npz of inputs (arrays named after the model inputs; .npy for a model with one input)")
    r.add_argument("-o", "--out", required=True, help="output .npz (model outputs + exitc_exit_index)")
    r.add_argument("--batch-size", type=int, default=32, help="rows per call")
    r.add_argument("--engine", default="auto", choices=["auto", "cpp", "python"],
                   help="runtime: libexitc (cpp), the Python reference, or auto (cpp where built)")

    from .triton import add_subcommands as add_triton_subcommands

    p.exitc_extra_handlers = add_triton_subcommands(sub)  # export-triton, backend-dir (exitc/triton.py)
    return p


def _progress(a) -> bool:
    """Progress bars only for a person watching (not under --quiet, not into a pipe or a log)."""
    return not a.quiet and sys.stderr.isatty()


@contextlib.contextmanager
def _atomic_output(path: str, suffix: str = ""):
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds, so
    a failure never leaves a half-written output file."""
    from .errors import ExitcError

    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ExitcError(f"{parent}: directory of the output {path} does not exist")
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
    feeds = (load_dataset(a.data, sig.inputs, batch_axes=sig.batch_axes).feeds if a.data
             else example_feeds(sig, a.batch_size))
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
    from .errors import ExitcError
    from .options import CompileOptions

    torch_module = ":" in a.model and a.model.split(":", 1)[0].endswith(".py")
    source = a.model.split(":", 1)[0] if torch_module else a.model
    out = a.out or os.path.splitext(source)[0] + ".exitc"
    # One set of options for both front ends: every option applies to an ONNX file and to a module.
    opts = CompileOptions(target_acc=a.target_acc, confidence=a.confidence, batch_size=a.batch_size, output=a.output,
                          certify_fraction=a.certify_fraction, max_fit_rows=a.max_fit_rows,
                          head_kinds=tuple(k for k in a.heads.split(",") if k),
                          latency_weight=a.latency_weight, progress=_progress(a), force=a.force,
                          augment=not a.no_augment, never_slower=not a.allow_slower,
                          trim_padding=a.trim_padding, seed=a.seed)
    if a.example_shape and not torch_module:
        raise ExitcError(f"--example-shape {a.example_shape}: only for a PyTorch module given as FILE.py:NAME "
                         f"(an ONNX model's input shapes are in {os.path.basename(a.model)})")
    if torch_module:
        from .torch_frontend import compile_module_cli

        compile_module_cli(a.model, a.calib, out, opts, example_shape=a.example_shape)
    else:
        from .driver import compile_model

        compile_model(a.model, a.calib, out, opts)
    print(f"report: {os.path.join(out, 'report.html')}")
    return 0


def cmd_bench(a) -> int:
    from .bench import BenchOptions, bench

    res = bench(a.artifact, a.data, BenchOptions(a.batch_size, a.rounds, a.latency_rows, a.engine, _progress(a)),
                original=a.original)
    if a.json:
        with _atomic_output(a.json) as tmp:
            with open(tmp, "w") as f:
                json.dump(res, f, indent=2)
    return 0


def cmd_run(a) -> int:
    import numpy as np

    from .manifest import input_batch_axes, input_infos
    from .data import batches, file_layout, load_dataset
    from .runtime import load

    model = load(a.artifact, engine=a.engine)
    axes = input_batch_axes(model.manifest)
    data = load_dataset(a.input, input_infos(model.manifest), batch_axes=axes)
    outs, idxs = [], []
    for sl in batches(data.rows, a.batch_size):
        o, i = model.run(file_layout({k: v[sl] for k, v in data.feeds.items()}, axes))
        outs.append(o[0])
        idxs.append(i)
    with _atomic_output(a.out, suffix=".npz") as tmp:
        np.savez(tmp, **{model.prediction_output: np.concatenate(outs), "exitc_exit_index": np.concatenate(idxs)})
    print(f"wrote {a.out}: {data.rows} rows")
    return 0


def main(argv=None) -> int:
    from . import __version__
    from .errors import INTERNAL_EXIT_CODE, ExitcError, first_line, write_internal_log

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser(__version__)
    args = parser.parse_args(argv)
    handlers = {"inspect": cmd_inspect, "compile": cmd_compile, "bench": cmd_bench, "run": cmd_run}
    handlers.update(parser.exitc_extra_handlers)
    handler = handlers[args.command]
    if not args.debug:
        # Library warnings (numpy, onnx, torch) are not the user's problem and would break the
        # promise of one line per failure; --debug shows them.
        warnings.simplefilter("ignore")
    try:
        return handler(args)
    except ExitcError as exc:
        if args.debug:
            raise
        print(f"exitc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("exitc: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line for the user, the traceback in a log file
        if args.debug:
            raise
        where = getattr(exc, "exitc_stage", None) or args.command
        try:
            log = write_internal_log(exc, where, argv)
            details = f"details in {log}"
        except OSError:
            details = "no log could be written; rerun with --debug"
        print(f"exitc: internal error in {where}: {type(exc).__name__}: {first_line(exc)}; {details}",
              file=sys.stderr)
        return INTERNAL_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
