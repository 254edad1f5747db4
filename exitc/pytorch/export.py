"""The ONNX export of a PyTorch module, shared by the ONNX mirror (:mod:`exitc.pytorch.frontend`)
and the untraceable fallback (:mod:`exitc.pytorch.fallback`).

Holds: :func:`export_onnx` (dynamo exporter at opset :data:`OPSET`, the legacy one if it fails),
the manifest's "source" section for a module (``_source``) and ``normalise_stage``'s data reader
for an export of the module (``_data_reader``).

Guarantees: an export is one self-contained ONNX file with a symbolic batch dim on every input;
when no exporter succeeds, one :class:`exitc.errors.ExitcError` names each exporter's failure.
"""

from __future__ import annotations

import inspect
import os
from typing import Sequence

import onnx
import torch

from ..data import Dataset
from ..errors import ExitcError

OPSET = 18


def export_onnx(module: torch.nn.Module, args: Sequence[torch.Tensor], in_names: Sequence[str],
                out_names: Sequence[str], file: str, exporter: str = "auto") -> str:
    """torch.onnx.export with a symbolic batch dim on every input, at opset 18.

    exporter: "dynamo" (torch.export based), "legacy" (TorchScript based) or "auto" (dynamo, then
    legacy if it fails). Returns the exporter that succeeded; raises ExitcError if none did.
    """
    import warnings

    order = {"auto": ["dynamo", "legacy"], "dynamo": ["dynamo"], "legacy": ["legacy"]}[exporter]
    errors = []
    for kind in order:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if kind == "dynamo":
                    batch = torch.export.Dim("batch")
                    params = list(inspect.signature(module.forward).parameters)
                    torch.onnx.export(module, tuple(args), file, input_names=list(in_names),
                                      output_names=list(out_names), opset_version=OPSET, dynamo=True,
                                      dynamic_shapes={p: {0: batch} for p in params[:len(args)]}, verbose=False)
                    # The dynamo exporter writes weights to FILE.data; keep one self-contained file.
                    model = onnx.load(file)
                    if os.path.exists(file + ".data"):
                        os.remove(file + ".data")
                    onnx.save(model, file)
                else:
                    torch.onnx.export(module, tuple(args), file, input_names=list(in_names),
                                      output_names=list(out_names), opset_version=OPSET, dynamo=False,
                                      dynamic_axes={n: {0: "batch"} for n in list(in_names) + list(out_names)})
            return kind
        except Exception as exc:  # noqa: BLE001 - report every exporter's failure
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            errors.append(f"{kind}: {first}")
    raise ExitcError(f"torch.onnx.export failed for {type(module).__name__} ({'; '.join(errors)})")


def _source(module_name: str, exporter: str) -> dict:
    """The manifest's "source" section for a module (there is no original ONNX file to point at)."""
    return {"file": module_name, "framework": "pytorch", "path": None, "sha256": None, "torch": torch.__version__,
            "exporter": exporter}


def _data_reader(data: Dataset, names: list[str], module_name: str):
    """normalise_stage's data reader for an export of the module: the calibration rows, already
    keyed by the forward's argument names (the exporters keep them as the ONNX input names)."""

    def read(sig) -> Dataset:
        declared = [i.name for i in sig.inputs]
        if declared != names:  # a bug, not bad input
            raise RuntimeError(f"{module_name}: the ONNX export's inputs {declared} are not the forward's {names}")
        return data

    return read
