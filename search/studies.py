"""Create a study in storage without running it: what `POST /api/studies` does before workers
are launched on it.

It makes the same checks and leaves the same rows as `run_study` before its first trial
(device, workload, capability probe, slimtune's tables, the Optuna study with its metric names
and configuration, the baseline enqueued as trial 0), so `slimtune run` with the same file, or
workers, resume it as if they had created it. Nothing is written when a check fails.
"""

from __future__ import annotations

import optuna
import torch

from slimtune.objectives import load_workload
from slimtune.objectives.workloads import check_quantization
from slimtune.spaces import probe
from slimtune.storage import Repository, connect, optuna_storage, safe_url

from slimtune.search.config import CONFIG_ATTR, VALIDATION_ATTR, StudyConfig, StudyFileError
from slimtune.search.samplers import make_sampler

#: the whole validated study file (JSON), so workers can join a study that has no file on disk
STUDY_FILE_ATTR = "slimtune_study_file"
#: the finished trials the last run asked for: what "finished" means to the dashboard
N_TRIALS_ATTR = "slimtune_n_trials"


class StudyExists(StudyFileError):
    """A study of that name is already in the storage."""


def create_study(config: StudyConfig, storage_url: str) -> optuna.Study:
    """Create `config.study.name` in `storage_url`; raises `StudyExists` when it is there already,
    `StudyFileError` / `WorkloadError` / `StorageError` (one line, naming the field) when the
    configuration cannot run on this machine."""
    device = torch.device(config.target.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StudyFileError(f"target.device = {config.target.device!r}: no CUDA device here; allowed: cpu")
    workload = load_workload(config.workload.model, config.workload.data, tuple(config.workload.input_shape),
                             config.workload.data_root, config.workload.validation_share)
    check_quantization(workload, config.search_space().quantization)
    engine = connect(storage_url)
    repository = Repository(engine)
    repository.check_compatible()
    storage = optuna_storage(storage_url)
    if config.study.name in optuna.get_all_study_names(storage):
        raise StudyExists(f"study.name = {config.study.name!r}: a study of that name is already in {safe_url(storage_url)!r}")
    space, removals = probe(config.search_space(), device, tuple(config.workload.input_shape), workload.make_model())

    repository.create_schema()
    study = optuna.create_study(
        study_name=config.study.name, storage=storage, directions=list(config.objectives.values()),
        sampler=make_sampler(config.study.sampler, config.study.seed, config.study.n_trials),
    )
    study.set_metric_names(list(config.objectives))
    study.set_user_attr(CONFIG_ATTR, config.identity())
    study.set_user_attr(STUDY_FILE_ATTR, config.model_dump(mode="json"))
    study.set_user_attr(N_TRIALS_ATTR, config.study.n_trials)
    study.set_user_attr("probe_removed", [str(r) for r in removals])
    study.set_user_attr(VALIDATION_ATTR, workload.data.validation)
    study.enqueue_trial(space.baseline_params(), user_attrs={"baseline": True})
    return study
