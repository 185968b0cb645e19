"""kohya-ext patches (installed as kohya_ext.patches)."""
