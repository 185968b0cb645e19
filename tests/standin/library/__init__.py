"""Stand-in for sd-scripts' `library` package (CI only)."""
