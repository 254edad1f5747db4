"""The compiler driver: the pipeline of docs/design, one call per stage.

    load -> candidates -> distill -> profile -> policy -> emit

Each stage lives in its own module and only exchanges plain values with the others.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import emit, report
from .data import Dataset, load_dataset
from .distill import FittedHead, distill_heads, fit_chained_gates, forward, gate_scores
from .errors import ExitcError
from .features import collect_features
from .passes import find_candidates, load_model, normalize
from .passes.candidates import Candidate
from .passes.graph import GraphIndex
from .passes.heads import softmax
from .passes.split import find_mask_input
from .policy import Plan, certify_plan, fit_cost, required_rate, select_exits
from .profile import Profile, given_profile, profile_costs
from .stats import min_rows_for


@dataclass
class CompileOptions:
    target_acc: float = 0.99
    confidence: float = 0.95
    batch_size: int = 32
    output: str | None = None
    # Share of the calibration rows kept for certification. The certification split sets how much
    # agreement the fit split must aim for (Clopper-Pearson at 95%: 0.9949 on 1386 rows, 0.9940
    # on 1941); the heads lose little from fewer fit rows once L2 is chosen per head. Measured
    # (certified predicted speedup at batch 32, three/two split seeds): NLP 1.60x at 0.5 vs 1.67x
    # at 0.7, CV 1.80x vs 1.81x; distillation time falls with the fit split.
    certify_fraction: float = 0.7
    # At most this many rows fit the heads; the rest certify. Distillation time grows with the fit
    # rows (about 100 s for 3000 CV rows here) while certification costs one pass of the heads, and
    # every certification row lowers the agreement the fit split must aim for.
    max_fit_rows: int = 4000
    max_candidates: int = 16
    head_kinds: tuple[str, ...] = ("linear", "mlp")
    latency_weight: float = 0.25  # weight of batch-1 latency vs deployment-batch cost in the objective
    # (candidates, batch size) -> profile.Profile: costs given (e.g. measured on the target machine,
    # or fixed for reproducible tests) instead of measured here
    cost_profile: Callable[[list[Candidate], int], Profile] | None = None
    seed: int = 0
    progress: bool = True
    force: bool = False

    def validate(self) -> None:
        if not (0.0 < self.target_acc <= 1.0):
            raise ExitcError(f"--target-acc {self.target_acc} is outside (0, 1]")
        if not (0.0 < self.confidence < 1.0):
            raise ExitcError(f"--confidence {self.confidence} is outside (0, 1)")
        if self.batch_size < 1:
            raise ExitcError(f"--batch-size {self.batch_size} must be >= 1")
        if not (0.0 <= self.latency_weight <= 1.0):
            raise ExitcError(f"--latency-weight {self.latency_weight} is outside [0, 1]")
        if not (0.0 < self.certify_fraction < 1.0):
            raise ExitcError(f"--certify-fraction {self.certify_fraction} is outside (0, 1)")
        if self.max_fit_rows < 50:
            raise ExitcError(f"--max-fit-rows {self.max_fit_rows} must be >= 50")


@dataclass
class CompileResult:
    out_dir: str
    plan: Plan
    candidates: list[Candidate]
    heads: list[FittedHead]
    profile: Profile | None
    seconds: float
    stage_seconds: dict = field(default_factory=dict)


def load_stage(model_path: str, output: str | None):
    model = load_model(model_path)
    return normalize(model, output=output, label=model_path)


def split_rows(n: int, certify_fraction: float, seed: int, max_fit_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, certification rows), disjoint, sorted: `certify_fraction` of the rows certify,
    or more where the fit split would exceed `max_fit_rows`."""
    perm = np.random.default_rng(seed).permutation(n)
    n_cert = int(n * certify_fraction)
    if max_fit_rows is not None:
        n_cert = max(n_cert, n - max_fit_rows)
    return np.sort(perm[n_cert:]), np.sort(perm[:n_cert])


def check_rows(data: Dataset, opts: CompileOptions) -> None:
    need_cert = min_rows_for(opts.target_acc, opts.confidence)
    if opts.target_acc >= 1.0:
        return
    need = int(np.ceil(need_cert / opts.certify_fraction))
    need = max(need, need_cert + 100)
    if data.rows < need:
        raise ExitcError(f"{data.path}: {data.rows} calibration rows; --target-acc {opts.target_acc} at --confidence "
                         f"{opts.confidence} needs at least {need} ({need_cert} for certification)")


def certify_stage(heads: list[FittedHead], features: list[np.ndarray], pred: np.ndarray, with_probs: bool = False):
    """Final heads on the certification rows: (gate scores, agreement), each [rows, K]
    (and the heads' probabilities per candidate with `with_probs`)."""
    scores, agree, all_probs = [], [], []
    for h, x in zip(heads, features):
        probs = softmax(forward(h.layers, x))
        scores.append(gate_scores(probs, h.gate_w, h.gate_b))
        agree.append(probs.argmax(1) == pred)
        all_probs.append(probs)
    result = (np.stack(scores, axis=1), np.stack(agree, axis=1))
    return result + (all_probs,) if with_probs else result


