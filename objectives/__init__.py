"""How a candidate is judged: workloads, the evaluator, one module per measurement.

Nothing here imports `slimtune.search` or `slimtune.storage`.
"""

from .baseline import Baseline, TrainingRecipe, get_baseline
from .evaluator import OBJECTIVE_NAMES, Budget, Evaluator, Measurement, TrialStopped
from .workloads import DataSplits, Workload, WorkloadError, load_workload

__all__ = [
    "OBJECTIVE_NAMES", "Baseline", "Budget", "DataSplits", "Evaluator", "Measurement",
    "TrainingRecipe", "TrialStopped", "Workload", "WorkloadError", "get_baseline", "load_workload",
]
