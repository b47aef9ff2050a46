"""`slimtune worker | launch | upgrade`: the many-workers commands of the CLI (cli.py parses the
arguments and turns the errors raised here into one line and exit code 2)."""

from __future__ import annotations

import argparse
import sys

from .cli import _front, _quiet
from .config import StudyConfig, StudyFileError, parse_config
from .signals import exit_code, handle_signals

INTERRUPTED = "interrupted: finished trials are kept; run the same command to resume"


def worker(args: argparse.Namespace) -> int:
    """Join an existing study with the configuration stored in it; run trials until the study
    has its n_trials (waiting while other workers still run some)."""
    from .runner import run_study
    from .workers import stored_config, study_is_done

    _quiet()
    config = stored_config(args.study, args.storage)
    if study_is_done(config.study.name, args.storage):  # before loading data and models for nothing
        print(f"study {config.study.name!r} already has its {config.study.n_trials} finished trials")
        return 0
    if args.device is not None:
        config = override_device(config, args.device)
    try:
        with handle_signals():
            run_study(config, args.storage, timeout=args.timeout, log=print, progress=not args.no_progress, join=True)
    except KeyboardInterrupt as error:
        print(INTERRUPTED, file=sys.stderr)
        return exit_code(error)
    return 0


def override_device(config: StudyConfig, device: str) -> StudyConfig:
    """`worker --device`: another index of the same kind of device (launch --gpus passes `cuda`)."""
    if device.split(":")[0] != config.target.device.split(":")[0]:
        raise StudyFileError(f"--device = {device!r}: the study measures on {config.target.device!r}; "
                             "a worker may change the device index only")
    raw = config.model_dump(mode="json")
    raw["target"]["device"] = device
    return parse_config(raw, "--device")


def launch(args: argparse.Namespace) -> int:
    """Prepare the study, run N workers, print the front. 0 when the study has its n_trials; else
    the workers' worst exit code (1 when they were killed)."""
    from slimtune.storage import SlotBook

    from .launch import launch as run_workers
    from .report import open_study

    _quiet()
    try:
        with handle_signals():
            config, codes = run_workers(args.study, args.storage, args.workers, args.gpus, timeout=args.timeout)
    except KeyboardInterrupt as error:
        print(INTERRUPTED, file=sys.stderr)
        return exit_code(error)
    study, repository = open_study(config.study.name, args.storage)
    usage = SlotBook(repository.engine).usage(config.study.name)
    repository.engine.dispose()
    code = _front(config.study.name, args.storage)
    if usage.done >= usage.n_trials:
        return code
    print(f"slimtune: study {config.study.name!r} has {usage.done} of {usage.n_trials} trials; "
          "run the same command to go on", file=sys.stderr)
    return max((c for c in codes if c > 0), default=1)


def upgrade(args: argparse.Namespace) -> int:
    from slimtune.storage import safe_url
    from slimtune.storage.migrations import upgrade_storage

    done = upgrade_storage(args.storage)
    print("\n".join(done) if done else f"{safe_url(args.storage)}: already up to date")
    return 0
