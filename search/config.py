"""The study file: one TOML file that says everything a study needs, validated before anything runs.

Every error is one line naming the file, the field, the value and what is allowed, so a user
can fix it without reading a traceback; nothing is created when the file is invalid.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, ValidationInfo, create_model, field_validator,
    model_validator,
)

from slimtune.objectives import OBJECTIVE_NAMES
from slimtune.spaces import SearchSpace
from slimtune.spaces.registry import study_fields
from slimtune.spaces.runtime import NEEDS_CUDA, RUNTIME_CHOICES

from slimtune.search.samplers import SAMPLERS

#: the Optuna study user attribute that keeps `StudyConfig.identity()`
CONFIG_ATTR = "slimtune_config"
#: the one that keeps the whole validated study file, so `slimtune worker` needs no file
STUDY_FILE_ATTR = "slimtune_study_file"
#: the validation split's facts (share, size, seed, digest of its rows), stored when the study is created
VALIDATION_ATTR = "slimtune_validation"
#: the front and the baseline measured on the test split when the search ended (search/holdout.py)
TEST_ATTR = "slimtune_test"


class StudyFileError(ValueError):
    """An invalid study file or override; the message is the one line to show."""


class _Section(BaseModel):
    # a string under a field is its description: docs/study-file.md is generated from them
    # (`python -m slimtune.search.study_file_doc`), and the HTTP API's schema shows them
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class StopWhen(_Section):
    """End the study once the front stops improving (search/stopping.py says how)."""

    hypervolume_gain_below: float = Field(gt=0.0, lt=1.0)
    """Stop when the hypervolume rose by less than this fraction (0.005 = 0.5%) ..."""
    over_trials: PositiveInt
    """... over the last this many finished trials (failed ones count)."""


class StudySection(_Section):
    """The study: its name in the database and how it searches."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=200)
    """The study's name in the database; the commands take it as STUDY."""
    sampler: Literal[SAMPLERS] = "tpe"  # type: ignore[valid-type]
    """The Optuna sampler (`--sampler` overrides); docs/search.md says why TPE is the default."""
    n_trials: PositiveInt = 30
    """Trials that finish with a result (complete, failed, stopped), however many workers run the study
    (`--n-trials` overrides)."""
    seed: int = Field(0, ge=0, lt=2**31)
    """Seeds the sampler; trial N fine-tunes with seed + N (`--seed` overrides). Below 2**31: Optuna's
    samplers take seed + trials so far, which numpy wants below 2**32."""
    stop_when: StopWhen | None = None
    """End the study early once the front stops improving, e.g. `{ hypervolume_gain_below = 0.005,
    over_trials = 10 }`; absent: run every trial."""


