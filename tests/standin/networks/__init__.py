"""Stand-in for sd-scripts' `networks` package (CI only)."""
