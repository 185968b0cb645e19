"""``--network_module kohya_ext.gui_network``: the name kohya_ss GUI users type (docs/gui.md).

The glue lives in ``kohya_ext.patches.gui_network``; this module only re-exports sd-scripts'
network-module surface so the name stays short.
"""

from kohya_ext.patches.gui_network import create_network, create_network_from_weights

__all__ = ["create_network", "create_network_from_weights"]
