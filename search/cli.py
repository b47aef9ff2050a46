"""`slimtune run | worker | launch | pareto | trials | plot | export | report | serve | upgrade`.
Exit codes: 0 done, 2 bad input (study file, workload, database, unknown study), 130 interrupted by
SIGINT (Ctrl-C), 143 by SIGTERM (the trials finished so far are kept; the same command resumes)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Sequence

from slimtune.storage import DEFAULT_STORAGE, safe_url

from . import export
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
    run.add_argument("--warm-start", metavar="STUDY", help="enqueue the feasible front of STUDY as the first trials of a new study")
    run.add_argument("--warm-storage", metavar="URL", help="where the --warm-start study is (default: --storage)")

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
    export.add_parser(commands)
    plot = commands.add_parser("plot", help="draw the Pareto front to an .html (or, with kaleido, .png/.svg) file")
    plot.add_argument("study")
    plot.add_argument("--storage", default=DEFAULT_STORAGE)
    plot.add_argument("--out", required=True, help="output file: .html, .png or .svg")

    report = commands.add_parser("report", help="the study's dashboard page as one self-contained .html file")
    report.add_argument("study")
    report.add_argument("--storage", default=DEFAULT_STORAGE)
    report.add_argument("-o", "--out", required=True, help="output .html file")

    serve = commands.add_parser("serve", help="the dashboard and JSON API over HTTP (needs the 'serve' extra)")
    serve.add_argument("--storage", default=DEFAULT_STORAGE)
    serve.add_argument("--host", default="127.0.0.1", help="without SLIMTUNE_API_TOKEN only loopback is allowed")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--export-root", default="exports", help="exports requested over HTTP go under this folder")
    serve.add_argument("--data-dir", help="studies created over HTTP may name data and checkpoints under this folder")
    return parser


def _plot(args: argparse.Namespace) -> int:
    from .plots import hypervolume_history, pareto_figure
    from .report import accuracy_floor, open_study, pareto_front, trials_frame

    study, repository = open_study(args.study, args.storage)
    figure = pareto_figure(
        trials_frame(study, repository), pareto_front(study, repository), f"slimtune: {args.study}",
        accuracy_floor(study, repository), hypervolume_history(repository.snapshots(args.study)),
    )
    if args.out.endswith(".html"):
        figure.write_html(args.out, include_plotlyjs="cdn")
    else:
        figure.write_image(args.out, scale=2)  # needs the optional `kaleido` package and a Chrome
    print(f"wrote {args.out}")
    return 0


def _emit(frame, fmt: str, footer: str | None = None) -> None:
    from .report import format_table, trials_table

    if fmt == "json":
        print(json.dumps(json.loads(frame.to_json(orient="records")), indent=2))
    elif fmt == "csv":
        print(frame.to_csv(index=False), end="")
    else:
        print(format_table(frame) if "speedup_x" in frame else trials_table(frame))
        if footer:
            print(footer)


def _run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .runner import run_study
    from .warm_start import WarmStart

    overrides = {"study.n_trials": args.n_trials, "study.sampler": args.sampler, "study.seed": args.seed}
    config = load_config(args.study_file, overrides)
    # Optuna's per-trial INFO lines and its notes on experimental arguments are noise here:
    # slimtune prints its own line for each failed trial and the front at the end.
    # torchao 0.17 warns on every quantized layer that its int8 tensor classes and configs
    # ("Deprecation: ...", "Config Deprecation: ...") are deprecated.
    _quiet()
    interrupted = None
    try:
        warm_start = WarmStart(args.warm_start, args.warm_storage) if args.warm_start else None
        with handle_signals():
            run_study(config, args.storage, timeout=args.timeout, log=print, progress=not args.no_progress,
                      warm_start=warm_start)
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
    """Print the front and its hypervolume; the exit code: 130/143 when a signal stopped the run, else 0."""
    from .hypervolume import hypervolume_line
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
    print(hypervolume_line(study))
    return exit_code(interrupted) if interrupted is not None else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "warm_storage", None) and not args.warm_start:
        parser.error("--warm-storage needs --warm-start STUDY")
    from sqlalchemy.exc import DBAPIError

    from slimtune.objectives import WorkloadError
    from slimtune.storage import StorageError

    from .config import StudyFileError
    from .report import StudyNotFound

    try:
        if args.command == "run":
            return _run(args)
        if args.command in ("worker", "launch", "upgrade"):  # many workers: search/commands.py
            from . import commands

            return getattr(commands, args.command)(args)
        if args.command == "plot":
            return _plot(args)
        if args.command == "export":
            return export.run_command(args)
        if args.command == "report":
            from .html_report import write_report

            print(f"wrote {write_report(args.study, args.storage, args.out)}")
            return 0
        if args.command == "serve":
            from .serve import serve

            return serve(args)
        from .hypervolume import hypervolume_line
        from .report import open_study, pareto_front, trials_frame

        study, repository = open_study(args.study, args.storage)
        if args.command == "pareto":
            _emit(pareto_front(study, repository), args.format, hypervolume_line(study))
        else:
            _emit(trials_frame(study, repository), args.format)
        return 0
    except (StudyFileError, WorkloadError, StorageError, StudyNotFound) as error:
        # The messages quote what a user typed; this keeps the promise of one line even where
        # some message did not (a control character in a path or a library's text).
        message = str(error).replace("\r", "\\r").replace("\n", "\\n")
        print(f"slimtune: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DBAPIError as error:  # the database went away mid-run; its trial fails as lost later
        reason = str(error.orig or error).strip().splitlines()[0] if str(error.orig or error).strip() else type(error).__name__
        print(f"slimtune: error: storage: the database failed during the run: {reason}", file=sys.stderr)
        return EXIT_STORAGE_FAILED


if __name__ == "__main__":
    sys.exit(main())