class TargetSection(_Section):
    """The device the study measures on, and how the deployed model may be executed there."""

    device: str = "cpu"
    """`cpu`, `cuda` or `cuda:N`."""
    threads: PositiveInt | None = None
    """CPU threads of the trial worker, which is pinned to that many cores on a CPU target; absent:
    torch's default."""
    runtimes: Annotated[list[Literal[RUNTIME_CHOICES]], Field(min_length=1)] | None = None  # type: ignore[valid-type]
    """The runtimes the search may choose (the runtime knob's choices); absent: every runtime the
    target supports (the capability probe keeps what runs there, the target screen what pays,
    dropping a compile that fails or takes too long with its reason); `cudagraphs` and
    `compile+cudagraphs` need a CUDA device."""

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
            raise ValueError("must be 'cpu', 'cuda' or 'cuda:N'")
        return value

    @field_validator("runtimes")
    @classmethod
    def _runtimes_for_device(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return value
        needs_cuda = [runtime for runtime in value if runtime in NEEDS_CUDA]
        if info.data.get("device") == "cpu" and needs_cuda:
            raise ValueError(f"{needs_cuda[0]!r} needs a CUDA device; allowed on cpu: eager, compile")
        if len(set(value)) != len(value):
            raise ValueError("must be a list without repeats")
        return value


class WorkloadSection(_Section):
    """The model, its data and its input (objectives/workloads.py)."""

    model: str = Field(min_length=1)
    """`slimtune:NAME` (built in), `torchvision:NAME`, `hf:minilm` or `hf:PATH` (a Hugging Face
    encoder checkpoint folder, fine-tuned as a classifier), or `package.module:function` called as
    `function(num_classes=..., input_shape=...)`."""
    data: str = Field(min_length=1)
    """`sklearn:digits`, `torchvision:DATASET` (from `data_root`, never downloaded),
    `imagefolder:PATH`, `elpv`, `elpv:4class`, `elpv:flips`, `package.module:function` returning
    `(train, val, num_classes)`; text (with an `hf:` model): `reviews:imdb`, `reviews:rotten_tomatoes`,
    `textcsv:PATH`, each with `:train=N`, `:test=N`, `:seed=N`."""
    data_root: str | None = None
    """Where the data set's files are (a path relative to the study file is taken from there)."""
    input_shape: list[PositiveInt] = Field(min_length=1, max_length=3)
    """One input's shape: `[channels, height, width]` for images, `[seq_len]` (token ids) for text."""
    batch_sizes: list[PositiveInt] = Field(default=[64], min_length=1)
    """The batch sizes latency is measured at; the first is the one the objectives use."""
    validation_share: float | None = Field(default=0.15, gt=0.0, le=0.5)
    """The share of the training data carved as the validation split (stratified by label, the
    same on every run of the study; at least 100 examples where the training data has 300):
    trials fine-tune on the rest and are judged on it. The data set's held-out split is the test
    split, read once when the search has ended (docs/measurement.md). (A study stored before this
field existed has none: its trials were judged on the held-out split.)"""

    @field_validator("input_shape")
    @classmethod
    def _input_shape(cls, value: list[int]) -> list[int]:
        if len(value) == 2:
            raise ValueError("must be [channels, height, width] (images) or [seq_len] (text)")
        return value


class BaselineSection(_Section):
    """The baseline (trial 0 and the distillation teacher): loaded from a checkpoint, or trained once
    and cached."""

    checkpoint: str | None = None
    """A trained model's weights to start from; absent: train the baseline (cached by content)."""
    epochs: PositiveInt = 20
    """Training epochs when there is no checkpoint."""
    batch_size: PositiveInt = 64
    """Training batch size."""
    lr: PositiveFloat = 3e-3
    """Training learning rate."""


class ConstraintsSection(_Section):
    """Feasible: accuracy within `max_accuracy_drop` of the baseline's, and balanced accuracy
    (mean per-class recall: the figure that counts on imbalanced data) within
    `max_balanced_accuracy_drop` of the baseline's; either, both or neither (fractions)."""

    max_accuracy_drop: float | None = Field(default=None, ge=0.0, le=1.0)
    """Top-1 accuracy may fall this far below the baseline's (0.01 = one point); absent: no bound."""
    max_balanced_accuracy_drop: float | None = Field(default=None, ge=0.0, le=1.0)
    """Balanced accuracy may fall this far below the baseline's; absent: no bound."""
    confidence: float | None = Field(default=None, ge=0.5, lt=1.0)
    """A point is feasible only when the upper end of the `confidence` interval (e.g. 0.95) of its
    drop on the validation split is within the allowed drop (paired with the baseline on the same
    examples, docs/measurement.md); absent: the drop's point estimate decides."""


class RefineSection(_Section):
    """After the search, fine-tune `top` points of the feasible front for `steps` steps each
    and measure them again (`slimtune refine` does the same on demand). `order`: which points
    come first: "fastest" (the ones likely shipped), or "most_pruned" (the most to recover).
    `seeds`: runs per point; the best on the held-back training images is the one kept.
    `control`: each seed also re-runs the search's short fine-tune under the same held-back
    split, for a comparison the front's selection does not bias (and a candidate to keep)."""

    top: PositiveInt = 3
    """How many front points to refine."""
    steps: PositiveInt = 2000
    """Fine-tuning steps of each refined run."""
    order: Literal["fastest", "most_pruned"] = "fastest"
    """Which points come first: the fastest (the ones likely shipped) or the most pruned (the most to
    recover)."""
    seeds: PositiveInt = 1
    """Runs per point; the one best on the held-back training images is kept."""
    control: bool = False
    """Also re-run the search's short fine-tune under each seed's held-back split, for an unbiased
    comparison."""


def _range(low: float, high: float):
    def check(value: list[float] | None) -> list[float] | None:
        if value is None or value == []:  # absent: the whole range; []: not searched
            return value
        if len(value) != 2 or value[0] > value[1]:
            raise ValueError("must be [low, high] with low <= high")
        if value[0] < low or value[1] > high:
            raise ValueError(f"must lie within [{low}, {high}]")
        return value

    return check


def _distinct(value: list[Any] | None) -> list[Any] | None:
    if value is None:
        return value
    if not value or len(set(value)) != len(value):
        raise ValueError("must be a non-empty list without repeats")
    return value


def _space_section() -> type[_Section]:
    """`[space]`: one entry per study field of every registered knob (the runtime's choices
    are `[target] runtimes`). An absent field means every value (a range: its whole bounds;
    choices: all the knob allows, of which the capability probe keeps what the target runs and
    the target screen what pays there); `[]` turns a range off; a single choice is fixed."""
    fields: dict[str, Any] = {}
    validators: dict[str, Any] = {}
    for knob_field in study_fields():
        name = knob_field.name
        if name == "runtime":
            continue
        described = Field(default=None, description=knob_field.help or None)
        if knob_field.kind == "range":
            fields[name] = (list[float] | None, described)
            validators[f"_check_{name}"] = field_validator(name)(_range(*knob_field.bounds))
        else:
            fields[name] = (list[Literal[knob_field.allowed]] | None, described)  # type: ignore[valid-type]
            validators[f"_check_{name}"] = field_validator(name)(_distinct)
    return create_model("SpaceSection", __base__=_Section, __validators__=validators,
                        __doc__=_space_section.__doc__, **fields)


SpaceSection = _space_section()


class BudgetSection(_Section):
    """What one trial may spend: fine-tuning, time, memory, and how firmly latency is measured
    (docs/measurement.md)."""

    finetune_steps: int = Field(default=200, ge=0)
    """Fine-tuning (with distillation where sampled) steps after pruning."""
    finetune_lr: PositiveFloat = 1e-3
    """Fine-tuning learning rate."""
    trial_timeout_s: PositiveFloat = 60.0
    """A trial running longer is stopped and recorded with the reason."""
    memory_limit_mb: PositiveFloat | None = None
    """The worker process is killed (and its trial failed) past this resident memory; absent: no limit."""
    latency_warmup: int = Field(default=10, ge=0)
    """Untimed forwards before timing."""
    latency_repeats: PositiveInt = 50
    """The least number of timed samples; more are taken until the median's 95% interval is within
    +-latency_rel_tol or latency_max_s passes."""
    latency_rel_tol: float = Field(default=0.01, ge=0.0, le=0.5)
    """The relative half-width of the median's 95% interval to reach (0 = exactly latency_repeats
    samples)."""
    latency_max_s: PositiveFloat = 3.0
    """Time cap of one latency measurement."""
    confirm_rounds: int = Field(default=6, ge=0, le=100)
    """Interleaved rounds re-measuring the baseline and the front when the study ends (0 = none)."""


class ScreenSection(_Section):
    """The target screen (search/screen/): before the first trial, measure every deployment
    setting the space allows without fine-tuning, and search only the ones that pay.

    `enabled` absent: on when the space holds more than one deployment setting. `budget_s`: the
    screen's wall time (settings it could not measure in time are judged on an estimate, said
    so); absent: a quarter of the run's `--timeout`, or 180 s. `setting_timeout_s`: the hard
    limit on one setting (default: the trial timeout, at most 120 s). `margin`: how much better another setting must be to drop one (0.05 = 5%).
    """

    enabled: bool | None = None
    """Absent: on when the space holds more than one deployment setting."""
    budget_s: PositiveFloat | None = None
    """The screen's wall time; settings it could not measure in time are judged on an estimate. Absent:
    a quarter of the run's `--timeout`, or 180 s."""
    setting_timeout_s: PositiveFloat | None = None
    """The hard limit on one setting; absent: the trial timeout, at most 120 s."""
    margin: float = Field(default=0.05, ge=0.0, lt=1.0)
    """How much better another setting must be to drop one (0.05 = 5%)."""


class WorkersSection(_Section):
    """Many workers on one database: Optuna heartbeats, and retries of trials whose worker died.

    A running trial records a heartbeat every `heartbeat_interval_s`; one silent for
    `grace_period_s` is failed as lost and retried (at most `max_retries` times per recipe).
    Keep the grace period well above the longest database stall: a live trial judged dead keeps
    its measurement, but is measured again.
    """

    heartbeat_interval_s: PositiveInt = 10
    """How often a running trial records a heartbeat."""
    grace_period_s: PositiveInt = 60
    """A trial silent this long is failed as lost and retried; at least twice heartbeat_interval_s.
    Left out, it is 60 s or six heartbeats, whichever is longer.
    Keep it well above the longest database stall: a live trial judged dead keeps its measurement,
    but is measured again."""
    max_retries: int = Field(default=2, ge=0)
    """Retries of one recipe whose worker died."""

    @model_validator(mode="before")
    @classmethod
    def _grace_follows_the_heartbeat(cls, data: Any) -> Any:
        # a slower heartbeat alone must not make the default grace period an error
        if isinstance(data, dict) and "grace_period_s" not in data:
            interval = data.get("heartbeat_interval_s")
            if isinstance(interval, int) and not isinstance(interval, bool) and interval > 10:
                data = {**data, "grace_period_s": 6 * interval}
        return data

    @field_validator("grace_period_s")
    @classmethod
    def _grace(cls, value: int, info: ValidationInfo) -> int:
        interval = info.data.get("heartbeat_interval_s")
        if interval is not None and value < 2 * interval:
            raise ValueError(f"must be at least twice heartbeat_interval_s ({2 * interval})")
        return value


DEFAULT_OBJECTIVES = {"latency_ms": "minimize", "peak_memory_mb": "minimize", "accuracy": "maximize"}


class StudyConfig(_Section):
    study: StudySection
    target: TargetSection = TargetSection()
    workload: WorkloadSection
    baseline: BaselineSection = BaselineSection()
    objectives: dict[str, Literal["minimize", "maximize"]] = Field(default_factory=lambda: dict(DEFAULT_OBJECTIVES))
    """What the study optimises: `objective = "minimize"` or `"maximize"` per line."""
    constraints: ConstraintsSection = ConstraintsSection()
    space: SpaceSection = SpaceSection()
    budget: BudgetSection = BudgetSection()
    screen: ScreenSection = ScreenSection()
    workers: WorkersSection = WorkersSection()
    refine: RefineSection | None = None
    """Absent: no refine after the search."""

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError(f"name at least one objective; allowed: {', '.join(OBJECTIVE_NAMES)}")
        unknown = [name for name in value if name not in OBJECTIVE_NAMES]
        if unknown:
            raise ValueError(f"unknown objective {unknown[0]!r}; allowed: {', '.join(OBJECTIVE_NAMES)}")
        return value


    def search_space(self) -> SearchSpace:
        """The space as the file states it: an absent field is every value, `[]` a range off."""
        values: dict[str, Any] = {}
        for knob_field in study_fields():
            value = self.target.runtimes if knob_field.name == "runtime" else getattr(self.space, knob_field.name)
            if value is None:
                value = knob_field.bounds if knob_field.kind == "range" else knob_field.allowed
            values[knob_field.name] = tuple(value) if value else None
        return SearchSpace(**values, finetune_steps=self.budget.finetune_steps)

    def identity(self) -> dict[str, Any]:
        """What must not change when a study is resumed: everything that decides its results
        (the screen's settings do not: a study screens once and keeps what it stored; how firmly
        latency is measured may change on resume, and studies made before those fields resume)."""
        identity = self.model_dump(mode="json", exclude={
            "study": {"n_trials", "sampler", "seed", "stop_when"}, "workers": True, "refine": True, "screen": True,
            "budget": {"latency_rel_tol", "latency_max_s", "confirm_rounds"},
        })
        if identity["constraints"].get("max_balanced_accuracy_drop") is None:  # as studies stored before it existed
            identity["constraints"].pop("max_balanced_accuracy_drop", None)
        if identity["workload"].get("validation_share") is None:  # as studies stored before the validation split
            identity["workload"].pop("validation_share", None)
        if identity["constraints"].get("confidence") is None:  # as studies stored before it existed
            identity["constraints"].pop("confidence", None)
        if identity["space"].get("drop_layers") is None:  # as studies stored before layer dropping
            identity["space"].pop("drop_layers", None)
        return identity


def _allowed_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc[:-1]:
        annotation = model.model_fields[str(part)].annotation if str(part) in model.model_fields else None
        annotation = next((a for a in get_args(annotation) if isinstance(a, type)), annotation)  # X | None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def field_path(loc: tuple[Any, ...]) -> str:
    """`section.field`, with any part a user typed that is not a plain name quoted (`target.'\\n'`),
    so a key holding a newline or a dot cannot break the one-line message or pass for a path."""
    return ".".join(str(part) if re.fullmatch(r"[A-Za-z0-9_]+", str(part)) else repr(str(part)) for part in loc)


def format_validation_error(error: ValidationError, source: str) -> str:
    """The first problem as one line: `file: field = value: what is allowed`."""
    first = error.errors()[0]
    loc = tuple(first["loc"])
    field = field_path(loc) or "(file)"
    if first["type"] == "extra_forbidden":
        allowed = _allowed_fields(StudyConfig, loc)
        return f"{source}: {field}: unknown field; allowed: {', '.join(allowed)}"
    if first["type"] == "missing":
        return f"{source}: {field}: required field is missing"
    message = first["msg"].removeprefix("Value error, ")
    if isinstance(first.get("input"), dict):  # a whole section: its fields say more than its value
        return f"{source}: {field}: {message}"
    return f"{source}: {field} = {first.get('input')!r}: {message}"


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Relative paths in a study file are relative to the file, so it works from any directory."""

    def resolve(path: str) -> str:
        return path if os.path.isabs(path) else str((base / path).resolve())

    workload = raw.get("workload")
    if isinstance(workload, dict):
        if isinstance(workload.get("data_root"), str):
            workload["data_root"] = resolve(workload["data_root"])
        data = workload.get("data")
        if isinstance(data, str) and data.startswith("imagefolder:"):
            workload["data"] = "imagefolder:" + resolve(data.removeprefix("imagefolder:"))
    baseline = raw.get("baseline")
    if isinstance(baseline, dict) and isinstance(baseline.get("checkpoint"), str):
        baseline["checkpoint"] = resolve(baseline["checkpoint"])


def parse_config(raw: dict[str, Any], source: str = "study", *, stored: bool = False) -> StudyConfig:
    """`stored`: `raw` is a study's stored configuration, where an absent `validation_share` means
    the study was made before the validation split (its trials were judged on the held-out split),
    not the default."""
    workload = raw.get("workload")
    if stored and isinstance(workload, dict) and "validation_share" not in workload:
        raw = {**raw, "workload": {**workload, "validation_share": None}}
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as error:
        raise StudyFileError(format_validation_error(error, source)) from None


def load_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read and validate a study file; `overrides` maps 'section.field' to a value (CLI flags)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise StudyFileError(f"{path}: study file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise StudyFileError(f"{path}: not valid TOML: {error}") from None
    for dotted, value in (overrides or {}).items():
        if value is not None:
            section, _, name = dotted.partition(".")
            if isinstance(raw.setdefault(section, {}), dict):  # else validation names the section
                raw[section][name] = value
    _resolve_paths(raw, path.parent)
    return parse_config(raw, str(path))


def names_a_study_file(study: str) -> bool:
    """Whether a command's STUDY argument is a study file rather than a study's name."""
    return study.endswith(".toml") or Path(study).is_file()


def study_name(study: str) -> str:
    """The study a command's STUDY argument means: its name, or the name in the study file it
    names (`slimtune pareto studies/digits.toml` after `slimtune run studies/digits.toml`)."""
    return load_config(study).study.name if names_a_study_file(study) else study
