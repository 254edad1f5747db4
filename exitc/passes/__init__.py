"""Graph passes of exitc.

Each pass is a function from a model (or graph view) to a new model or a plain description of
it, with a docstring stating what it guarantees; none mutates its argument.

- :mod:`.normalize`: load, check, make the batch symbolic, pick the prediction output.
- :mod:`.shape_reads`: sizes read from activations (`Shape`) rewritten to read the graph inputs.
- :mod:`.candidates`: find cut points where one activation carries the state.
- :mod:`.heads`: exit heads (pooling + classifier + exit gate) as ONNX nodes.
- :mod:`.split`: probe model, segments with fused heads, conditional single-graph form.
"""

from .candidates import Candidate, find_candidates
from .heads import ExitHead
from .normalize import Signature, load_model, normalize
from .split import SegmentGraph, build_segments, conditional_model, head_model, probe_model

__all__ = ["Candidate", "ExitHead", "SegmentGraph", "Signature", "build_segments", "conditional_model",
           "find_candidates", "head_model", "load_model", "normalize", "probe_model"]
