"""kohya-ext: does the character still look like itself? Facial-proportion consistency for LoRA training."""

__version__ = "0.1.0"
