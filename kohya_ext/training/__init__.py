"""The trainer-independent parts of the in-training integration.

options (the ``--consistency_*`` flags), early_stop (one pure decision function),
leaderboard (atomic CSV/JSON history), worker (scoring in a killable process with a
deadline), prompts (fixed-seed evaluation prompts), trackers (logging the way
sd-scripts does per tracker), best (the ``-best`` copy with our metadata).
Nothing here imports sd-scripts; the glue lives in ``kohya_ext.patches.sd_scripts``.
"""
