"""Early stopping around ``kohya_ext.training.early_stop.decide``: patience, min_delta, warm-up, target."""

from __future__ import annotations

from dataclasses import replace

from kohya_ext.training.early_stop import EarlyStopState, StopConfig, StopReason, decide


class EarlyStopping:
    """Decides once per evaluation (main process; ``kohya_ext.training.distributed`` spreads the decision)."""

    def __init__(self, cfg: StopConfig):
        self.cfg = cfg
        self.state = EarlyStopState()

    def update(self, row: dict, eligible: bool, value: float | None = None, alone: bool = True) -> str | None:
        """Record the decision on ``value`` (default: the row's score) in ``row``; the stop message when training
        should stop. ``alone=False`` (two signals): exhausted patience is not a stop by itself (see ``exhausted``)."""
        self.state, stop, reason, message = decide(self.state, row.get("score") if value is None else value, self.cfg, eligible)
        if stop and not alone and reason is StopReason.PATIENCE:
            self.state, stop = replace(self.state, stopped=False, reason=StopReason.NONE.value, message=""), False
        row.update(es_best=self.state.best, es_wait=self.state.wait, stop=stop,
                   stop_reason=None if reason is StopReason.NONE else reason.value, message=message)
        return message if stop else None

    @property
    def exhausted(self) -> bool:
        """No improvement for ``patience`` evaluations, past the warm-up."""
        c = self.cfg
        return c.patience is not None and self.state.evaluations >= c.warmup and self.state.wait >= c.patience

    def state_dict(self) -> dict:
        return self.state.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.state = EarlyStopState.load_state_dict(state)
