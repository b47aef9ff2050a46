"""`slimtune run | pareto | trials | plot | export`. Exit codes: 0 done, 2 bad input (study file, workload,
database, unknown study), 130 interrupted (the trials finished so far are kept)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Sequence

from slimtune.storage import DEFAULT_STORAGE

from . import export
from .samplers import SAMPLERS

EXIT_BAD_INPUT = 2


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
    import optuna

    from .config import load_config
    from .report import format_table, open_study, pareto_front
    from .runner import run_study

    overrides = {"study.n_trials": args.n_trials, "study.sampler": args.sampler, "study.seed": args.seed}
    config = load_config(args.study_file, overrides)
    # Optuna's per-trial INFO lines and its notes on experimental arguments are noise here:
    # slimtune prints its own line for each failed trial and the front at the end.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # torchao 0.17 warns on every quantized layer that its int8 tensor classes and configs
    # ("Deprecation: ...", "Config Deprecation: ...") are deprecated.
    warnings.filterwarnings("ignore", message="(Config )?Deprecation: ", category=UserWarning)
    interrupted = False
    try:
        run_study(config, args.storage, timeout=args.timeout, log=print, progress=not args.no_progress)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: finished trials are kept; run the same command to resume", file=sys.stderr)
    study, repository = open_study(config.study.name, args.storage)
    front = pareto_front(study, repository)
    print(f"\nPareto front of {config.study.name!r}: {len(front)} feasible points, "
          f"{len(study.trials)} trials (storage {args.storage})")
    print(format_table(front))
    return 130 if interrupted else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from slimtune.objectives import WorkloadError
    from slimtune.storage import StorageError

    from .config import StudyFileError
    from .report import StudyNotFound

    try:
        if args.command == "run":
            return _run(args)
        if args.command == "plot":
            return _plot(args)
        if args.command == "export":
            return export.run_command(args)
        from .report import open_study, pareto_front, trials_frame

        study, repository = open_study(args.study, args.storage)
        _emit(pareto_front(study, repository) if args.command == "pareto" else trials_frame(study, repository), args.format)
        return 0
    except (StudyFileError, WorkloadError, StorageError, StudyNotFound) as error:
        print(f"slimtune: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
