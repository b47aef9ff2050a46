"""`slimtune run | worker | launch | confirm | pareto | trials | screen | plot | export | refine | report | serve | upgrade`: the
parser and the dispatch; each command is one function in search/commands.py.
Exit codes: 0 done, 2 bad input (study file, workload, database, unknown study; `--verbose` adds
the traceback, e.g. of a user's model or data factory that raised), 130 interrupted by
SIGINT (Ctrl-C), 143 by SIGTERM (the trials finished so far are kept; the same command resumes),
124 when `run --timeout` ended the run before its trials could start (a run whose trials the
timeout ended exits 0)."""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Sequence

from slimtune.objectives.artifacts import FORMATS
from slimtune.storage import DEFAULT_STORAGE

from slimtune.search.samplers import SAMPLERS

EXIT_BAD_INPUT = 2
EXIT_STORAGE_FAILED = 1
STUDY_HELP = "the study's name, or the study file it was run from"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimtune", description=__doc__.split(".")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="create or resume a study from a study file and run it")
    run.add_argument("study_file")
    run.add_argument("--storage", default=DEFAULT_STORAGE, help=f"SQLAlchemy URL (default {DEFAULT_STORAGE})")
    run.add_argument("--n-trials", type=int, help="finished trials the study should have in all")
    run.add_argument("--timeout", type=float, metavar="SECONDS",
                     help="end the whole run (baseline, screen, trials, confirmation) within this many seconds; "
                          "a trial still running then is interrupted and the same command resumes it")
    run.add_argument("--sampler", choices=SAMPLERS)
    run.add_argument("--seed", type=int)
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--warm-start", metavar="STUDY", help="enqueue the feasible front of STUDY as the first trials of a new study")
    run.add_argument("--warm-storage", metavar="URL", help="where the --warm-start study is (default: --storage)")

    worker = commands.add_parser("worker", help="join an existing study from any machine (its configuration is in storage)")
    worker.add_argument("study", help=STUDY_HELP)
    worker.add_argument("--storage", default=DEFAULT_STORAGE)
    worker.add_argument("--device", help="measure on this device instead of the study's target.device (same type)")
    worker.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="end this worker's trials within this many seconds (a trial still running then is "
                             "interrupted and retried later)")
    worker.add_argument("--no-progress", action="store_true", help="no progress bar")

    launch = commands.add_parser("launch", help="run N local workers on a study and wait for them")
    launch.add_argument("study", help="a study file (created or resumed first) or the name of a study in --storage")
    launch.add_argument("--storage", default=DEFAULT_STORAGE)
    launch.add_argument("--workers", type=int, required=True)
    launch.add_argument("--gpus", type=lambda text: text.split(","), help="GPU indices, one per worker: 0,1,2")
    launch.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="each worker's --timeout (its trials end within this many seconds of its start)")

    confirm = commands.add_parser("confirm", help="re-measure the baseline and the front interleaved; store confirmed figures")
    confirm.add_argument("study", help=STUDY_HELP)
    confirm.add_argument("--storage", default=DEFAULT_STORAGE)
    confirm.add_argument("--rounds", type=int, help="interleaved rounds (default: the study's confirm_rounds, else 6)")

    upgrade = commands.add_parser("upgrade", help="upgrade Optuna's and slimtune's tables to this version")
    upgrade.add_argument("--storage", default=DEFAULT_STORAGE)

    for name, text in (("pareto", "the feasible Pareto front of a study"), ("trials", "every trial of a study")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("study", help=STUDY_HELP)
        sub.add_argument("--storage", default=DEFAULT_STORAGE)
        sub.add_argument("--format", choices=["table", "json", "csv"], default="table")
    sub = commands.add_parser("screen", help="the study's target screen: each deployment setting measured, kept or dropped and why")
    sub.add_argument("study", help=STUDY_HELP)
    sub.add_argument("--storage", default=DEFAULT_STORAGE)
    sub.add_argument("--format", choices=["table", "json"], default="table")
    sub = commands.add_parser("export", help="export a trial as a deployable model, verified in a fresh process")
    sub.add_argument("study", help=STUDY_HELP)
    sub.add_argument("--storage", default=DEFAULT_STORAGE)
    which = sub.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, help="the trial number")
    which.add_argument("--pick", metavar="RULE", help="e.g. 'min latency where accuracy_drop <= 0.01'")
    which.add_argument("--knee", action="store_true", help="the front's knee (closest to the ideal point)")
    sub.add_argument("--format", default="pt2", choices=FORMATS)
    sub.add_argument("--out", required=True, help="a new (or empty) folder")
    sub.add_argument("--seed", type=int, help="the study's seed, only for trials stored without one")
    sub.add_argument("--verify-timeout", type=float, metavar="SECONDS",
                     help="stop the verifier after this long (default: 4x trial_timeout_s, at least 300)")
    sub.add_argument("--refined", action="store_true",
                     help="the trial's refined model (`slimtune refine`; of several, the best on the held-back images) instead of its short fine-tune")
    refine = commands.add_parser("refine", help="fine-tune front points for longer and measure them again")
    refine.add_argument("study", help=STUDY_HELP)
    refine.add_argument("--storage", default=DEFAULT_STORAGE)
    chosen = refine.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--top", type=int, metavar="K", help="K pruned points of the feasible front (see --order)")
    chosen.add_argument("--trial", type=int, metavar="N", help="one trial")
    refine.add_argument("--steps", type=int, required=True, help="fine-tuning steps of each refined model")
    refine.add_argument("--order", choices=["fastest", "most_pruned"], default="fastest",
                        help="which --top points: the fastest, or the most pruned (default: fastest)")
    refine.add_argument("--seeds", type=int, default=1, metavar="S",
                        help="refine each point S times with different seeds; the front and export take the best "
                             "on the held-back training images (default: 1)")
    refine.add_argument("--control", action="store_true",
                        help="each seed also re-runs the search's short fine-tune under the same held-back split: a "
                             "short vs long comparison the front's selection does not bias, and a candidate to keep")
    plot = commands.add_parser("plot", help="draw the Pareto front to an .html (or, with kaleido, .png/.svg) file")
    plot.add_argument("study", help=STUDY_HELP)
    plot.add_argument("--storage", default=DEFAULT_STORAGE)
    plot.add_argument("--out", required=True, help="output file: .html, .png or .svg")

    report = commands.add_parser("report", help="the study's dashboard page as one self-contained .html file")
    report.add_argument("study", help=STUDY_HELP)
    report.add_argument("--storage", default=DEFAULT_STORAGE)
    report.add_argument("-o", "--out", required=True, help="output .html file")

    serve = commands.add_parser("serve", help="the dashboard and JSON API over HTTP (needs the 'serve' extra)")
    serve.add_argument("--storage", default=DEFAULT_STORAGE)
    serve.add_argument("--host", default="127.0.0.1", help="without SLIMTUNE_API_TOKEN only loopback is allowed")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--export-root", default="exports", help="exports requested over HTTP go under this folder")
    serve.add_argument("--data-dir", help="studies created over HTTP may name data and checkpoints under this folder")
    for sub in commands.choices.values():
        sub.add_argument("--verbose", action="store_true",
                         help="with an error, print the full traceback (of the user's factory, where one raised)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "warm_storage", None) and not args.warm_start:
        parser.error("--warm-storage needs --warm-start STUDY")
    from sqlalchemy.exc import DBAPIError

    from slimtune.objectives import WorkloadError
    from slimtune.storage import StorageError

    from slimtune.search.config import StudyFileError, study_name
    from slimtune.search.export import ExportError
    from slimtune.search.refine import RefineError
    from slimtune.search.results import StudyNotFound

    from slimtune.spaces.warnings_once import show_once

    from slimtune.search import commands

    # third-party warnings once per run, one line each (the worker process sends its own here)
    show_once(lambda line: print(line, file=sys.stderr))
    try:
        if getattr(args, "study", None) and args.command != "launch":  # launch creates a study from its file
            args.study = study_name(args.study)
        return getattr(commands, args.command)(args)
    except (StudyFileError, WorkloadError, StorageError, StudyNotFound, ExportError, RefineError) as error:
        if args.verbose:  # the user's code's own traceback where a factory raised, else ours
            print(getattr(error, "traceback", None) or traceback.format_exc(), file=sys.stderr, end="")
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
