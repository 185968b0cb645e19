"""kohya-ext callbacks (installed as kohya_ext.callbacks).

``ConsistencyCallback`` evaluates, logs, ranks and stops; it knows the trainer only through
the accelerator, the args Namespace and a small ``surface`` object that
``kohya_ext.patches.sd_scripts`` provides (checkpoint names, save cadence, rendering).
"""

from .base import Callback
from .consistency import ConsistencyCallback, EarlyStopped

__all__ = ["Callback", "ConsistencyCallback", "EarlyStopped"]