def policy_stage(heads: list[FittedHead], cert_features: list[np.ndarray], cert_pred: np.ndarray,
                 profile: Profile, opts: "CompileOptions") -> Plan:
    """Choose exits on the fit split, try chained gates for them (kept only if they lower the
    fit-split cost: the choice never looks at the certification split), then certify."""
    cert_scores, cert_agree, cert_probs = certify_stage(heads, cert_features, cert_pred, with_probs=True)
    fit_scores = np.stack([h.oof_score for h in heads], axis=1)
    fit_agree = np.stack([h.oof_agree for h in heads], axis=1)
    req = required_rate(len(cert_scores), opts.target_acc, opts.confidence)
    w = opts.latency_weight
    exits = select_exits(fit_scores, fit_agree, profile, req, latency_weight=w)
    gates: list = []
    if len(exits) >= 2:
        chained = fit_chained_gates(heads, exits)
        fit2, cert2 = fit_scores.copy(), cert_scores.copy()
        for prev, k in zip(exits, exits[1:]):
            gate_w, gate_b = chained[k]
            fit2[:, k] = gate_scores(heads[k].oof_probs, gate_w, gate_b, heads[prev].oof_probs)
            cert2[:, k] = gate_scores(cert_probs[k], gate_w, gate_b, cert_probs[prev])
        if fit_cost(exits, fit2, fit_agree, profile, req, w) < fit_cost(exits, fit_scores, fit_agree, profile, req, w):
            fit_scores, cert_scores = fit2, cert2
            gates = [(heads[exits[0]].gate_w, heads[exits[0]].gate_b)] + [chained[k] for k in exits[1:]]
    plan = certify_plan(exits, fit_scores, fit_agree, cert_scores, cert_agree, profile, opts.target_acc,
                        opts.confidence, w)
    if plan.exits:
        plan.gates = gates
    return plan


def compile_model(model_path: str, calib_path: str, out_dir: str, opts: CompileOptions | None = None,
                  log=print) -> CompileResult:
    opts = opts or CompileOptions()
    opts.validate()
    emit.check_destination(out_dir, opts.force)
    t0 = time.perf_counter()
    stages: dict[str, float] = {}

    def mark(name: str, since: float) -> float:
        now = time.perf_counter()
        stages[name] = now - since
        return now

    t = time.perf_counter()
    model, sig = load_stage(model_path, opts.output)
    data = load_dataset(calib_path, sig.inputs)
    check_rows(data, opts)
    mask_input = find_mask_input(model)
    elem_types = {name: info.elem_type for name, info in GraphIndex.build(model).infos.items()}
    t = mark("load", t)

    candidates = find_candidates(model, max_candidates=opts.max_candidates)
    log(f"exitc: {len(candidates)} candidate exits in {os.path.basename(model_path)}")
    t = mark("candidates", t)

    fit_idx, cert_idx = split_rows(data.rows, opts.certify_fraction, opts.seed, opts.max_fit_rows)
    heads: list[FittedHead] = []
    profile = None
    if candidates and opts.target_acc < 1.0:
        cache = collect_features(model, candidates, mask_input, data, progress=opts.progress)
        heads = distill_heads(candidates, [f[fit_idx] for f in cache.features], cache.probs[fit_idx],
                              kinds=opts.head_kinds, seed=opts.seed, progress=opts.progress)
        t = mark("distill", t)
        if opts.cost_profile is not None:
            profile = given_profile(opts.cost_profile, candidates, min(opts.batch_size, len(fit_idx)))
        else:
            profile = profile_costs(model, heads, mask_input, data.take(fit_idx), opts.batch_size, elem_types,
                                    progress=opts.progress)
        t = mark("profile", t)
        plan = policy_stage(heads, [f[cert_idx] for f in cache.features], cache.predictions[cert_idx], profile, opts)
        emit_probabilities = cache.outputs_are_probabilities
        t = mark("policy", t)
    else:
        reason = "no candidate exit points found" if not candidates else "--target-acc 1.0 admits no early exit"
        plan = Plan.without_exits(opts.target_acc, opts.confidence, reason)
        emit_probabilities = False
    validation = emit.write_artifact(out_dir, model, sig, model_path, candidates, heads, plan, profile, mask_input,
                                     elem_types, emit_probabilities, data.take(cert_idx) if len(cert_idx) else data,
                                     opts, force=opts.force, report_fn=report.write_reports)
    mark("emit", t)
    result = CompileResult(out_dir, plan, candidates, heads, profile, time.perf_counter() - t0, stages)
    report.print_summary(result, validation, log)
    return result
