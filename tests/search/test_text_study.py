"""A text study through the CLI, as a user runs one: a tiny BERT fine-tuned on its sentences, the
search (pruning heads, dropping layers, quantizing), the confirmation, `slimtune pareto`, the
report's throughput in sequences and tokens per second, and an export verified in a fresh process; a bad checkpoint folder is one line, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from slimtune.search.cli import main

pytestmark = pytest.mark.processes  # starts real slimtune processes: scheduled first (tests/conftest.py)


def text_study(write_study: Callable[..., Path], tiny_bert: Path, **workload: object) -> Path:
    return write_study({
        "study": {"name": "tiny-text", "n_trials": 5},
        "workload": {"model": f"hf:{tiny_bert}", "data": f"textcsv:{tiny_bert / 'reviews.csv'}",
                     "input_shape": [16], "batch_sizes": [32], **workload},
        "baseline": {"epochs": 8, "batch_size": 32, "lr": 3e-3},
        "space": {"drop_layers": [0, 1], "quantization": ["none", "int8_dynamic"]},
        "budget": {"finetune_steps": 20, "finetune_lr": 3e-3, "confirm_rounds": 2},
    })


def test_a_text_study_runs_confirms_reports_and_exports(write_study, tiny_bert, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'text.db'}"
    study = text_study(write_study, tiny_bert)
    assert main(["run", str(study), "--storage", url, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "confirmed" in printed.lower()
    assert main(["pareto", str(study), "--storage", url, "--format", "json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert front and all(row["latency_ms"] > 0 for row in front)
    assert main(["trials", "tiny-text", "--storage", url, "--format", "json"]) == 0
    trials = json.loads(capsys.readouterr().out)
    assert len([t for t in trials if t["state"] == "COMPLETE"]) >= 3
    report = tmp_path / "report.html"
    assert main(["report", "tiny-text", "--storage", url, "-o", str(report)]) == 0
    capsys.readouterr()
    page = report.read_text()
    assert "sequences/s" in page and "tokens/s at batch 32 x 16" in page
    out = tmp_path / "export"
    assert main(["export", "tiny-text", "--storage", url, "--knee", "--out", str(out)]) == 0
    assert "verified: accuracy" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verified"] is True
    assert manifest["input"]["dtype"] == "int64" and manifest["input"]["shape"] == ["N", 16]
    assert "tokenizer" in manifest["load"]


def test_a_checkpoint_folder_without_config_exits_2_and_writes_nothing(write_study, tiny_bert, tmp_path, capsys):
    folder = tmp_path / "weights-only"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((tiny_bert / "model.safetensors").read_bytes())
    db = tmp_path / "never.db"
    study = text_study(write_study, folder)
    study.write_text(study.read_text().replace(f"textcsv:{folder / 'reviews.csv'}", f"textcsv:{tiny_bert / 'reviews.csv'}"))
    assert main(["run", str(study), "--storage", f"sqlite:///{db}", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("slimtune: error: workload.model") and "no config.json" in err[0]
    assert not db.exists()
