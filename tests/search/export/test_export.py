"""`slimtune export` end to end on the tiny digits study (run once for the module): the model
rebuilt in a worker, verified in a fresh process, a row in the exports table; bad input is a
one-line error with exit code 2 and nothing written; a `.pt2` loads where only torch is installed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import venv
from importlib import metadata
from pathlib import Path

import optuna
import pytest
import torch

from slimtune.search import ExportError, load_exported
from slimtune.search.cli import main
from slimtune.search.export import export
from slimtune.search.results import open_study
from slimtune.spaces import Recipe

pytestmark = pytest.mark.processes  # starts real slimtune processes: scheduled first (tests/conftest.py)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """The tiny study with a pruned + int8 trial and a pruned unquantized one enqueued, and a
    failed trial recorded as the runner records one."""
    from tests.conftest import TINY_STUDY, toml_value
    from slimtune.search import run

    folder = tmp_path_factory.mktemp("export-study")
    lines = []
    for section, fields in TINY_STUDY.items():
        fields = dict(fields, n_trials=3) if section == "study" else fields
        lines += [f"[{section}]", *(f"{k} = {toml_value(v)}" for k, v in fields.items()), ""]
    path = folder / "tiny.toml"
    path.write_text("\n".join(lines))
    storage = f"sqlite:///{folder / 'study.db'}"
    # trial 0 is the baseline; 1 and 2 are fixed so the tests know what they export
    run(str(path), storage=storage, n_trials=1)  # creates the study and measures the baseline
    study = optuna.load_study(study_name="tiny", storage=storage)
    study.enqueue_trial({"prune_ratio": 0.3, "kd_temperature": 2.0, "quantization": "int8_weight_only"})
    study.enqueue_trial({"prune_ratio": 0.3, "kd_temperature": 2.0, "quantization": "none"})
    run(str(path), storage=storage, n_trials=3)
    study, repository = open_study("tiny", storage)
    failed = study.ask()
    repository.record_trial("tiny", failed.number, status="failed", recipe=Recipe(prune_ratio=0.5).to_dict(),
                            reason="RuntimeError: injected for the test")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    return storage, folder


def _records(storage):
    study, repository = open_study("tiny", storage)
    return {r.trial_number: r for r in repository.trials("tiny")}, repository


def test_export_pt2_verified_in_a_fresh_process(tiny_study, tmp_path, capsys):
    storage, _ = tiny_study
    records, repository = _records(storage)
    assert Recipe.from_dict(records[1].recipe).quantization == "int8_weight_only"
    out = tmp_path / "pt2"
    assert main(["export", "tiny", "--storage", storage, "--trial", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "verified: accuracy" in printed
    # the recipe says what its quantization covered (the small CNN: 4 of its 5 weight layers;
    # torchao refuses the grayscale stem's 144 weights)
    assert re.search(r"^export: trial 1 of 'tiny' \(prune 0\.30, .*int8_weight_only \(4 of 5 layers, "
                     r"99\.\d% of weights\)\) as pt2$", printed, re.MULTILINE), printed
    # each stage with its time, in order
    stages = re.findall(r"^export: (.+?) (\d+\.\d) s$", printed, re.MULTILINE)
    names = [name for name, _ in stages]
    assert names[:3] == ["worker start (workload, baseline)", "rebuild (prune)", "fine-tune"], printed
    assert names[-3:] == ["trace", "write", "verify"], printed
    manifest = json.loads((out / "manifest.json").read_text())
    # the file is the weights and the graph, and the manifest says how much of each
    assert manifest["file_bytes"] == {"model.pt2": (out / "model.pt2").stat().st_size}
    assert 0 < manifest["weight_bytes"] < manifest["file_bytes"]["model.pt2"] < manifest["weight_bytes"] + 256_000
    assert manifest["verified"] is True and manifest["trial"] == 1 and manifest["format"] == "pt2"
    verification = manifest["verification"]
    assert abs(verification["accuracy"] - records[1].measurement["accuracy"]) <= 0.005
    assert verification["latency_ratio"] > 0 and verification["batch_size"] == 32
    assert set(manifest["files"]) == {"model.pt2"}
    assert manifest["requires"]["torchao"] and manifest["quantized_layers"]
    assert 0.5 < manifest["quantized_weight_share"] < 1.0
    assert "of weights)" in manifest["recipe_description"]
    assert manifest["input"]["batch"] == "dynamic" and manifest["input"]["dtype"] == "float32"
    rows = repository.exports("tiny")
    row = rows[-1]
    assert (row.trial_number, row.format, row.verified) == (1, "pt2", True)
    assert row.hashes == manifest["files"] and row.path == str(out.resolve())
    assert row.latency_ratio == pytest.approx(verification["latency_ratio"])
    # the lines of Python the manifest gives run as they are
    code = manifest["load"]
    done = subprocess.run([sys.executable, "-c", code], cwd=out, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_export_state_dict_through_the_python_api(tiny_study, tmp_path):
    storage, _ = tiny_study
    records, _ = _records(storage)
    result = export("tiny", storage, trial=2, fmt="state_dict", out=tmp_path / "sd")
    assert result.out == tmp_path / "sd" and result.manifest["verified"] is True
    assert set(result.manifest["files"]) == {"weights.pt", "architecture.json"}
    loaded = load_exported(result.out)
    assert loaded.model[0].out_channels < 64  # pruned widths restored on the factory's model
    assert abs(result.manifest["verification"]["accuracy"] - records[2].measurement["accuracy"]) <= 0.005


def test_pick_and_knee_choose_from_the_feasible_front(tiny_study, tmp_path, capsys):
    storage, _ = tiny_study
    code = main(["export", "tiny", "--storage", storage, "--pick", "min latency where accuracy_drop <= -1",
                 "--out", str(tmp_path / "none")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert "no point of the feasible front satisfies it; closest: trial" in error
    assert not (tmp_path / "none").exists()
    code = main(["export", "tiny", "--storage", storage, "--pick", "min speed", "--out", str(tmp_path / "x")])
    assert code == 2 and "unknown metric 'speed'" in capsys.readouterr().err


def test_bad_requests_are_one_line_errors_with_nothing_written(tiny_study, tmp_path, capsys):
    storage, _ = tiny_study
    records, _ = _records(storage)
    failed = max(records)
    cases = [
        (["--trial", str(failed)], f"trial = {failed}: failed, nothing to export (RuntimeError: injected for the test)"),
        (["--trial", "99"], "trial = 99: not in study 'tiny'"),
        (["--trial", "1", "--format", "aoti"], "format = 'aoti' cannot hold this recipe: an AOTInductor package is built "
                                               "for a CUDA target"),
    ]
    for extra, message in cases:
        out = tmp_path / f"out{len(extra)}{extra[1]}"
        code = main(["export", "tiny", "--storage", storage, *extra, "--out", str(out)])
        error = capsys.readouterr().err
        assert code == 2 and message in error and error.count("\n") == 1, error
        assert not out.exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert main(["export", "tiny", "--storage", storage, "--trial", "1", "--out", str(busy)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    with pytest.raises(ExportError, match="exactly one of"):
        export("tiny", storage, trial=1, knee=True, out=tmp_path / "both")
    assert not list(tmp_path.glob(".*partial*"))


def test_a_verification_mismatch_marks_the_files_unverified(tiny_study, tmp_path, monkeypatch):
    """Verification compares with the trial: a stored accuracy the model cannot reproduce fails
    the export loudly (exit 1), and the files stay, marked unverified, with a table row."""
    storage, _ = tiny_study
    records, repository = _records(storage)
    record = records[2]
    wrong = dict(record.measurement, accuracy=record.measurement["accuracy"] - 0.2)
    repository.record_trial("tiny", 2, status="complete", recipe=record.recipe, measurement=wrong,
                            accuracy_drop=record.accuracy_drop)
    try:
        out = tmp_path / "mismatch"
        assert main(["export", "tiny", "--storage", storage, "--trial", "2", "--out", str(out)]) == 1
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["verified"] is False and "in the trial" in manifest["verification"]["reason"]
        assert repository.exports("tiny")[-1].verified is False
    finally:
        repository.record_trial("tiny", 2, status="complete", recipe=record.recipe, measurement=record.measurement,
                                accuracy_drop=record.accuracy_drop)


def test_a_verifier_that_hangs_is_stopped_and_the_files_marked_unverified(tiny_study, tmp_path, capsys):
    """The real verifier, given less time than it needs to start: killed at the limit, the
    export fails (exit 1) saying so, and the files stay with "verified": false."""
    storage, _ = tiny_study
    out = tmp_path / "slow"
    started = time.perf_counter()
    assert main(["export", "tiny", "--storage", storage, "--trial", "2", "--out", str(out),
                 "--verify-timeout", "0.5"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "export: verification failed: timed out after 0.5 s (while " in error and "marked unverified" in error
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verified"] is False and manifest["verification"]["status"] == "failed"
    assert manifest["verification"]["error"].startswith("timed out after 0.5 s")
    assert time.perf_counter() - started < 120


CRASH_WHILE_LOADING = """
import json, os, signal
print(json.dumps({"stage": "loading the model"}), flush=True)
os.kill(os.getpid(), signal.SIGSEGV)
"""

HANG_WHILE_MEASURING = """
import json, subprocess, sys, time
print(json.dumps({"stage": "loading the model"}), flush=True)
print(json.dumps({"stage": "measuring accuracy"}), flush=True)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a compiler worker, say
time.sleep(60)
"""


def test_a_loader_that_crashes_or_hangs_is_reported_as_such(tmp_path):
    """Real processes, killed by a signal or sleeping past the limit: the verdict names the
    signal or the limit and what the verifier was doing; a hung verifier's children go too."""
    from slimtune.search.export.build import verify_in_fresh_process

    crashed = verify_in_fresh_process(tmp_path, 60, command=(sys.executable, "-c", CRASH_WHILE_LOADING))
    assert crashed == {"error": "the loader crashed (signal 11, SIGSEGV)"}
    started = time.perf_counter()
    hung = verify_in_fresh_process(tmp_path, 2, command=(sys.executable, "-c", HANG_WHILE_MEASURING))
    assert hung == {"error": "timed out after 2 s (while measuring accuracy)"}
    assert time.perf_counter() - started < 30
    survivors = subprocess.run(["pgrep", "-f", "import time; time.sleep(60)"], capture_output=True, text=True)
    assert survivors.stdout.strip() == ""


