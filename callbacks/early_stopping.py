"""Early stopping around ``kohya_ext.training.early_stop.decide``: patience, min_delta, warm-up, target."""

from __future__ import annotations

from kohya_ext.training.early_stop import EarlyStopState, StopConfig, StopReason, decide


class EarlyStopping:
    """Decides once per evaluation (main process; ``kohya_ext.training.distributed`` spreads the decision)."""

    def __init__(self, cfg: StopConfig):
        self.cfg = cfg
        self.state = EarlyStopState()

    def update(self, row: dict, eligible: bool) -> str | None:
        """Record the decision in ``row``; the stop message when training should stop."""
        self.state, stop, reason, message = decide(self.state, row.get("score"), self.cfg, eligible)
        row.update(es_best=self.state.best, es_wait=self.state.wait, stop=stop,
                   stop_reason=None if reason is StopReason.NONE else reason.value, message=message)
        return message if stop else None

    def state_dict(self) -> dict:
        return self.state.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.state = EarlyStopState.load_state_dict(state)
