"""Early stopping on one monitored value (the consistency score, or sd-scripts' validation loss):
one pure decision function returning (stop, reason)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from enum import Enum


class StopReason(str, Enum):
    NONE = "none"
    FAILED = "evaluation_failed"  # a failed evaluation neither improves nor counts toward patience
    IMPROVED = "improved"
    WAITING = "no_improvement"
    WARMUP = "warmup"
    PATIENCE = "patience_exhausted"
    TARGET = "target_reached"


@dataclass(frozen=True)
class StopConfig:
    patience: int | None = None
    min_delta: float = 0.0
    warmup: int = 0
    target: float | None = None  # mode "max" only
    name: str = "consistency/score"  # what is watched, for the messages
    mode: str = "max"  # "max": higher is better (a score); "min": lower is better (a loss)

    @property
    def active(self) -> bool:
        return self.patience is not None or self.target is not None


@dataclass(frozen=True)
class EarlyStopState:
    """Plain values, so it round-trips through JSON (resume)."""

    best: float | None = None
    wait: int = 0
    evaluations: int = 0  # successful ones
    stopped: bool = False
    reason: str = StopReason.NONE.value
    message: str = ""

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def load_state_dict(cls, d: dict) -> "EarlyStopState":
        return cls(**{k: d.get(k, getattr(cls(), k)) for k in asdict(cls())})


def decide(state: EarlyStopState, score: float | None, cfg: StopConfig, eligible: bool = True) -> tuple[EarlyStopState, bool, StopReason, str]:
    """The new state, whether to stop, why, and a sentence naming the value and the bound.

    Order: no early stopping asked (never stops, keeps no state), failed/non-finite evaluation,
    improvement (by more than min_delta; a memorised evaluation is not eligible), patience count,
    then target and patience checks, both held back until ``warmup`` successful evaluations.
    """
    if not cfg.active:
        return state, False, StopReason.NONE, ""
    if state.stopped:
        return state, True, StopReason(state.reason), state.message
    if score is None or not math.isfinite(score):
        return state, False, StopReason.FAILED, "evaluation failed: not counted toward patience"
    n = state.evaluations + 1
    if state.best is None:
        improved = eligible
    else:
        improved = eligible and (score > state.best + cfg.min_delta if cfg.mode == "max" else score < state.best - cfg.min_delta)
    best = score if improved else state.best
    wait = 0 if improved else state.wait + 1
    new = replace(state, best=best, wait=wait, evaluations=n)
    if n < cfg.warmup:
        return new, False, StopReason.WARMUP, f"evaluation {n} of {cfg.warmup} warm-up evaluations: no stop yet"
    if cfg.target is not None and cfg.mode == "max" and eligible and score >= cfg.target:
        msg = f"{cfg.name} {score:.4f} reached the target {cfg.target:.4f}"
        return replace(new, stopped=True, reason=StopReason.TARGET.value, message=msg), True, StopReason.TARGET, msg
    if cfg.patience is not None and wait >= cfg.patience:
        msg = (f"{cfg.name} did not improve on {best if best is not None else float('nan'):.4f} by more than "
               f"{cfg.min_delta:g} for {wait} evaluations (patience {cfg.patience}); last {score:.4f}")
        return replace(new, stopped=True, reason=StopReason.PATIENCE.value, message=msg), True, StopReason.PATIENCE, msg
    if improved:
        return new, False, StopReason.IMPROVED, f"{cfg.name} improved to {score:.4f}"
    return new, False, StopReason.WAITING, f"no improvement for {wait} evaluation(s) (best {best:.4f})" if best is not None else "no eligible score yet"
