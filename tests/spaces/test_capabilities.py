"""The capability probe on this CPU: what it removes, why, and what it keeps."""

from __future__ import annotations

import pytest
import torch

from slimtune.spaces import Removal, SearchSpace, probe


@pytest.fixture(scope="module")
def probed() -> tuple[SearchSpace, SearchSpace, list[Removal]]:
    space = SearchSpace(
        prune_ratio=(0.0, 0.5),
        precision=("fp32", "tf32"),
        quantization=("none", "int8_weight_only", "fp8_dynamic"),
        runtime=("eager", "cudagraphs"),
        finetune_steps=20,
    )
    kept, removals = probe(space, torch.device("cpu"))
    return space, kept, removals


def test_cpu_probe_removes_what_needs_cuda_with_reasons(probed):
    _, _, removals = probed
    removed = {(r.knob, r.value): r.reason for r in removals}
    assert set(removed) == {("precision", "tf32"), ("runtime", "cudagraphs"), ("quantization", "fp8_dynamic")}
    for reason in removed.values():
        assert isinstance(reason, str) and reason.strip()
    assert "CUDA" in removed[("runtime", "cudagraphs")]
    assert "NotImplementedError" in removed[("quantization", "fp8_dynamic")]
    for removal in removals:
        assert str(removal).startswith(f"{removal.knob}={removal.value} removed: ")


def test_cpu_probe_keeps_what_runs(probed):
    original, kept, _ = probed
    assert kept.precision == ("fp32",)
    assert kept.quantization == ("none", "int8_weight_only")
    assert kept.runtime == ("eager",)
    # Everything that is not a categorical choice is left as it was.
    assert (kept.prune_ratio, kept.finetune_steps, kept.prune_importance) == (
        original.prune_ratio, original.finetune_steps, original.prune_importance
    )


def test_probe_of_a_space_that_runs_everywhere_removes_nothing():
    space = SearchSpace(quantization=("none", "int8_dynamic"), precision=("fp32", "bf16"))
    kept, removals = probe(space, torch.device("cpu"))
    assert removals == []
    assert kept == space
