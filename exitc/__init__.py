"""exitc: turn a trained classifier into an early-exit model, without labels or retraining."""

__version__ = "0.1.0"

from .errors import ExitcError  # noqa: E402


def load(path: str, engine: str = "auto", threads: int | None = None):
    """Load a compiled model directory; see :func:`exitc.runtime.load`."""
    from .runtime import load as _load

    return _load(path, engine=engine, threads=threads)


def compile_onnx(model_path: str, calib_path: str, out_dir: str, **options):
    """Compile an ONNX classifier; keyword options are those of :class:`exitc.options.CompileOptions`."""
    from .driver import CompileOptions, compile_model

    return compile_model(model_path, calib_path, out_dir, CompileOptions(**options))


def compile(module, example_inputs=None, calib=None, **options):
    """Compile a PyTorch nn.Module (needs the torch extra); see :func:`exitc.torch_frontend.compile`."""
    from .torch_frontend import compile as _compile

    return _compile(module, example_inputs, calib=calib, **options)


__all__ = ["ExitcError", "__version__", "compile", "compile_onnx", "load"]
