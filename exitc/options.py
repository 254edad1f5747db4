"""Compile options: one definition, read by the driver, the torch front end and the CLI.

This module imports nothing heavy, so the CLI can show the real defaults in ``--help`` without
loading numpy, onnx or the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .errors import ExitcError

if TYPE_CHECKING:
    from .passes.candidates import Candidate
    from .profile import Profile


HEAD_KINDS = ("linear", "mlp")
TRIM_PADDING = ("auto", "always", "never")


@dataclass
class CompileOptions:
    target_acc: float = 0.99
    confidence: float = 0.95
    batch_size: int = 32
    output: str | None = None
    # Share of the calibration rows kept for certification. The certification split sets how much
    # agreement the fit split must aim for (Clopper-Pearson at 95%: 0.9947 on 1500 rows, 0.9938 on
    # 2100); the fit split sets how good the heads are, and with few rows that matters more.
    # Measured with synthetic neighbours (exitc compile --target-acc 0.99, exitc bench at batch 32,
    # 0.5 vs 0.7, one compile each, loaded 2-core VM): cv_native (3000 rows) 2.10x vs 1.88x, mean
    # batch-1 latency 1.68x vs 0.99x (56% vs 52% of rows leave early, so batch-1 requests use the
    # exits); CV from 3000 rows 2.10x vs 1.74x; nlp_austen (2000 rows) 1.12x vs 1.01x;
    # NLP (2773 rows) 1.70x vs 1.65x, mean batch-1 latency 1.56x vs 1.03x. (Before neighbours
    # existed, NLP's predicted speedup was 1.60x at 0.5 and 1.67x at 0.7.) Large sets are
    # unaffected: max_fit_rows caps the fit split. 0.4 (2026-12-06, same measurement, 0.5 -> 0.4):
    # CV from 3000 rows seeds 0-4 1.85/2.12/2.08/2.30/2.09x -> 2.18/1.99/1.89/1.88/2.33x,
    # cv_native seeds 0/1 1.87/2.13x -> 2.10/2.15x, nlp_austen 2.20x -> 2.16x, NLP 2.44x -> 2.70x:
    # +1.5% on average with a spread of +-0.25x between paired compiles, so 0.5 stays.
    certify_fraction: float = 0.5
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
    # Never slower where the user looks: plans whose median batch-1 request or batch cost is
    # predicted slower than the original are not chosen, and an artifact that measures slower on
    # held-out rows falls back to the original (exitc.verify). False accepts such plans.
    never_slower: bool = True
    # Fit heads on synthetic neighbours of the fit rows too, labelled by the original (exitc.augment;
    # each head keeps them only where they raise its out-of-fold worth).
    augment: bool = True
    # Token models: open the sequence axis so a batch runs at its longest row's length, and let
    # runtimes split a batch by length (exitc.passes.sequence); kept only where the opened graph
    # computes what the original does on calibration rows, and with "auto" only where it also
    # measures faster than the padded model on them (profile.measure_trimming; with costs given,
    # cost_profile, as "always"). "never": rows run at the padded length. (True / False: "auto" /
    # "never".)
    trim_padding: str = "auto"
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
        for kind in self.head_kinds:
            if kind not in HEAD_KINDS:
                raise ExitcError(f"--heads: unknown head kind {kind!r} ({', '.join(HEAD_KINDS)})")
        if not self.head_kinds:
            raise ExitcError(f"--heads: no head kind given ({', '.join(HEAD_KINDS)})")
        if self.seed < 0:
            raise ExitcError(f"--seed {self.seed} must be >= 0")
        if isinstance(self.trim_padding, bool):
            self.trim_padding = "auto" if self.trim_padding else "never"
        if self.trim_padding not in TRIM_PADDING:
            raise ExitcError(f"--trim-padding {self.trim_padding!r}: expected one of {', '.join(TRIM_PADDING)}")
        if self.max_fit_rows < 50:
            raise ExitcError(f"--max-fit-rows {self.max_fit_rows} must be >= 50")
