"""kohya-ext callbacks (installed as kohya_ext.callbacks)."""
