"""What a knob is: the study-file fields it declares, how a trial samples it, how it changes a
candidate, and which of its values a target can run.

Config, the joint space, the recipe, the evaluator and the capability probe all iterate over
`registry.KNOBS`, so a new knob is its own module, its tests, and one line in the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import optuna
import torch
from torch import nn


@dataclass(frozen=True)
class StudyField:
    """One `[space]` entry of the study file.

    `kind="range"`: `[low, high]` within `bounds`; absent means not searched.
    `kind="choices"`: a list drawn from `allowed`; a single choice is fixed, not searched.
    """

    name: str
    kind: str  # "range" | "choices"
    default: tuple | None = None
    bounds: tuple[float, float] | None = None
    allowed: tuple | None = None
    help: str = ""


def deployed_inputs(batch: torch.Tensor, device: torch.device, dtype: torch.dtype,
                    memory_format: torch.memory_format) -> torch.Tensor:
    """A float32 batch as a deployed model takes it: the candidate when measured and its export
    when loaded must convert the same way, or the export measures another model. Token ids
    (integers) keep their dtype: precision is the weights' and activations', not the ids'."""
    if not batch.is_floating_point():
        return batch.to(device=device)
    batch = batch.to(device=device, dtype=dtype)
    if batch.dim() == 4:
        batch = batch.contiguous(memory_format=memory_format)
    return batch


@dataclass
class Candidate:
    """A model on its way to deployment, plus what each step did to it.

    `run` is the callable that is measured and exported (the model itself until a runtime
    wraps it); `inputs` converts a float32 batch into what the deployed model takes (dtype,
    memory format); `record` holds facts the knobs report (quantized layers, channel widths,
    math mode, compile time), stored with the trial's measurement.
    """

    model: nn.Module
    device: torch.device
    input_dtype: torch.dtype = torch.float32
    memory_format: torch.memory_format = torch.contiguous_format
    run: Callable[[torch.Tensor], torch.Tensor] | None = None
    record: dict[str, Any] = field(default_factory=dict)

    def inputs(self, batch: torch.Tensor) -> torch.Tensor:
        return deployed_inputs(batch, self.device, self.input_dtype, self.memory_format)

    @property
    def deployed(self) -> Callable[[torch.Tensor], torch.Tensor]:
        # `is None`, not `or`: a compiled module's truth value asks the model for its len()
        return self.model if self.run is None else self.run

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.deployed(batch)


class BuildContext(Protocol):
    """What the evaluator lends the knobs while it builds a candidate."""

    device: torch.device
    num_classes: int
    input_shape: tuple[int, ...]
    batch_size: int  # the primary (first) measured batch size

    def example(self, batch_size: int) -> torch.Tensor: ...

    def finetune(self, model: nn.Module, recipe: Any) -> dict[str, Any]:
        """Fine-tunes `model` in place; answers what the measurement records about it
        (`finetune_steps_run`, and which step was kept when the run keeps its best)."""
        ...

    def check_time(self, stage: str) -> None: ...


class Knob:
    """Base class. `recipe_fields` maps each recipe field to its baseline value (the value
    that leaves the model unchanged); `fields` are the study-file entries."""

    name: str = ""
    fields: tuple[StudyField, ...] = ()
    recipe_fields: dict[str, Any] = {}

    def suggest(self, trial: optuna.Trial, space: Any, recipe: dict[str, Any]) -> None:
        """Add this knob's sampled values to `recipe` (earlier knobs' values are in it)."""

    def apply(self, candidate: Candidate, recipe: Any, context: BuildContext) -> None:
        """Change `candidate` in place."""

    def baseline_params(self, space: Any) -> dict[str, Any]:
        """Optuna params that make `suggest` give this knob's baseline values (for trial 0):
        by default every searched choice field set to its baseline value."""
        params = {}
        for study_field in self.fields:
            choices = getattr(space, study_field.name)
            baseline = self.recipe_fields.get(study_field.name)
            if study_field.kind == "choices" and len(choices) > 1 and baseline in choices:
                params[study_field.name] = baseline
        return params

    def contains_baseline(self, space: Any) -> bool:
        """Whether `space` lets this knob leave the model unchanged."""
        for study_field in self.fields:
            value = getattr(space, study_field.name)
            if study_field.kind == "choices" and self.recipe_fields.get(study_field.name) not in value:
                return False
        return True

    def describe(self, recipe: Any) -> list[str]:
        """Short words for tables: only what differs from the baseline."""
        return []

    def unavailable(self, value: Any, device: torch.device, input_shape: tuple[int, ...]) -> str | None:
        """Why `value` cannot run on this target, known without running it (None: try it)."""
        return None

    def applies_to(self, model: nn.Module) -> bool:
        """Whether this knob can change this model at all (layer dropping needs a transformer);
        where it cannot, the probe fixes its field at the baseline value without a word."""
        return True

    def unavailable_on(self, value: Any, model: nn.Module) -> str | None:
        """Why `value` cannot apply to this workload's model (None: it can); the probe asks
        when it is given the model."""
        return None

    def try_on_tiny_model(self, value: Any, device: torch.device) -> None:
        """Run `value` on a tiny model; raise when the target cannot. Default: nothing to try."""

    def probed_field(self) -> StudyField | None:
        """The categorical field whose values the capability probe tries, if any."""
        return None


def choose(trial: optuna.Trial, name: str, choices: tuple) -> Any:
    """A categorical with one choice is fixed: not an Optuna param, so samplers ignore it."""
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))
