"""``--network_module kohya_ext.gui_network``: the name kohya_ss GUI users type (docs/gui.md).

The glue lives in ``kohya_ext.patches.gui_network``; this module only re-exports sd-scripts'
network-module surface so the name stays short.
"""

from kohya_ext.patches.gui_network import check_before_create_network, create_network, create_network_from_weights

check_before_create_network()  # sd-scripts imports this module inside train(), then parses --network_args

__all__ = ["create_network", "create_network_from_weights"]
