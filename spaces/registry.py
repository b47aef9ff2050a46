"""The registered knobs, in the order they are sampled and applied to a candidate:
drop layers -> prune -> fine-tune (KD) -> precision -> memory format -> quantize -> runtime.

Adding a knob: write its module (fields, suggest, apply, describe, probe hooks), its tests,
and add one line here.
"""

from __future__ import annotations

from .distillation import DistillationKnob
from .knob import Knob, StudyField
from .layers import LayersKnob
from .memory_format import MemoryFormatKnob
from .precision import PrecisionKnob
from .pruning import PruningKnob
from .quantization import QuantizationKnob
from .runtime import RuntimeKnob

KNOBS: tuple[Knob, ...] = (
    LayersKnob(),
    PruningKnob(),
    DistillationKnob(),
    PrecisionKnob(),
    MemoryFormatKnob(),
    QuantizationKnob(),
    RuntimeKnob(),
)


def recipe_defaults() -> dict:
    """Every recipe field with its baseline value (the value that leaves the model unchanged)."""
    return {name: value for knob in KNOBS for name, value in knob.recipe_fields.items()}


def study_fields() -> list[StudyField]:
    return [field for knob in KNOBS for field in knob.fields]


def knob_of_field(name: str) -> Knob:
    for knob in KNOBS:
        if any(field.name == name for field in knob.fields):
            return knob
    raise KeyError(name)
