"""kohya-ext presets (installed as kohya_ext.presets)."""
