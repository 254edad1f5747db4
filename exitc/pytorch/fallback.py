"""The fallback for a module torch.fx cannot trace: the whole module through ONNX.

Holds: :func:`compile_via_onnx` (export the module with :func:`exitc.pytorch.export.export_onnx`,
then compile the export like an ONNX file: :func:`exitc.driver.normalise_stage`,
:func:`exitc.driver.run_pipeline`) and :class:`OnnxCompiled`, its result.

Guarantees: the export goes through the same stages and options as an ONNX file; ``OnnxCompiled``
has :class:`exitc.pytorch.runtime.TorchCompiled`'s interface (call, ``last_exit_index``,
``num_exits``, ``plan``, ``save``), backed by :func:`exitc.runtime.load`, and keeps why tracing
failed in ``fallback_reason``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import torch

from ..data import Dataset
from ..driver import normalise_stage, run_pipeline
from ..options import CompileOptions
from ..passes import load_model
from .export import OPSET, _data_reader, _source, export_onnx
from .inputs import _to_numpy
from .runtime import copy_artifact


class OnnxCompiled:
    """The compiled model of the ONNX fallback, with the interface of :class:`TorchCompiled`."""

    def __init__(self, artifact: str, input_names: list[str], workdir, reason: str, result):
        from ..runtime import load

        self.artifact = artifact
        self.input_names = input_names
        self._workdir = workdir  # keeps the exported model and the artifact alive
        self.fallback_reason = reason
        self.result = result
        self.plan = result.plan
        self.model = load(artifact, engine="python")
        self.num_exits = self.model.num_exits
        self.last_exit_index: torch.Tensor | None = None

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        if len(args) == 1 and isinstance(args[0], dict) and not kwargs:
            kwargs, args = args[0], ()
        feeds = dict(zip(self.input_names, args))
        feeds.update(kwargs)
        outs, exit_index = self.model.run({k: _to_numpy(feeds[k]) for k in self.input_names})
        self.last_exit_index = torch.from_numpy(exit_index)
        return torch.from_numpy(outs[self.model.output_names.index(self.model.prediction_output)])

    def save(self, path: str, force: bool = False, exporter: str = "auto") -> str:
        """Copy the artifact to `path`, atomically (:func:`copy_artifact`)."""
        return copy_artifact(self.artifact, path, force)


def compile_via_onnx(module: torch.nn.Module, names: list[str], data: Dataset, opts: CompileOptions,
                     exporter: str = "auto", reason: str = "", log=print) -> OnnxCompiled:
    """Export the whole module to ONNX and compile the export like an ONNX file
    (:func:`exitc.driver.normalise_stage`, then :func:`exitc.driver.run_pipeline`)."""
    name = type(module).__name__
    output_name = opts.output or "logits"
    work = tempfile.TemporaryDirectory(prefix="exitc-torch-")
    model_path = os.path.join(work.name, f"{name}.onnx")
    n = min(8, data.rows)
    args = [torch.from_numpy(data.feeds[k][:n]) for k in names]
    kind = export_onnx(module, args, names, [output_name], model_path, exporter)
    log(f"exitc: exported {name} to ONNX ({kind} exporter, opset {OPSET})")
    opts = dataclasses.replace(opts, output=output_name)
    front = dataclasses.replace(normalise_stage(load_model(model_path), _data_reader(data, names, name), opts,
                                                model_path, name, log), source=_source(name, kind))
    result = run_pipeline(front, os.path.join(work.name, "model.exitc"), opts, log)
    return OnnxCompiled(result.out_dir, names, work, reason, result)
