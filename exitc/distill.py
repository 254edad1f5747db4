"""Self-distillation: fit exit heads to the original model's own soft predictions (no labels).

Heads are fitted on pooled features cached by :mod:`exitc.features`. For every candidate we fit a
linear head and, where the features are small enough to train one quickly, a one-hidden-layer MLP;
K-fold cross-fitting gives out-of-fold (OOF) predictions for every row, which (a) pick the head
kind that agrees best with the original on held-out rows and (b) train the exit gate and the exit
policy without the optimism of in-sample predictions. The kept head is then refitted on all rows.

Only numpy and scipy are used: torch is not needed on the ONNX path.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from .passes.candidates import Candidate
from .passes.heads import ExitHead, Layers, gate_features, gate_scores, layers_forward, softmax


@dataclass
class FittedHead:
    candidate: Candidate
    kind: str                  # "linear" | "mlp"
    layers: Layers             # final weights (standardisation folded in), fitted on all rows
    gate_w: np.ndarray         # exit gate on (max prob, margin, entropy)
    gate_b: float
    oof_agree: np.ndarray      # bool [rows]: OOF head prediction == original prediction
    oof_score: np.ndarray      # float [rows]: OOF gate score
    agreement: float           # mean of oof_agree
    oof_probs: np.ndarray | None = None  # [rows, classes]: OOF head probabilities
    l2: float = 1e-3           # L2 strength it was fitted with
    augmented: str = ""        # the perturbation whose neighbours it was also fitted on ("": none; exitc.augment)

    @property
    def params(self) -> int:
        return int(sum(w.size + b.size for w, b in self.layers))

    def exit_head(self, index: int, elem_type: int, mask_input: str | None, prediction_kind: str,
                  threshold: float | None = None, binary: bool = False,
                  class_dims: tuple[int, ...] | None = None) -> ExitHead:
        """This head as exit `index` of a compiled model (passes.heads.ExitHead) with its own
        (plain) gate; `mask_input` is kept only for token ("btc") candidates. The one place a
        fitted head becomes an ExitHead (profiling, emission and the front ends all call it)."""
        c = self.candidate
        return ExitHead(index=index, tensor=c.tensor, layout=c.layout, elem_type=elem_type,
                        mask_input=mask_input if c.layout == "btc" else None, layers=self.layers,
                        gate_w=self.gate_w, gate_b=self.gate_b, prediction_kind=prediction_kind,
                        kind=self.kind, meta={} if threshold is None else {"threshold": threshold},
                        pooling=c.pooling, binary=binary, class_dims=class_dims)


def _standardize(x: np.ndarray):
    mu = x.mean(axis=0)
    sd = x.std(axis=0) + 1e-4
    return mu.astype(np.float32), sd.astype(np.float32)


def _fold_standardization(layers: Layers, mu: np.ndarray, sd: np.ndarray) -> Layers:
    w, b = layers[0]
    w2 = w / sd[:, None]
    b2 = b - (mu / sd) @ w
    return [(w2.astype(np.float32), b2.astype(np.float32))] + [(w.astype(np.float32), b.astype(np.float32)) for w, b in layers[1:]]


def _soft_ce(z: np.ndarray, p: np.ndarray):
    """Mean soft cross-entropy and its gradient w.r.t. logits z."""
    s = softmax(z)
    n = len(z)
    loss = -(p * np.log(s + 1e-12)).sum() / n
    return loss, (s - p) / n


# L-BFGS iterations for linear heads. 100 instead of 200 halves the slowest fits (the CV sample's
# 4032-wide candidate: 11.8 s -> 6.5 s for three folds) for the same out-of-fold worth (within
# +-0.004 on four CV candidates at L2 1e-2, 1e-1 and 1; strong L2 converges sooner anyway).
LINEAR_MAX_ITER = 100


def fit_linear(x: np.ndarray, p: np.ndarray, l2: float = 1e-3, max_iter: int = LINEAR_MAX_ITER) -> Layers:
    mu, sd = _standardize(x)
    xs = (x - mu) / sd
    d, c = x.shape[1], p.shape[1]

    def f(theta):
        w = theta[: d * c].reshape(d, c).astype(np.float32)
        b = theta[d * c:].astype(np.float32)
        loss, g = _soft_ce(xs @ w + b, p)
        gw = xs.T @ g + l2 * w
        return float(loss + 0.5 * l2 * float((w * w).sum())), np.concatenate([gw.ravel(), g.sum(axis=0)]).astype(np.float64)

    res = minimize(f, np.zeros(d * c + c), jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    w = res.x[: d * c].reshape(d, c)
    b = res.x[d * c:]
    return _fold_standardization([(w, b)], mu, sd)


def fit_mlp(x: np.ndarray, p: np.ndarray, hidden: int = 64, l2: float = 1e-3, max_iter: int = 120, seed: int = 0) -> Layers:
    mu, sd = _standardize(x)
    xs = (x - mu) / sd
    d, c = x.shape[1], p.shape[1]
    rng = np.random.default_rng(seed)
    shapes = [(d, hidden), (hidden,), (hidden, c), (c,)]
    sizes = [int(np.prod(s)) for s in shapes]
    init = np.concatenate([(rng.standard_normal(d * hidden) * np.sqrt(2.0 / d)), np.zeros(hidden),
                           rng.standard_normal(hidden * c) * np.sqrt(1.0 / hidden), np.zeros(c)])

    def unpack(theta):
        out, o = [], 0
        for s, n in zip(shapes, sizes):
            out.append(theta[o:o + n].reshape(s).astype(np.float32))
            o += n
        return out

    def f(theta):
        w1, b1, w2, b2 = unpack(theta)
        a = xs @ w1 + b1
        h = np.maximum(a, 0)
        loss, g = _soft_ce(h @ w2 + b2, p)
        gw2 = h.T @ g + l2 * w2
        gh = (g @ w2.T) * (a > 0)
        gw1 = xs.T @ gh + l2 * w1
        reg = 0.5 * l2 * float((w1 * w1).sum() + (w2 * w2).sum())
        grad = np.concatenate([gw1.ravel(), gh.sum(axis=0), gw2.ravel(), g.sum(axis=0)])
        return float(loss + reg), grad.astype(np.float64)

    res = minimize(f, init, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    w1, b1, w2, b2 = unpack(res.x)
    return _fold_standardization([(w1, b1), (w2, b2)], mu, sd)


def fit_gate(probs: np.ndarray, agree: np.ndarray, prev: np.ndarray | None = None,
             l2: float = 1e-3) -> tuple[np.ndarray, float]:
    """Logistic regression predicting P(head agrees with the original) from gate features (with
    `prev`, the previous exit's probabilities: the chained gate)."""
    f = gate_features(probs, prev).astype(np.float64)
    d = f.shape[1]
    y = agree.astype(np.float64)
    weight = np.ones(len(y))
    if y.min() == y.max() and y[0] == 0:  # never agrees: never exits
        return np.zeros(d, np.float32), -20.0
    if y.min() == y.max():
        # Agreed on every fit row (a small calibration set and an easy exit): a constant score
        # would let every row out at one threshold or none, and one disagreement among the
        # certification rows would then rule the exit out. Half a disagreement at the least
        # confident row (the Jeffreys prior's half count) keeps the rows ranked by confidence, so
        # certification can admit the most confident ones.
        least = int(np.argmin(f[:, 0]))
        f, y, weight = np.vstack([f, f[least:least + 1]]), np.append(y, 0.0), np.append(weight, 0.5)
    n = weight.sum()

    def obj(theta):
        z = f @ theta[:d] + theta[d]
        s = 1 / (1 + np.exp(-z))
        loss = -(weight * (y * np.log(s + 1e-12) + (1 - y) * np.log(1 - s + 1e-12))).sum() / n \
            + 0.5 * l2 * (theta[:d] ** 2).sum()
        g = weight * (s - y) / n
        return loss, np.concatenate([f.T @ g + l2 * theta[:d], [g.sum()]])

    res = minimize(obj, np.zeros(d + 1), jac=True, method="L-BFGS-B", options={"maxiter": 300})
    return res.x[:d].astype(np.float32), float(res.x[d])


def fit_chained_gates(heads: list[FittedHead], exits: list[int]) -> dict[int, tuple[np.ndarray, float]]:
    """Gates for exits[1:] that also read the previous kept exit's (out-of-fold) probabilities.
    The gate has 7 parameters, so fitting it in-sample on the OOF predictions adds no real optimism
    (and the certification split, untouched here, has the last word anyway)."""
    return {k: fit_gate(heads[k].oof_probs, heads[k].oof_agree, heads[prev].oof_probs)
            for prev, k in zip(exits, exits[1:])}


FITTERS = {"linear": fit_linear, "mlp": fit_mlp}


def confident_coverage(probs: np.ndarray, pred: np.ndarray, precision: float = 0.995) -> float:
    """Largest share of rows that, taken in order of the head's confidence, agree with the
    original's predictions at least `precision` of the time."""
    order = np.argsort(-probs.max(axis=1), kind="stable")
    agree = (probs.argmax(1) == pred)[order]
    running = np.cumsum(agree) / np.arange(1, len(agree) + 1)
    ok = np.flatnonzero(running >= precision)
    return float((ok[-1] + 1) / len(agree)) if len(ok) else 0.0


WORTH_PRECISIONS = (0.98, 0.99, 0.995)


def head_worth(probs: np.ndarray, pred: np.ndarray) -> float:
    """How much an exit head is worth: its confident coverage averaged over the precisions the
    guarantee typically needs. One precision alone is too noisy to choose by: a single confident
    disagreement near the top of the ranking can drop the coverage at 99.5% from 0.37 to 0.01 (seen
    on the CV sample) while the coverage at 99% hardly moves."""
    return float(np.mean([confident_coverage(probs, pred, q) for q in WORTH_PRECISIONS]))


# L2 strengths tried for every head, per kind (on standardised features; the loss is a mean over
# rows). The right one depends on the data, not the model family: on the NLP sample's 1400 fit rows
# a linear head at 1e-3 overfit and took 0.31 of the rows at 99.5% precision at the middle candidate
# where 1e-1 took 0.49; on the CV sample's 5000 rows 1e-2 won almost everywhere. So it is chosen per
# head, on the out-of-fold predictions, like the head kind. Strong L2 also converges in fewer
# iterations; 1e-3 never won on either sample and was the slowest to fit.
L2_GRID = {"linear": (1e-2, 1e-1, 1.0), "mlp": (1e-2, 1e-1)}


@dataclass
class NeighbourRows:
    """Synthetic neighbours of the fit rows (exitc.augment) as distillation uses them."""

    features: list[np.ndarray]  # per candidate [n, D_k]
    targets: np.ndarray         # the original's soft outputs on them [n, classes]
    source: np.ndarray          # [n] the fit row each came from (its fold is the source's fold)
    group: np.ndarray | None = None   # [n] which perturbation made it (index into `groups`)
    groups: tuple[str, ...] = ("neighbours",)


# Neighbours are tried on candidates up to this share of the model's arithmetic: early exits are
# where a better head pays most (cheap, and every row passes them) and the fits on 5x the rows
# cost most there too; deep exits' heads already agree well from real rows alone.
# Measured beyond it (2026-12-08, CV from 3000 rows, linear heads, share of the certification
# rows taken at 99.47% precision, seeds 0-3, real rows / with flips / with shifts): at 0.64 of
# the arithmetic 0.630 / 0.611 / 0.639, at 0.68 0.658 / 0.698 / 0.685; below it, at 0.42,
# 0.577 / 0.584 / 0.564: small and mixed, for fits on three times the rows.
AUG_MAX_FRACTION = 0.6
AUG_MARGIN = 0.005  # a head takes the neighbours only if its out-of-fold worth rises by more


def distill_heads(candidates: list[Candidate], features: list[np.ndarray], targets: np.ndarray,
                  kinds: tuple[str, ...] = ("linear", "mlp"), folds: int = 3, mlp_max_features: int = 800,
                  seed: int = 0, progress: bool = True, l2_grid: dict[str, tuple[float, ...]] | None = None,
                  workers: int | None = None, neighbours: NeighbourRows | None = None) -> list[FittedHead]:
    """Fit one head per candidate on (features, original soft predictions).

    Guarantees: every returned head's out-of-fold arrays (`oof_agree`, `oof_score`, `oof_probs`)
    are on the real fit rows and come from models that never saw the row, nor any neighbour made
    from it; its kind, L2 strength and whether it uses `neighbours` were chosen on those
    out-of-fold predictions; its final `layers` are refitted on all rows (and neighbours) with
    that choice. The result does not depend on `workers` (each fit is deterministic and
    independent)."""
    # mlp_max_features: MLPs are tried only on features up to this size (their fits dominate the
    # time); 800 admits 384-wide transformer features with two poolings (768). Image-like maps'
    # random-filter features (about 1600) are the exception: fixed random filters are only worth
    # their compute with a nonlinear head on top, and an input exit has just one of them. Where
    # MLPs are the only kind asked for (--heads mlp), every candidate gets them, whatever its size.
    grid = {kind: tuple((l2_grid or L2_GRID).get(kind, (1e-2,))) for kind in kinds}
    workers = workers or min(4, os.cpu_count() or 1)
    # The optimiser makes many small matrix products; OpenBLAS's thread hand-offs cost more than
    # they save at these sizes on small machines (measured 7x slower with 2 threads here). Instead,
    # independent fits run side by side in threads: numpy releases the GIL in its matrix products.
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        return _distill_heads(candidates, features, targets, kinds, folds, mlp_max_features, seed, progress,
                              grid, pool, neighbours)


def _has_random_filters(c: Candidate) -> bool:
    return c.pooling is not None and c.pooling.filters is not None


def _distill_heads(candidates, features, targets, kinds, folds, mlp_max_features, seed, progress,
                   grid, pool, neighbours: NeighbourRows | None = None) -> list[FittedHead]:
    n = len(targets)
    pred = targets.argmax(axis=1)
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    heads = []
    jobs = [(k, kind, l2, f) for k in range(len(candidates)) for kind in kinds for l2 in grid[kind]
            for f in range(folds) if kind == "linear" or "linear" not in kinds
            or features[k].shape[1] <= mlp_max_features or _has_random_filters(candidates[k])]

    def fit_fold(job):
        k, kind, l2, f = job
        tr, te = fold_of != f, fold_of == f
        return job, softmax(layers_forward(FITTERS[kind](features[k][tr], targets[tr], l2=l2), features[k][te]))

    oof: dict[tuple[int, str, float], np.ndarray] = {}
    # Largest feature sets first, so the slowest fits do not trail at the end.
    jobs.sort(key=lambda j: (-features[j[0]].shape[1] * (4 if j[1] == "mlp" else 1), j))
    for (k, kind, l2, f), probs_te in tqdm(pool.map(fit_fold, jobs), total=len(jobs), desc="distill: fit heads",
                                           unit="fit", disable=not progress, leave=False):
        probs = oof.setdefault((k, kind, l2), np.zeros_like(targets))
        probs[fold_of == f] = probs_te
    choices = []
    for k in range(len(candidates)):
        # Per kind, the L2 strength whose out-of-fold head is worth most.
        options = []
        for kind in kinds:
            tried = [(head_worth(oof[(k, kind, l2)], pred), l2) for l2 in grid[kind] if (k, kind, l2) in oof]
            if tried:
                worth, l2 = max(tried, key=lambda t: (t[0], -t[1]))
                options.append((kind, l2, worth, oof[(k, kind, l2)]))
        # What an exit is worth is the share of rows it can take at the precision the guarantee
        # needs, not its overall agreement (on the CV sample an MLP head took 0.50 of the rows at
        # 99.5% precision where a linear one took 0.37, with nearly equal agreement). Prefer the
        # cheaper linear head unless the richer one is clearly better by that measure.
        best = options[0]
        for option in options[1:]:
            if option[2] > best[2] + 0.01:
                best = option
        choices.append(best + ("",))
    if neighbours is not None and len(neighbours.source):
        choices = _try_neighbours(candidates, features, targets, choices, neighbours, fold_of, folds, grid, pool,
                                  pred, progress)

    def refit(kc):
        k, (kind, l2, _, _, aug) = kc
        x, y = features[k], targets
        if aug:
            rows = _group_rows(neighbours, aug)
            x, y = np.concatenate([x, neighbours.features[k][rows]]), np.concatenate([y, neighbours.targets[rows]])
        return FITTERS[kind](x, y, l2=l2)

    refitted = pool.map(refit, enumerate(choices))
    for cand, (kind, l2, _, probs, aug), layers in zip(candidates, choices, refitted):
        agree = probs.argmax(1) == pred
        gw, gb = fit_gate(probs, agree)
        heads.append(FittedHead(cand, kind, layers, gw, gb, agree, gate_scores(probs, gw, gb), float(agree.mean()),
                                probs, l2, aug))
    return heads


def _group_rows(nb: NeighbourRows, name: str) -> np.ndarray:
    if nb.group is None:
        return np.ones(len(nb.source), bool)
    return nb.group == nb.groups.index(name)


def _try_neighbours(candidates, features, targets, choices, nb: NeighbourRows, fold_of, folds, grid, pool, pred,
                    progress):
    """Phase 2 of distillation: the chosen kind and L2 of every early candidate refitted with the
    neighbours of its training folds' rows, each perturbation's neighbours on their own, judged
    out of fold on the same real rows; the best kept where worth rises by more than AUG_MARGIN."""
    nb_fold = fold_of[nb.source]
    names = list(nb.groups) if nb.group is not None else ["neighbours"]
    jobs = [(k, kind, l2, name, f) for k, (kind, l2, _, _, _) in enumerate(choices)
            if candidates[k].flops_fraction <= AUG_MAX_FRACTION for name in names for f in range(folds)]

    def fit_fold(job):
        k, kind, l2, name, f = job
        tr, te = fold_of != f, fold_of == f
        rows = _group_rows(nb, name) & (nb_fold != f)
        x = np.concatenate([features[k][tr], nb.features[k][rows]])
        y = np.concatenate([targets[tr], nb.targets[rows]])
        return job, softmax(layers_forward(FITTERS[kind](x, y, l2=l2), features[k][te]))

    oof: dict[tuple[int, str], np.ndarray] = {}
    jobs.sort(key=lambda j: (-features[j[0]].shape[1] * (4 if j[1] == "mlp" else 1), j))
    for (k, kind, l2, name, f), probs_te in tqdm(pool.map(fit_fold, jobs), total=len(jobs),
                                                 desc="distill: fit with neighbours", unit="fit", disable=not progress,
                                                 leave=False):
        probs = oof.setdefault((k, name), np.zeros_like(targets))
        probs[fold_of == f] = probs_te
    out = list(choices)
    for (k, name), probs in sorted(oof.items()):
        worth = head_worth(probs, pred)
        if worth > out[k][2] + AUG_MARGIN:
            out[k] = (out[k][0], out[k][1], worth, probs, name)
    return out
