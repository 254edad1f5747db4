"""User-facing errors.

Every problem caused by the user's input (a bad model, bad data, a bad flag) is raised as an
:class:`ExitcError` carrying one line that names the problem: the file, tensor, op or shape. The CLI
prints that line and exits non-zero; it never shows a traceback for these.
"""


class ExitcError(Exception):
    """A problem with the user's input, explained in one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message.strip().splitlines()[0] if message.strip() else "unknown error")
