"""Execution backends.

A backend turns an ONNX model (bytes or path) into something that can be run on named numpy
feeds. The compiler only uses :func:`make_session`/``Session.run`` so that a TensorRT backend can
slot in later without reshaping the pipeline.
"""

from .ort import OrtSession, make_session, session_options

__all__ = ["OrtSession", "make_session", "session_options"]
