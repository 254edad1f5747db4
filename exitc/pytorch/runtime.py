"""The torch runtime of a compiled artifact.

Holds: :class:`TorchCompiled` (the fx graph split at the exits' cuts, the exits' torch heads, run
by :func:`exitc.exit_loop.run_exits` on ``TORCH_OPS``, the loop the reference runtime runs),
:class:`TorchExitHead` with :func:`torch_exit_head` (the one place a torch head is built from an
:class:`exitc.passes.heads.ExitHead`), and :func:`copy_artifact` (the atomic ``save`` of both
compiled forms).

Guarantees: rows that run to the end get exactly the original's ops (so the same values);
:meth:`TorchCompiled.from_artifact` refuses an artifact whose manifest's exits are not the plan's;
``copy_artifact`` leaves nothing behind on failure and replaces a directory only with ``force``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil

import torch

from .. import emit
from ..distill import FittedHead
from ..driver import CompileResult
from ..errors import ExitcError
from ..exit_loop import ArrayOps, ExitSpec, Step, needed_after, run_exits
from ..manifest import read_manifest
from ..passes.candidates import Candidate
from ..passes.fx import ExitHeadModule, FxSegment, Observed, build_fx_segments
from ..passes.heads import ExitHead
from ..policy import Plan
from ..profile import Profile


def _compact(tensors: dict[str, torch.Tensor], keep: torch.Tensor, batch_axes) -> dict[str, torch.Tensor]:
    idx = torch.nonzero(keep).reshape(-1)
    return {k: v.index_select(batch_axes.get(k, 0), idx) for k, v in tensors.items()}


def _scatter(dest: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
    dest[rows] = values.to(dest.dtype)


# exitc.exit_loop's array operations on torch tensors (scores compared in float32, as numpy does).
TORCH_OPS = ArrayOps(
    arange=lambda n: torch.arange(n),
    full=lambda n, v: torch.full((n,), v, dtype=torch.int64),
    zeros_rows=lambda n, like: torch.zeros((n,) + tuple(like.shape[1:]), dtype=like.dtype),
    at_least=lambda score, t: score >= torch.tensor(t, dtype=torch.float32),
    any=lambda m: bool(m.any()),
    compact=_compact,
    scatter=_scatter,
)


class TorchExitHead(torch.nn.Module):
    """An :class:`ExitHead` (passes.heads) in torch: ExitHeadModule.from_head (pooling, layers,
    gate, chained gate included) with the names the exit loop needs. Returns (its answer in the
    original's form, score [batch], its class probabilities). It reads its fx cut, which holds
    the batch on axis 0: a time-major head ("tbc", fitted on the ONNX mirror's [time, batch, C]
    tensor) reads the fx graph's [batch, time, C] transposed (frontend.place_candidates places
    it only there)."""

    def __init__(self, head: ExitHead):
        super().__init__()
        self.module = ExitHeadModule.from_head(head)
        self.layout = head.layout
        self.tensor = head.tensor
        self.mask_input = head.mask_input
        self.prev_probs = head.prev_probs
        self.export_probs = head.export_probs
        self.logits_name, self.score_name, self.probs_name = head.logits_name, head.score_name, head.probs_name
        self.threshold = float(head.meta.get("threshold", 2.0))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, prev: torch.Tensor | None = None):
        if self.layout == "tbc":
            x = x.transpose(0, 1)
        return self.module.answer_score_probs(x, mask, prev if self.module.chained else None)


def torch_exit_head(head: ExitHead) -> TorchExitHead:
    """The one place the torch runtime builds a head from an ExitHead."""
    return TorchExitHead(head)


class TorchCompiled(torch.nn.Module):
    """A torch runtime of a compiled artifact: the fx graph split at the exits' cuts, the exits'
    heads (thresholds and chained gates as in the artifact), run by :func:`exitc.exit_loop.run_exits`
    with batch compaction, the loop the reference runtime runs.

    ``compiled(*inputs)`` takes the module's inputs and returns its prediction output; rows that
    ran to the end get exactly the original's ops (so the same values), exited rows the exit head's
    output. The exit taken by each row of the last call is ``last_exit_index`` (int64 [batch];
    ``num_exits`` means "ran the whole model"). :meth:`save` writes the artifact.
    """

    def __init__(self, module_name: str, gm, cuts: list[Candidate], heads: list[ExitHead], mask_input: str | None,
                 inputs: dict[str, Observed], output: Observed, output_name: str, plan: Plan, profile: Profile | None,
                 candidates: list[Candidate], fitted: list[FittedHead], measured_in: str,
                 artifact: str | None = None, workdir=None, onnx_candidates: list[str] | None = None,
                 result: CompileResult | None = None):
        super().__init__()
        self.module_name = module_name
        self.graph_module = gm
        self.cut_tensors = [c.tensor for c in cuts]  # fx node each exit's head reads
        self.segments: list[FxSegment] = build_fx_segments(gm, cuts)
        self.segment_modules = torch.nn.ModuleList([s.module for s in self.segments])
        # The heads read the fx node of their cut (an ExitHead names the ONNX tensor).
        self.heads = torch.nn.ModuleList([torch_exit_head(dataclasses.replace(h, tensor=c.tensor))
                                          for h, c in zip(heads, cuts)])
        self.mask_input = mask_input
        self.input_specs = inputs
        self.input_names = list(inputs)
        self.output_spec = output
        self.output_name = output_name
        self.prediction_kind = heads[0].prediction_kind if heads else None
        self.plan, self.profile, self.candidates, self.fitted = plan, profile, candidates, fitted
        self.measured_in = measured_in              # where the cost profile was measured
        self.onnx_candidates = onnx_candidates      # candidate tensors in the ONNX mirror, if one was used
        self.artifact = artifact                    # the emitted artifact (None without a mirror)
        self.result = result                        # the pipeline's CompileResult (None without a mirror)
        self._workdir = workdir                     # keeps the mirror and the artifact alive
        self.num_exits = len(heads)
        self.row_dims = tuple(int(d) for d in output.shape[1:])  # [classes], [1] (binary), [classes, 1, 1]
        self.num_classes = math.prod(self.row_dims)
        self.last_exit_index: torch.Tensor | None = None

    @classmethod
    def from_artifact(cls, artifact: str, heads: list[ExitHead], cuts: list[Candidate], **kwargs) -> "TorchCompiled":
        """The torch runtime of `artifact`: its manifest's exits (candidate tensor, threshold, head
        outputs) must be `heads`' (the plan's ExitHeads, exitc.emit.plan_exit_heads); a mismatch is
        a bug, not bad input."""
        exits = [s["exit"] for s in read_manifest(artifact)["segments"] if s["exit"]]
        if [(e["candidate"], e["logits"], e["score"], float(e["threshold"])) for e in exits] != \
                [(h.tensor, h.logits_name, h.score_name, float(h.meta["threshold"])) for h in heads]:
            raise RuntimeError(f"{artifact}: the manifest's exits are not the plan's")
        return cls(heads=heads, cuts=cuts, artifact=artifact, **kwargs)

    def _bind(self, args, kwargs) -> dict[str, torch.Tensor]:
        if len(args) == 1 and isinstance(args[0], dict) and not kwargs:
            kwargs, args = args[0], ()
        feeds = dict(zip(self.input_names, args))
        feeds.update({k: v for k, v in kwargs.items() if k in self.input_specs})
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ExitcError(f"missing input {missing[0]!r} (inputs: {self.input_names})")
        return {k: torch.as_tensor(feeds[k]) for k in self.input_names}

    def steps(self) -> list[Step]:
        """The segments as exit-loop steps (thresholds read from the heads at each call)."""
        steps = []
        for seg, head in zip(self.segments, self.heads):
            reads = [head.tensor] + [n for n in (head.mask_input, head.prev_probs) if n]
            steps.append(Step(tuple(dict.fromkeys(seg.inputs + [r for r in reads if r not in seg.outputs])),
                              tuple(seg.carry_out) + ((head.probs_name,) if head.export_probs else ()),
                              ExitSpec(seg.index, head.logits_name, head.score_name, head.threshold)))
        last = self.segments[-1]
        steps.append(Step(tuple(last.inputs), (), None, (self.output_name,)))
        return steps

    def _run_segment(self, i: int, state: dict) -> dict:
        seg = self.segments[i]
        outs = dict(zip(seg.outputs, seg.module(*[state[n] for n in seg.inputs])))
        if i == self.num_exits:
            return {self.output_name: outs[seg.outputs[0]]}
        head = self.heads[i]
        x = outs[head.tensor] if head.tensor in outs else state[head.tensor]
        out, score, prob = head(x, state[head.mask_input] if head.mask_input else None,
                                state[head.prev_probs] if head.prev_probs else None)
        outs.update({head.logits_name: out, head.score_name: score})
        if head.export_probs:
            outs[head.probs_name] = prob
        return outs

    @torch.no_grad()
    def forward(self, *args, **kwargs) -> torch.Tensor:
        state = self._bind(args, kwargs)
        batch = state[self.input_names[0]].shape[0]
        if self.num_exits == 0:
            # Nothing to decide: the one segment (the whole model) directly, without the exit
            # loop's result buffer and scatter (on a 0.5 ms LSTM stack those cost it 10-30%).
            seg = self.segments[0]
            self.last_exit_index = torch.zeros(batch, dtype=torch.int64)
            return seg.module(*[state[n] for n in seg.inputs])[0]
        results = {self.output_name: torch.zeros((batch,) + self.row_dims, dtype=self.output_spec.dtype)}
        steps = self.steps()
        loop = run_exits(steps, self._run_segment, state, batch, results, self.output_name, TORCH_OPS,
                         needed_after(steps))
        self.last_exit_index = loop.exit_index
        return results[self.output_name]

    def save(self, path: str, force: bool = False, exporter: str = "auto") -> str:
        """Copy the artifact (docs/artifact-format.md) emitted by the pipeline to `path`, atomically.
        `exporter` is accepted for compatibility: the artifact's segments come from the ONNX mirror."""
        if self.artifact is None:
            raise ExitcError(f"{self.module_name}: no artifact to save: the module has no ONNX export (no mirror), "
                             "so it was compiled for the torch runtime only")
        return copy_artifact(self.artifact, path, force)


def copy_artifact(src: str, path: str, force: bool) -> str:
    """Copy an artifact directory to `path` through a staging directory beside it, as emission
    writes one (exitc.emit: a failure leaves nothing behind; `path` is replaced only with `force`)."""
    if os.path.exists(path) and not force:
        raise ExitcError(f"{path}: output directory already exists (use force=True to replace it)")
    emit.check_destination(path, force)
    staging = emit.staging_dir(path)
    try:
        shutil.copytree(src, staging)
        emit.commit(staging, path, force)
    except BaseException:
        emit.discard(staging)
        raise
    return path
