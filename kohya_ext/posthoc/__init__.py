"""Runs already trained: rank their samples, compare runs, render a report page.

run_info (training data, TensorBoard logs and checkpoints of an output folder), rank,
compare, report_html. sd-scripts' sample file names are read by kohya_ext.patches.sample_names.
"""
