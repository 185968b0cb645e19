"""kohya-ext's training parts (installed as kohya_ext.callbacks), each with one job, as Lightning splits them.

``ConsistencyEvaluator`` renders and scores one evaluation; ``EarlyStopping`` decides whether to
stop; ``BestCheckpoint`` crowns and keeps ``{output_name}-best``. ``kohya_ext.training.run.TrainingRun``
drives them from the hooks ``kohya_ext.patches`` installs in sd-scripts.
"""

from .best_checkpoint import BestCheckpoint
from .early_stopping import EarlyStopping
from .evaluator import ConsistencyEvaluator, Evaluation

__all__ = ["BestCheckpoint", "ConsistencyEvaluator", "EarlyStopping", "Evaluation"]
