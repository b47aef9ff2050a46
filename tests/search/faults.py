"""Evaluator factories for the worker process that inject one fault per trial number.

The worker imports these by name ("tests.search.faults:<factory>"), builds the real evaluator,
and misbehaves on the trial whose seed (study seed 0 + trial number) the table names.
"""

from __future__ import annotations

import os
import signal
import time

from slimtune.objectives.worker import make_evaluator


def _nan(evaluator, recipe, seed, on_stage):
    measurement = evaluator.real_evaluate(recipe, seed, on_stage)
    measurement.accuracy = float("nan")
    measurement.check_finite()
    return measurement


def _allocate(evaluator, recipe, seed, on_stage):
    hog = bytearray(1600 * 2**20)  # touched, so it is resident
    for index in range(0, len(hog), 4096):
        hog[index] = 1
    time.sleep(120)


def _interrupt_driver(evaluator, recipe, seed, on_stage):
    os.kill(os.getppid(), signal.SIGINT)  # what Ctrl-C in the driver's terminal does
    time.sleep(120)


FAULTS = {
    "exit": lambda *_: os._exit(3),
    "segfault": lambda *_: os.kill(os.getpid(), signal.SIGSEGV),
    "raise": lambda *_: (_ for _ in ()).throw(RuntimeError("injected failure")),
    "hang": lambda *_: time.sleep(600),
    "nan": _nan,
    "allocate": _allocate,
    "cuda_error": lambda *_: (_ for _ in ()).throw(RuntimeError("CUDA error: an illegal memory access was encountered")),
    "interrupt": _interrupt_driver,
}

#: trial number -> fault, for `one_fault_per_trial`
PLAN = {1: "exit", 2: "segfault", 3: "raise", 4: "nan", 5: "hang", 6: "allocate", 7: "cuda_error"}


class FaultyEvaluator:
    def __init__(self, evaluator, plan: dict[int, str]):
        self.evaluator, self.plan = evaluator, plan
        self.baseline_accuracy = evaluator.baseline_accuracy
        self.check_combination = evaluator.check_combination

    def real_evaluate(self, recipe, seed, on_stage=None):
        return self.evaluator.evaluate(recipe, seed, on_stage=on_stage)

    def evaluate(self, recipe, seed=0, on_stage=None):
        fault = self.plan.get(seed)
        if fault is None:
            return self.real_evaluate(recipe, seed, on_stage)
        on_stage(f"injected {fault}")
        return FAULTS[fault](self, recipe, seed, on_stage)


def one_fault_per_trial(spec, workload, baseline):
    return FaultyEvaluator(make_evaluator(spec, workload, baseline), PLAN)


def interrupt_on_trial_1(spec, workload, baseline):
    return FaultyEvaluator(make_evaluator(spec, workload, baseline), {1: "interrupt"})


class CaptureFails:
    """int8_dynamic fails at CUDA graph capture on a real GPU whatever the prune ratio; this
    reproduces that failure on the CPU for both trials and the unpruned check."""

    def __init__(self, evaluator):
        self.evaluator = evaluator
        self.baseline_accuracy = evaluator.baseline_accuracy

    def _fail(self, recipe):
        if recipe.quantization == "int8_dynamic":
            raise RuntimeError("operation not permitted when stream is capturing")

    def evaluate(self, recipe, seed=0, on_stage=None):
        self._fail(recipe)
        return self.evaluator.evaluate(recipe, seed, on_stage=on_stage)

    def check_combination(self, recipe):
        self._fail(recipe)
        self.evaluator.check_combination(recipe)


def int8_dynamic_always_fails(spec, workload, baseline):
    return CaptureFails(make_evaluator(spec, workload, baseline))


class SlowSetting:
    """A real evaluator whose candidates in one memory format really run slower (each forward
    runs the model `times` times: slower by that factor however loaded the machine is), so the
    target screen measures the difference and must act on it."""

    def __init__(self, evaluator, memory_format: str, times: int = 5):
        self.evaluator, self.memory_format, self.times = evaluator, memory_format, times

    def __getattr__(self, name):
        return getattr(self.evaluator, name)

    def __setattr__(self, name, value):
        if name == "_deadline":  # the screen's deadline is the real evaluator's
            setattr(self.evaluator, name, value)
        else:
            super().__setattr__(name, value)

    def __delattr__(self, name):
        delattr(self.evaluator, name)

    def build(self, recipe, seed=0, on_stage=None):
        candidate = self.evaluator.build(recipe, seed, on_stage)
        if recipe.memory_format == self.memory_format:
            model, times = candidate.deployed, self.times

            def slow(inputs):
                for _ in range(times - 1):
                    model(inputs)
                return model(inputs)

            candidate.run = slow
        return candidate


def slow_channels_last(spec, workload, baseline):
    # 20x: the screen's 1.5x verdict must hold even while another test loads the machine
    return SlowSetting(make_evaluator(spec, workload, baseline), "channels_last", times=20)


def slow_contiguous(spec, workload, baseline):
    return SlowSetting(make_evaluator(spec, workload, baseline), "contiguous", times=20)


class HangsOnBf16(SlowSetting):
    """Building any bf16 candidate hangs (a compiler that never returns)."""

    def build(self, recipe, seed=0, on_stage=None):
        if recipe.precision == "bf16":
            on_stage("injected hang")
            time.sleep(600)
        return self.evaluator.build(recipe, seed, on_stage)


def hangs_on_bf16(spec, workload, baseline):
    return HangsOnBf16(make_evaluator(spec, workload, baseline), "none")


class LosesAccuracyPastRatio(SlowSetting):
    """A real evaluator whose trials pruned past `ratio` lose half their accuracy (what fine-tuning
    cannot recover on a data set where pruning costs accuracy), so a prune ladder must step down."""

    def __init__(self, evaluator, ratio: float):
        super().__init__(evaluator, "none")
        self.ratio = ratio

    def evaluate(self, recipe, seed=0, on_stage=None):
        measurement = self.evaluator.evaluate(recipe, seed, on_stage=on_stage)
        if recipe.prune_ratio > self.ratio:
            measurement.accuracy -= 0.5
        return measurement


def loses_accuracy_past_0_6(spec, workload, baseline):
    return LosesAccuracyPastRatio(make_evaluator(spec, workload, baseline), 0.6)
