"""An evaluator that warns the way torchao 0.17 did on the GPU: a deprecation warning for every
quantized layer of every trial, with torch's `warnings.catch_warnings()` blocks in between (each
one wipes Python's memory of what it showed). The installed torchao 0.18 no longer warns on the
CPU, so this reproduces the flood for the test; the warning itself is a real one, raised in the
worker process."""

from __future__ import annotations

import warnings

from slimtune.objectives.worker import make_evaluator

MESSAGE = ("Deprecation: PlainLayout is deprecated and will be removed in a future release of torchao, "
           "see https://github.com/pytorch/ao/issues/2752 for more details")


def _layout() -> None:
    warnings.warn(MESSAGE)


class NoisyEvaluator:
    def __init__(self, evaluator):
        self.evaluator = evaluator
        self.baseline_accuracy = evaluator.baseline_accuracy
        self.check_combination = evaluator.check_combination

    def evaluate(self, recipe, seed=0, on_stage=None):
        if recipe.quantization != "none":
            for _ in range(20):
                with warnings.catch_warnings():  # as torch does around compiles and exports
                    pass
                _layout()
        return self.evaluator.evaluate(recipe, seed, on_stage=on_stage)


def noisy(spec, workload, baseline):
    return NoisyEvaluator(make_evaluator(spec, workload, baseline))
