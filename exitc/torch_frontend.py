"""The public names of the PyTorch front end (``exitc.torch_frontend.compile`` and the rest),
re-exported from the modules of :mod:`exitc.pytorch` that hold them; nothing is defined here.

Importing this module imports torch. To replace a name in a test, patch the module that looks it
up (e.g. ``exitc.pytorch.frontend.run_pipeline``): patching it here changes nothing that runs.
"""

from .pytorch.cli import compile_module_cli, load_factory
from .pytorch.export import OPSET, export_onnx
from .pytorch.fallback import OnnxCompiled, compile_via_onnx
from .pytorch.frontend import (TorchFrontEnd, compile, compile_traced, compile_with_options, place_candidates,
                               torch_front_end)
from .pytorch.inputs import LABEL_KEYS, bind_inputs, examples_from_npz, forward_params, to_dataset
from .pytorch.measurements import TorchMeasurements, collect_features_torch, find_mask_input, profile_torch
from .pytorch.runtime import TORCH_OPS, TorchCompiled, TorchExitHead, copy_artifact, torch_exit_head

__all__ = [
    "LABEL_KEYS", "OPSET", "TORCH_OPS", "OnnxCompiled", "TorchCompiled", "TorchExitHead", "TorchFrontEnd",
    "TorchMeasurements", "bind_inputs", "collect_features_torch", "compile", "compile_module_cli",
    "compile_traced", "compile_via_onnx", "compile_with_options", "copy_artifact", "examples_from_npz",
    "export_onnx", "find_mask_input", "forward_params", "load_factory", "place_candidates", "profile_torch",
    "to_dataset", "torch_exit_head", "torch_front_end",
]
