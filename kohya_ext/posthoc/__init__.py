"""Runs already trained: rank their samples, compare runs, render a report page.

sample_names (sd-scripts sample file names), run_info (training data, TensorBoard
logs and checkpoints of an output folder), rank, compare, report_html.
"""
