"""`slimtune run | worker | launch | pareto | trials | plot | upgrade`. Exit codes: 0 done, 2 bad
input (study file, workload, database, unknown study), 130 interrupted by SIGINT (Ctrl-C), 143
by SIGTERM (the trials finished so far are kept; the same command resumes)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Sequence

from slimtune.storage import DEFAULT_STORAGE, safe_url

from .samplers import SAMPLERS
from .signals import exit_code, handle_signals

EXIT_BAD_INPUT = 2
EXIT_STORAGE_FAILED = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimtune", description=__doc__.split(".")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="create or resume a study from a study file and run it")
    run.add_argument("study_file")
    run.add_argument("--storage", default=DEFAULT_STORAGE, help=f"SQLAlchemy URL (default {DEFAULT_STORAGE})")
    run.add_argument("--n-trials", type=int, help="finished trials the study should have in all")
    run.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    run.add_argument("--sampler", choices=SAMPLERS)
    run.add_argument("--seed", type=int)
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    worker = commands.add_parser("worker", help="join an existing study from any machine (its configuration is in storage)")
    worker.add_argument("study", help="the study's name")
    worker.add_argument("--storage", default=DEFAULT_STORAGE)
    worker.add_argument("--device", help="measure on this device instead of the study's target.device (same type)")
    worker.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    worker.add_argument("--no-progress", action="store_true", help="no progress bar")

    launch = commands.add_parser("launch", help="run N local workers on a study and wait for them")
    launch.add_argument("study", help="a study file (created or resumed first) or the name of a study in --storage")
    launch.add_argument("--storage", default=DEFAULT_STORAGE)
    launch.add_argument("--workers", type=int, required=True)
    launch.add_argument("--gpus", type=lambda text: text.split(","), help="GPU indices, one per worker: 0,1,2")
    launch.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")

    upgrade = commands.add_parser("upgrade", help="upgrade Optuna's and slimtune's tables to this version")
    upgrade.add_argument("--storage", default=DEFAULT_STORAGE)

    for name, text in (("pareto", "the feasible Pareto front of a study"), ("trials", "every trial of a study")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("study")
        sub.add_argument("--storage", default=DEFAULT_STORAGE)
        sub.add_argument("--format", choices=["table", "json", "csv"], default="table")
    plot = commands.add_parser("plot", help="draw the Pareto front to an .html (or, with kaleido, .png/.svg) file")
    plot.add_argument("study")
    plot.add_argument("--storage", default=DEFAULT_STORAGE)
    plot.add_argument("--out", required=True, help="output file: .html, .png or .svg")
    return parser


def _plot(args: argparse.Namespace) -> int:
    from .plots import pareto_figure
    from .report import accuracy_floor, open_study, pareto_front, trials_frame

    study, repository = open_study(args.study, args.storage)
    figure = pareto_figure(
        trials_frame(study, repository), pareto_front(study, repository), f"slimtune: {args.study}",
        accuracy_floor(study, repository),
    )
    if args.out.endswith(".html"):
        figure.write_html(args.out, include_plotlyjs="cdn")
    else:
        figure.write_image(args.out, scale=2)  # needs the optional `kaleido` package and a Chrome
    print(f"wrote {args.out}")
    return 0


def _emit(frame, fmt: str) -> None:
    from .report import format_table, trials_table

    if fmt == "json":
        print(json.dumps(json.loads(frame.to_json(orient="records")), indent=2))
    elif fmt == "csv":
        print(frame.to_csv(index=False), end="")
    else:
        print(format_table(frame) if "speedup_x" in frame else trials_table(frame))


def _run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .runner import run_study

    overrides = {"study.n_trials": args.n_trials, "study.sampler": args.sampler, "study.seed": args.seed}
    config = load_config(args.study_file, overrides)
    # Optuna's per-trial INFO lines and its notes on experimental arguments are noise here:
    # slimtune prints its own line for each failed trial and the front at the end.
    # torchao 0.17 warns on every quantized layer that its int8 tensor classes and configs
    # ("Deprecation: ...", "Config Deprecation: ...") are deprecated.
    _quiet()
    interrupted = None
    try:
        with handle_signals():
            run_study(config, args.storage, timeout=args.timeout, log=print, progress=not args.no_progress)
    except KeyboardInterrupt as error:
        interrupted = error
        print("interrupted: finished trials are kept; run the same command to resume", file=sys.stderr)
    return _front(config.study.name, args.storage, interrupted)


def _quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="(Config )?Deprecation: ", category=UserWarning)


def _front(study_name: str, storage: str, interrupted: KeyboardInterrupt | None = None) -> int:
    """Print the front; the exit code: 130/143 when a signal stopped the run, else 0."""
    from .report import StudyNotFound, format_table, open_study, pareto_front

    try:
        study, repository = open_study(study_name, storage)
    except StudyNotFound:
        if interrupted is None:
            raise
        return exit_code(interrupted)  # stopped before the study existed: nothing to show
    front = pareto_front(study, repository)
    print(f"\nPareto front of {study_name!r}: {len(front)} feasible points, "
          f"{len(study.trials)} trials (storage {safe_url(storage)})")
    print(format_table(front))
    return exit_code(interrupted) if interrupted is not None else 0


def _worker(args: argparse.Namespace) -> int:
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
        print("interrupted: finished trials are kept; run the same command to resume", file=sys.stderr)
        return exit_code(error)
    return 0


def override_device(config, device: str):
    from .config import StudyFileError, parse_config

    if device.split(":")[0] != config.target.device.split(":")[0]:
        raise StudyFileError(f"--device = {device!r}: the study measures on {config.target.device!r}; "
                             "a worker may change the device index only")
    raw = config.model_dump(mode="json")
    raw["target"]["device"] = device
    return parse_config(raw, "--device")


def _launch(args: argparse.Namespace) -> int:
    from .launch import launch
    from .report import open_study

    _quiet()
    try:
        with handle_signals():
            config, codes = launch(args.study, args.storage, args.workers, args.gpus, timeout=args.timeout)
    except KeyboardInterrupt as error:
        print("interrupted: finished trials are kept; run the same command to resume", file=sys.stderr)
        return exit_code(error)
    from slimtune.storage import SlotBook

    study, repository = open_study(config.study.name, args.storage)
    usage = SlotBook(repository.engine).usage(config.study.name)
    code = _front(config.study.name, args.storage)
    if usage.done >= usage.n_trials:
        return code
    print(f"slimtune: study {config.study.name!r} has {usage.done} of {usage.n_trials} trials; "
          "run the same command to go on", file=sys.stderr)
    return max((c for c in codes if c > 0), default=1)


def _upgrade(args: argparse.Namespace) -> int:
    from slimtune.storage.migrations import upgrade_storage

    done = upgrade_storage(args.storage)
    print("\n".join(done) if done else f"{safe_url(args.storage)}: already up to date")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from sqlalchemy.exc import DBAPIError

    from slimtune.objectives import WorkloadError
    from slimtune.storage import StorageError

    from .config import StudyFileError
    from .report import StudyNotFound

    try:
        if args.command == "run":
            return _run(args)
        if args.command == "worker":
            return _worker(args)
        if args.command == "launch":
            return _launch(args)
        if args.command == "upgrade":
            return _upgrade(args)
        if args.command == "plot":
            return _plot(args)
        from .report import open_study, pareto_front, trials_frame

        study, repository = open_study(args.study, args.storage)
        _emit(pareto_front(study, repository) if args.command == "pareto" else trials_frame(study, repository), args.format)
        return 0
    except (StudyFileError, WorkloadError, StorageError, StudyNotFound) as error:
        print(f"slimtune: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DBAPIError as error:  # the database went away mid-run; its trial fails as lost later
        reason = str(error.orig or error).strip().splitlines()[0] if str(error.orig or error).strip() else type(error).__name__
        print(f"slimtune: error: storage: the database failed during the run: {reason}", file=sys.stderr)
        return EXIT_STORAGE_FAILED


if __name__ == "__main__":
    sys.exit(main())
