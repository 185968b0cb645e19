"""The callback base: typed no-op hooks named on_<phase>_<unit>_<start|end>."""

from __future__ import annotations

from typing import Any


class Callback:
    """Hooks the sd-scripts glue calls; override what you need."""

    def on_fit_start(self, args: Any, is_main: bool) -> None:
        """Before ``train()`` builds anything (fail here to fail before the first step)."""

    def on_network_ready(self, accelerator: Any, args: Any, network: Any) -> None:
        """After the LoRA network exists (``post_process_network``)."""

    def on_epoch_start(self) -> None:
        """At every epoch start (the network's ``on_epoch_start``)."""

    def on_sample_point(self, accelerator: Any, args: Any, epoch: int | None, global_step: int, render: Any) -> None:
        """Where kohya's sampler is called: after every optimizer step (epoch None) and at epoch end."""

    def on_checkpoint_saved(self, path: str, metadata: dict | None, dtype: Any) -> None:
        """After kohya wrote a checkpoint (main process)."""

    def on_fit_end(self, accelerator: Any, stopped_early: bool) -> None:
        """After the final save (trackers already closed), and on an exception."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
