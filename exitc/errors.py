"""User-facing errors, and the stage an error happened in.

Every problem caused by the user's input (a bad model, bad data, a bad flag) is raised as an
:class:`ExitcError` carrying one line that names the problem: the file, tensor, op or shape. The CLI
prints that line and exits non-zero; it never shows a traceback for these.

Anything else is a bug in exitc (or in a library under it). The CLI reports it as one line naming
the pipeline stage that was running (``internal error in distill: ...``) and writes the traceback
to a log file; :func:`stage` is how the pipeline says which stage is running.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import tempfile
import time
import traceback


class ExitcError(Exception):
    """A problem with the user's input, explained in one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message.strip().splitlines()[0] if message.strip() else "unknown error")


INTERNAL_EXIT_CODE = 3

_current_stage: contextvars.ContextVar[str | None] = contextvars.ContextVar("exitc_stage", default=None)


@contextlib.contextmanager
def stage(name: str):
    """Mark the pipeline stage that runs inside the block (for internal-error messages)."""
    token = _current_stage.set(name)
    try:
        yield
    except BaseException as exc:
        if getattr(exc, "exitc_stage", None) is None:  # the innermost stage names it
            try:
                exc.exitc_stage = name
            except AttributeError:  # exceptions without a __dict__
                pass
        raise
    finally:
        _current_stage.reset(token)


def current_stage() -> str | None:
    return _current_stage.get()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def log_dir() -> str:
    """Where internal-error logs go: $EXITC_LOG_DIR, else ~/.cache/exitc/logs, else the temp dir."""
    env = os.environ.get("EXITC_LOG_DIR")
    candidates = [env] if env else []
    candidates += [os.path.join(os.path.expanduser("~"), ".cache", "exitc", "logs"), tempfile.gettempdir()]
    for d in candidates:
        try:
            os.makedirs(d, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    return tempfile.gettempdir()


def write_internal_log(exc: BaseException, where: str, argv: list[str]) -> str:
    """Write the traceback of an internal error to a new log file; returns its path."""
    path = os.path.join(log_dir(), f"exitc-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    with open(path, "w") as f:
        f.write(f"exitc internal error in {where}\nargv: {argv}\n\n")
        f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return path
