"""`slimtune export`: the chosen configuration as a deployable model, verified in a fresh process.

The driver chooses the trial (by number, rule or knee) and keeps storage; a worker process
(the same one trials run in) rebuilds the model from the trial's stored recipe with the
trial's seed and the cached baseline, and writes the artifact into a hidden partial folder.
The driver hashes the files, writes `manifest.json` (verified: false), moves the folder to
`--out`, and runs `python -m slimtune.objectives.verify_export` in a fresh process: the
held-out accuracy must match the trial's within 0.5 point. The manifest then says
verified true or false with the figures, a row goes to `slimtune_exports`, and a failed
verification raises (exit 1): the files stay, marked unverified.

Each stage is logged with its time when it ends (rebuild, fine-tune, accuracy, trace, compile,
write, verify): an AOTInductor package can take minutes to compile, and a loader can hang or
crash (torch 2.11+cu130 segfaults loading any package on the H100 and H200 machines). The
verifier runs in its own session under a timeout; a crash ends as "the loader crashed (signal
11)" and a hang as "timed out after N s", the files marked unverified either way.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from slimtune.objectives.artifacts import (
    FORMATS, MANIFEST, FormatError, check_format, file_hashes, file_sizes,
)
from slimtune.spaces import Recipe
from slimtune.storage import DEFAULT_STORAGE, StorageError, safe_url

from slimtune.search.config import CONFIG_ATTR, parse_config
from slimtune.search.results import StudyNotFound, baseline_record, open_study
from slimtune.search.export.selection import SelectionError, knee, pick

#: the exported model's held-out accuracy must match the trial's within this (0.5 point)
ACCURACY_TOLERANCE = 0.005
#: the verifier's own command (a fresh interpreter); its last stdout line is its JSON answer
VERIFIER = (sys.executable, "-m", "slimtune.objectives.verify_export")
LOADING = "loading the model"  # the verifier's first stage (objectives/verify_export.py)
Log = Callable[[str], None]


class StageClock:
    """Logs each export stage with its time when the next one starts (`export: fine-tune 3.1 s`)."""

    def __init__(self, log: Log):
        self.log = log
        self.name: str | None = None
        self.started = 0.0

    def __call__(self, name: str) -> None:
        if name == self.name:
            return
        self.finish()
        self.name, self.started = name, time.perf_counter()

    def finish(self) -> None:
        if self.name is not None:
            self.log(f"export: {self.name} {time.perf_counter() - self.started:.1f} s")
        self.name = None


class ExportError(ValueError):
    """Bad input (trial, rule, format, --out): nothing was written; the message is one line."""


class ExportFailed(RuntimeError):
    """The export ran but must not be shipped (rebuild failed, or verification did not match).
    `result` is set when files were written (marked unverified)."""

    def __init__(self, message: str, result: "ExportResult | None" = None):
        super().__init__(message)
        self.result = result


@dataclass
class ExportResult:
    out: Path
    manifest: dict[str, Any]

    @property
    def verified(self) -> bool:
        return bool(self.manifest.get("verified"))


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def front_rows(study, repository) -> list[dict[str, Any]]:
    """The feasible front as one dict per point: the stored figures plus accuracy_drop and the
    ratios to the baseline."""
    records = {r.trial_number: r for r in repository.trials(study.study_name)}
    base = (baseline_record(list(records.values())) or None)
    base_m = base.measurement if base else None
    confirmed = repository.confirmations(study.study_name)
    rows = []
    for trial in study.best_trials:
        record = records.get(trial.number)
        if record is None or not record.measurement:
            continue
        m = record.measurement
        row = {"trial": trial.number, **{k: v for k, v in m.items() if isinstance(v, (int, float))}}
        row["accuracy_drop"] = record.accuracy_drop
        row["speedup_x"] = base_m["latency_ms"] / m["latency_ms"] if base_m else None
        if trial.number in confirmed:  # re-measured against the baseline: these figures win
            row["latency_ms"], row["speedup_x"] = (confirmed[trial.number][k] for k in ("latency_ms", "speedup_x"))
        row["memory_x"] = base_m["peak_memory_mb"] / m["peak_memory_mb"] if base_m else None
        rows.append(row)
    return rows


def _choose(study, repository, trial: int | None, rule: str | None, use_knee: bool) -> int:
    if sum(x is not None and x is not False for x in (trial, rule, use_knee)) != 1:
        raise ExportError("export: give exactly one of trial, pick (a rule) or knee")
    if trial is not None:
        return trial
    rows = front_rows(study, repository)
    if rule is not None:
        return pick(rows, rule)
    objectives = study.user_attrs.get(CONFIG_ATTR, {}).get("objectives") or {}
    return knee(rows, objectives)


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"out = {str(out)!r} exists and is not empty; name a new folder")


def _load_code(fmt: str, dtype: str, memory_format: str, shape: list[int], model: str = "") -> str:
    convert = f"x.to(torch.{dtype})" + (".contiguous(memory_format=torch.channels_last)" if memory_format == "channels_last" else "")
    example = f"x = torch.randn(8, {', '.join(map(str, shape))})  # a float32 batch, normalised as in training"
    if len(shape) == 1:  # text: token ids from the model's own tokenizer, at most the study's length
        convert = "x"
        example = (f"from transformers import AutoTokenizer\ntokenizer = AutoTokenizer.from_pretrained(CHECKPOINT)  "
                   f"# the folder {model!r} names\nx = tokenizer(texts, padding=True, truncation=True, "
                   f"max_length={shape[0]}, return_tensors='pt')['input_ids']")
    body = {
        "pt2": 'model = torch.export.load("model.pt2").module()\nlogits = model(' + convert + ")",
        "aoti": 'model = torch._inductor.aoti_load_package("model.pt2")\nlogits = model(' + convert + ".cuda())",
        "torchscript": 'model = torch.jit.load("model.ts")\nlogits = model(' + convert + ")",
        "onnx": 'import onnxruntime\nsession = onnxruntime.InferenceSession("model.onnx")\n'
                'logits = session.run(None, {"input": ' + convert + ".numpy()})[0]",
        "state_dict": "from slimtune.search import load_exported\nmodel = load_exported(\".\")  # checks every sha256\n"
                      "logits = model(model.inputs(x))",
    }[fmt]
    return f"import torch\n{example}\n{body}\n"


def export(
    study_name: str,
    storage_url: str = DEFAULT_STORAGE,
    *,
    trial: int | None = None,
    pick: str | None = None,
    knee: bool = False,
    fmt: str = "pt2",
    out: str | os.PathLike[str],
    seed: int | None = None,
    verify_timeout_s: float | None = None,
    log: Log = lambda line: None,
    refined: bool = False,
) -> ExportResult:
    """Export one trial of a study (by number, by `pick` rule, or the front's `knee`) in
    `fmt` to the folder `out`, and verify it in a fresh process. Raises `ExportError` for
    bad input (nothing written) and `ExportFailed` when the export must not be shipped.
    `seed` is needed only for trials stored before slimtune recorded each trial's seed.
    `verify_timeout_s` bounds the verifier (default: 4x the study's trial_timeout_s, at least
    300 s). `refined`: the trial's chosen refined model (`slimtune refine`; the best of its runs on
    the held-back images), rebuilt with its steps and seed and verified against its figures."""
    import torch

    from slimtune.objectives.worker import DEFAULT_FACTORY
    from slimtune.spaces.errors import one_line

    from slimtune.search.fingerprint import fingerprint
    from slimtune.search.isolated import IsolatedEvaluator, WorkerFailed
    from slimtune.search.refine import refine_spec
    from slimtune.search.results import chosen_refined, selection_score_of
    from slimtune.search.runner import worker_spec

    out = Path(out)
    if verify_timeout_s is not None and not verify_timeout_s > 0:
        raise ExportError(f"verify_timeout_s = {verify_timeout_s!r}: must be a positive number of seconds")
    if fmt not in FORMATS:
        raise ExportError(f"format = {fmt!r}: unknown; allowed: {', '.join(FORMATS)}")
    _check_out(out)
    try:
        study, repository = open_study(study_name, storage_url)
    except (StudyNotFound, StorageError) as error:
        raise ExportError(str(error)) from None
    try:
        number = _choose(study, repository, trial, pick, knee)
    except SelectionError as error:
        raise ExportError(str(error)) from None
    records = {r.trial_number: r for r in repository.trials(study_name)}
    frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in frozen:
        raise ExportError(f"trial = {number}: not in study {study_name!r} (trials 0-{len(frozen) - 1})")
    record = records.get(number)
    if record is None or record.status != "complete":
        state = record.status if record else frozen[number].state.name.lower()
        reason = (record.reason if record else None) or frozen[number].system_attrs.get("fail_reason") or "no measurement"
        raise ExportError(f"trial = {number}: {state}, nothing to export ({reason})")
    recipe = Recipe.from_dict(record.recipe)
    attrs = frozen[number].user_attrs
    identity = study.user_attrs.get(CONFIG_ATTR)
    if identity is None:
        raise ExportError(f"study {study_name!r} has no stored configuration; it was not created by slimtune run")
    study_seed = attrs.get("study_seed", seed)
    if study_seed is None:
        raise ExportError(f"trial = {number}: its seed was not recorded (stored by an older slimtune); "
                          "pass the study's seed (--seed)")
    config = parse_config({**identity, "study": {**identity["study"], "seed": study_seed}}, f"study {study_name!r}", stored=True)
    trial_seed = attrs.get("seed", study_seed + number)
    measured, accuracy_drop, spec = record.measurement, record.accuracy_drop, worker_spec(config, DEFAULT_FACTORY)
    refined_row = chosen_refined(repository, study_name).get(number) if refined else None
    if refined and refined_row is None:
        raise ExportError(f"trial = {number}: has no refined model; run `slimtune refine {study_name} "
                          f"--trial {number} --steps S` first")
    if refined_row is not None:  # rebuilt exactly as refine built it: recipe, seed, worker settings
        recipe, trial_seed = Recipe.from_dict(refined_row.recipe), refined_row.seed
        measured, accuracy_drop = refined_row.measurement, refined_row.accuracy_drop
        spec = refine_spec(config, refined_row.steps, keep_best=selection_score_of(measured) is not None)
    device = config.target.device
    try:
        check_format(fmt, recipe, device)
    except FormatError as error:
        raise ExportError(str(error)) from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ExportError(f"target.device = {device!r}: the study ran on CUDA and there is no CUDA device here")

    log(f"export: trial {number} of {study_name!r} ({recipe.describe(record.measurement)}) as {fmt}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    stages = StageClock(log)
    try:
        with IsolatedEvaluator(spec, log=log, memory_limit_mb=config.budget.memory_limit_mb) as evaluator:
            stages("worker start (workload, baseline)")
            evaluator.load()
            evaluator.prepare()
            info = evaluator.export(recipe, trial_seed, fmt, str(partial), on_stage=stages)
            stages.finish()
    except WorkerFailed as error:
        shutil.rmtree(partial, ignore_errors=True)
        text = str(error)
        if text.startswith("FormatError: "):
            raise ExportError(text.removeprefix("FormatError: ")) from None
        raise ExportFailed(f"export: rebuilding trial {number} failed: {text}") from None
    except BaseException as error:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(error, Exception) and not isinstance(error, (ExportError, ExportFailed)):
            raise ExportFailed(f"export: rebuilding trial {number} failed: {one_line(error)}") from error
        raise

    manifest: dict[str, Any] = {
        "slimtune_export": 1,
        "study": study_name,
        "storage": safe_url(storage_url),
        "trial": number,
        "format": fmt,
        "recipe": recipe.to_dict(),
        "recipe_description": recipe.describe(record.measurement),
        "seed": trial_seed,
        "measured": {k: measured.get(k) for k in (
            "accuracy", "latency_ms", "latency_p95_ms", "peak_memory_mb", "weight_mb", "params", "macs", "batch_size")}
        | {"accuracy_drop": accuracy_drop},
        # the drops with their paired intervals: on the split the search judged (validation), and on
        # the test split, measured once when the study ended (search/holdout.py); None where absent
        "accuracy": accuracy_figures(study, number, measured),
        "workload": {"model": config.workload.model, "data": config.workload.data,
                     "data_root": config.workload.data_root, "input_shape": list(config.workload.input_shape),
                     "validation_share": config.workload.validation_share,
                     "num_classes": info["num_classes"]},
        "input": {"shape": [info["batch"] if info["batch"] != "dynamic" else "N", *config.workload.input_shape],
                  "batch": info["batch"], "dtype": info["dtype"], "memory_format": info["memory_format"]},
        "target": fingerprint(torch.device(device), config.target.threads or torch.get_num_threads()),
        "measure": {"device": device, "threads": config.target.threads, "batch_size": config.workload.batch_sizes[0],
                    "latency_warmup": config.budget.latency_warmup, "latency_repeats": config.budget.latency_repeats},
        "requires": {"torch": torch.__version__}
        | ({"torchao": _version("torchao")} if recipe.quantization != "none" else {})
        | ({"onnxruntime": _version("onnxruntime")} if fmt == "onnx" else {})
        | ({"slimtune": _version("slimtune")} if fmt == "state_dict" else {}),
        "quantized_layers": info["quantized_layers"],
        "quantized_weight_share": info["quantized_weight_share"],
        "rebuilt_accuracy": info["rebuilt_accuracy"],
        "load": _load_code(fmt, info["dtype"], info["memory_format"], list(config.workload.input_shape),
                           config.workload.model),
        "files": file_hashes(partial),
        "file_bytes": file_sizes(partial),
        "weight_bytes": info.get("weight_bytes"),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **({"refined": {"steps": refined_row.steps, "refined_id": refined_row.id,
                        "trial_accuracy": record.measurement["accuracy"]}} if refined_row is not None else {}),
        "verified": False,
        "verification": {"status": "pending"},
    }
    _write_manifest(partial, manifest)
    if out.is_dir():
        out.rmdir()  # checked empty above
    os.replace(partial, out)
    for name in manifest["files"]:
        log(f"wrote {out / name} ({manifest['file_bytes'][name] / 1e6:.3f} MB, sha256 {manifest['files'][name][:12]})")
    if info.get("weight_bytes"):
        log(f"export: {sum(manifest['file_bytes'].values()) / 1e6:.3f} MB of files for "
            f"{info['weight_bytes'] / 1e6:.3f} MB of weights")

    timeout_s = verify_timeout_s or max(300.0, 4 * config.budget.trial_timeout_s)
    log(f"export: verifying in a fresh Python process (at most {timeout_s:g} s) ...")
    stages("verify")
    outcome = verify_in_fresh_process(out, timeout_s)
    stages.finish()
    reason = outcome.get("error")
    verification: dict[str, Any] = {"status": "failed" if reason else "measured", **outcome}
    if not reason:
        difference = outcome["accuracy"] - measured["accuracy"]
        verification["accuracy_difference_pts"] = 100 * difference
        confirmed = repository.confirmations(study_name).get(number)  # the interleaved figure, where there is one
        reference = confirmed["latency_ms"] if confirmed else measured["latency_ms"]
        verification["latency_against"] = "confirmed" if confirmed else "trial"
        verification["latency_ratio"] = outcome["latency_ms"] / reference
        if abs(difference) > ACCURACY_TOLERANCE:
            reason = (f"accuracy {outcome['accuracy']:.4f} in the fresh process vs {measured['accuracy']:.4f} "
                      f"in the trial ({100 * difference:+.2f} points; allowed +-{100 * ACCURACY_TOLERANCE:.1f})")
    verification["status"] = "failed" if reason else "verified"
    if reason:
        verification["reason"] = reason
    manifest["verified"] = reason is None
    manifest["verification"] = verification
    _write_manifest(out, manifest)
    repository.create_schema()  # adds the exports table to a database made before it existed
    repository.record_export(
        study_name, number, format=fmt, path=str(out.resolve()), hashes=manifest["files"], verified=reason is None,
        reason=reason, accuracy=outcome.get("accuracy"), trial_accuracy=measured["accuracy"],
        latency_ms=outcome.get("latency_ms"), latency_ratio=verification.get("latency_ratio"),
    )
    result = ExportResult(out, manifest)
    if reason:
        raise ExportFailed(f"export: verification failed: {reason}; {out} is marked unverified", result)
    log(f"verified: accuracy {outcome['accuracy']:.4f} (trial {measured['accuracy']:.4f}, "
        f"{verification['accuracy_difference_pts']:+.2f} pts); latency {outcome['latency_ms']:.3f} ms at batch "
        f"{outcome['batch_size']} ({outcome['runtime']}) vs {reference:.3f} ms "
        f"{'confirmed' if confirmed else 'in the trial'} "
        f"(ratio {verification['latency_ratio']:.2f})")
    return result


def accuracy_figures(study: Any, number: int, measured: dict[str, Any]) -> dict[str, Any]:
    """The manifest's accuracy block: the trial's validation drops with their intervals, and the
    point's and the baseline's test figures where the study measured them."""
    from slimtune.search.config import TEST_ATTR

    test = study.user_attrs.get(TEST_ATTR) or {}
    # a refined model carries its own test figures (refine scores it there); a trial's are the study's
    point = measured.get("test") or (test.get("points") or {}).get(str(number))
    if not point:
        return {"judged_on": measured.get("judged_on") or None, "test": None}
    baseline = {name: test.get(f"baseline_{name}", point[name] + point[f"{name}_drop"])  # the same examples
                for name in ("accuracy", "balanced_accuracy")}
    return {"judged_on": measured.get("judged_on") or None,
            "test": {**point, "baseline_accuracy": baseline["accuracy"],
                     "baseline_balanced_accuracy": baseline["balanced_accuracy"]}}


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    partial = folder / f".{MANIFEST}.tmp"
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    partial.replace(folder / MANIFEST)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def verify_in_fresh_process(folder: Path, timeout_s: float, command: tuple[str, ...] = VERIFIER) -> dict[str, Any]:
    """Run the verifier (`command` + folder) in a fresh interpreter and its own session, and
    return its JSON answer, or {"error": reason}: "the loader crashed (signal 11, SIGSEGV)"
    when it died by a signal while loading (the verifier prints {"stage": ...} lines as it goes),
    "timed out after N s (while ...)" when it ran past `timeout_s`: then the whole session is
    killed (a verifier's compiler workers too)."""
    process = subprocess.Popen([*command, str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        stdout, stderr = process.communicate()
        return {"error": f"timed out after {timeout_s:g} s (while {_last_stage(stdout)})"}
    lines = stdout.strip().splitlines()
    if process.returncode < 0:
        number, stage = -process.returncode, _last_stage(stdout)
        crashed = f"crashed (signal {number}, {_signal_name(number)})"
        return {"error": f"the loader {crashed}" if stage == LOADING else f"the verifier {crashed} while {stage}"}
    try:
        answer = json.loads(lines[-1])
        if "stage" in answer:
            raise ValueError("no answer after the last stage")
        return answer
    except (IndexError, ValueError):
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"the verifier exited with code {process.returncode}: {tail}"}


def _last_stage(stdout: str | None) -> str:
    """What the verifier was doing: the last {"stage": ...} line it printed."""
    stage = "starting"
    for line in (stdout or "").splitlines():
        try:
            stage = json.loads(line).get("stage", stage)
        except (ValueError, AttributeError):
            continue
    return stage