# -- a .pt2 of a pruned, unquantized model where only torch is installed -------------------------
TORCH_ONLY = """
import sys, json, torch

try:
    import slimtune
except ImportError:
    pass
else:
    sys.exit("slimtune is importable here")
model = torch.export.load(sys.argv[1]).module()
x = torch.load(sys.argv[2])
print(json.dumps(model(x).tolist()))
"""


def _requirement_closure(name: str) -> list[metadata.Distribution]:
    """The installed distribution `name` and everything it requires (extras left out)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [name]
    while todo:
        key = re.split(r"[\s;<>=!~\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = metadata.distribution(key)
        except metadata.PackageNotFoundError:
            continue  # a requirement for another platform or Python
        seen[key] = dist
        todo += [r for r in dist.requires or [] if "extra ==" not in r]
    return list(seen.values())


def _torch_only_venv(root: Path) -> Path:
    """A fresh venv whose site-packages holds torch and its requirements only: linked from
    this environment's installed files (pip would copy gigabytes of CUDA wheels for this)."""
    python = root / "bin" / "python"
    if python.exists():
        return python
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for dist in _requirement_closure("torch"):
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return python


def test_pt2_of_a_pruned_model_runs_with_torch_alone(tiny_study, tmp_path, tmp_path_factory):
    storage, _ = tiny_study
    records, _ = _records(storage)
    assert Recipe.from_dict(records[2].recipe).quantization == "none" and records[2].recipe["prune_ratio"] > 0
    result = export("tiny", storage, trial=2, out=tmp_path / "plain")
    assert "torchao" not in result.manifest["requires"]
    started = time.perf_counter()
    python = _torch_only_venv(tmp_path_factory.getbasetemp() / "torch-only-venv")
    print(f"torch-only venv ready in {time.perf_counter() - started:.0f} s")
    batch = torch.randn(5, 1, 8, 8)
    torch.save(batch, tmp_path / "batch.pt")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(python), "-c", TORCH_ONLY, str(result.out / "model.pt2"), str(tmp_path / "batch.pt")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    with torch.inference_mode():
        expected = load_exported(result.out)(batch)
    torch.testing.assert_close(torch.tensor(json.loads(done.stdout.strip().splitlines()[-1])), expected)
