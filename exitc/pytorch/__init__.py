"""The PyTorch front end of exitc, one module per concern; torch is imported in this package and in
:mod:`exitc.passes.fx`, nowhere else (the ONNX path never imports this package).

- :mod:`.inputs`: example inputs and calibration data -> :class:`exitc.data.Dataset`
- :mod:`.export`: the ONNX export of a module (mirror and fallback)
- :mod:`.runtime`: the torch runtime of an artifact (``TorchCompiled``, torch exit heads)
- :mod:`.measurements`: features and costs measured in torch (no ONNX mirror)
- :mod:`.fallback`: an untraceable module through the ONNX pipeline (``OnnxCompiled``)
- :mod:`.frontend`: ``compile``: trace, ONNX mirror, placement, the pipeline (or the fallback)
- :mod:`.cli`: ``exitc compile FILE.py:NAME``

Imports point one way, in that order (a module imports only those listed above it), so there is
no cycle. This package's ``__init__`` imports none of them; :mod:`exitc.torch_frontend`
re-exports their public names.
"""
