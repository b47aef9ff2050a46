"""The commands of the CLI, one function each (`cli.py` parses the arguments, calls the function
of the same name and turns the errors raised here into one line and exit code 2)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

from slimtune.storage import safe_url

from slimtune.search.config import StudyConfig, StudyFileError, parse_config
from slimtune.search.deadline import TimedOut
from slimtune.search.signals import exit_code, handle_signals

INTERRUPTED = "interrupted: finished trials are kept; run the same command to resume"


def timed_out_line(error: TimedOut) -> str:
    return f"stopped at {error.args[0]} before the trials could run; run the same command to resume"


def plot(args: argparse.Namespace) -> int:
    from slimtune.search.report.plots import hypervolume_history, pareto_figure
    from slimtune.search.results import accuracy_floor, open_study, pareto_front, trials_frame

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
    from slimtune.search.results import format_table, trials_table

    if fmt == "json":
        print(json.dumps(json.loads(frame.to_json(orient="records")), indent=2))
    elif fmt == "csv":
        print(frame.to_csv(index=False), end="")
    else:
        print(format_table(frame) if "speedup_x" in frame else trials_table(frame))
        if footer:
            print(footer)


def run(args: argparse.Namespace) -> int:
    from slimtune.search.deadline import Deadline, process_age_s

    # --timeout bounds the whole command, from the process's start (search/deadline.py)
    deadline = Deadline(args.timeout, started=time.monotonic() - process_age_s()) if args.timeout else None
    from slimtune.search.config import load_config
    from slimtune.search.runner import run_study
    from slimtune.search.warm_start import WarmStart

    overrides = {"study.n_trials": args.n_trials, "study.sampler": args.sampler, "study.seed": args.seed}
    config = load_config(args.study_file, overrides)
    # Optuna's per-trial INFO lines and its notes on experimental arguments are noise here:
    # slimtune prints its own line for each failed trial and the front at the end.
    quiet()
    interrupted = None
    try:
        warm_start = WarmStart(args.warm_start, args.warm_storage) if args.warm_start else None
        with handle_signals():
            run_study(config, args.storage, timeout=deadline, log=print, progress=not args.no_progress,
                      warm_start=warm_start)
        if deadline is not None and config.refine is not None:  # hundreds of steps a point: no estimate fits
            print(f"refine skipped: --timeout bounds this run; `slimtune refine {config.study.name}` refines the front")
        else:
            with handle_signals():
                refine_after_search(config, args.storage)
    except KeyboardInterrupt as error:
        interrupted = error
        print(timed_out_line(error) if isinstance(error, TimedOut) else INTERRUPTED, file=sys.stderr)
    return print_front(config.study.name, args.storage, interrupted)


def refine_after_search(config: StudyConfig, storage: str) -> None:
    """The study file's `[refine]`, once the search is over: here (after `run`, and after
    `launch` once every worker ended), not in the runner, which every worker of a study runs."""
    if config.refine is None:
        return
    from slimtune.search.refine import refine as refine_front

    refine_front(config.study.name, storage, top=config.refine.top, steps=config.refine.steps,
                 order=config.refine.order, seeds=config.refine.seeds, control=config.refine.control, log=print)


def quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def print_front(study_name: str, storage: str, interrupted: KeyboardInterrupt | None = None) -> int:
    """Print the front and its hypervolume; the exit code: 130/143 when a signal stopped the run, else 0."""
    from slimtune.search.hypervolume import hypervolume_line
    from slimtune.search.results import StudyNotFound, format_table, open_study, pareto_front

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


def worker(args: argparse.Namespace) -> int:
    """Join an existing study with the configuration stored in it; run trials until the study
    has its n_trials (waiting while other workers still run some)."""
    from slimtune.search.runner import run_study
    from slimtune.search.workers.joining import stored_config, study_is_done

    quiet()
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

    from slimtune.search.workers.launch import launch as run_workers
    from slimtune.search.results import open_study

    quiet()
    try:
        with handle_signals():
            config, codes = run_workers(args.study, args.storage, args.workers, args.gpus, timeout=args.timeout)
    except KeyboardInterrupt as error:
        print(INTERRUPTED, file=sys.stderr)
        return exit_code(error)
    study, repository = open_study(config.study.name, args.storage)
    usage = SlotBook(repository.engine).usage(config.study.name)
    repository.engine.dispose()
    if config.budget.confirm_rounds:  # the workers joined, so none confirmed: confirm once here
        _confirm(config.study.name, args.storage, None)
    if usage.done >= usage.n_trials:
        try:
            with handle_signals():
                refine_after_search(config, args.storage)
        except KeyboardInterrupt as error:
            print(INTERRUPTED, file=sys.stderr)
            return exit_code(error)
    code = print_front(config.study.name, args.storage)
    if usage.done >= usage.n_trials:
        return code
    print(f"slimtune: study {config.study.name!r} has {usage.done} of {usage.n_trials} trials; "
          "run the same command to go on", file=sys.stderr)
    return max((c for c in codes if c > 0), default=1)


def confirm(args: argparse.Namespace) -> int:
    """Re-measure the baseline and the front interleaved in one worker process and store the
    confirmed figures (search/confirm.py). 0 confirmed, 1 a point could not be rebuilt."""
    quiet()
    if args.rounds is not None and not 1 <= args.rounds <= 100:
        raise StudyFileError(f"--rounds = {args.rounds}: allowed 1 to 100 (6 or more give a 95% interval)")
    code = _confirm(args.study, args.storage, args.rounds)
    return code if code else print_front(args.study, args.storage)


def _confirm(study_name: str, storage: str, rounds: int | None) -> int:
    from slimtune.objectives import TrialStopped
    from slimtune.search.confirm import DEFAULT_ROUNDS, NothingToConfirm, confirm_study, study_config
    from slimtune.search.isolated import IsolatedEvaluator, WorkerFailed
    from slimtune.search.results import open_study
    from slimtune.search.runner import worker_spec

    study, repository = open_study(study_name, storage)
    config = study_config(study)
    rounds = rounds or config.budget.confirm_rounds or DEFAULT_ROUNDS
    try:
        with handle_signals(), IsolatedEvaluator(worker_spec(config), log=print,
                                                 memory_limit_mb=config.budget.memory_limit_mb) as evaluator:
            evaluator.load()
            evaluator.prepare()
            confirm_study(study, repository, config, evaluator, rounds=rounds, log=print)
            from slimtune.search.holdout import measure_test_at_end

            measure_test_at_end(study, repository, config, evaluator, print)  # and the test split, once more
    except KeyboardInterrupt as error:
        print("interrupted: nothing was stored", file=sys.stderr)
        return exit_code(error)
    except (NothingToConfirm, WorkerFailed, TrialStopped) as error:
        print(f"slimtune: error: confirm: {error}", file=sys.stderr)
        return 1
    return 0


def upgrade(args: argparse.Namespace) -> int:
    from slimtune.storage.migrations import upgrade_storage

    done = upgrade_storage(args.storage)
    print("\n".join(done) if done else f"{safe_url(args.storage)}: already up to date")
    return 0


def pareto(args: argparse.Namespace) -> int:
    from slimtune.search.hypervolume import hypervolume_line
    from slimtune.search.results import open_study, pareto_front

    study, repository = open_study(args.study, args.storage)
    _emit(pareto_front(study, repository), args.format, hypervolume_line(study))
    return 0


def trials(args: argparse.Namespace) -> int:
    from slimtune.search.results import open_study, trials_frame

    _emit(trials_frame(*open_study(args.study, args.storage)), args.format)
    return 0


def screen(args: argparse.Namespace) -> int:
    import json

    from slimtune.search.results import open_study
    from slimtune.search.screen import table

    study, repository = open_study(args.study, args.storage)
    stored = repository.screen(study.study_name)
    if stored is None:
        print(f"study {study.study_name!r} has no target screen (it was off, or the study predates screens)")
        return 0
    print(json.dumps(stored.result, indent=2) if args.format == "json" else "\n".join(table(stored.result)))
    return 0


def report(args: argparse.Namespace) -> int:
    from slimtune.search.report.html_report import write_report

    print(f"wrote {write_report(args.study, args.storage, args.out)}")
    return 0


def serve(args: argparse.Namespace) -> int:
    from slimtune.search.web.serve import serve as serve_http

    return serve_http(args)


def export(args: argparse.Namespace) -> int:
    """Exit codes: 0 verified, 1 written but not verified (or rebuild failed), 2 bad input."""
    from slimtune.search.export import ExportFailed, export as export_trial

    try:
        export_trial(args.study, args.storage, trial=args.trial, pick=args.pick, knee=args.knee, fmt=args.format,
                     out=args.out, seed=args.seed, verify_timeout_s=args.verify_timeout, log=print,
                     refined=args.refined)
    except ExportFailed as error:
        print(f"slimtune: error: {error}", file=sys.stderr)
        return 1
    return 0


def refine(args: argparse.Namespace) -> int:
    """Fine-tune front points for longer, measure them, store and print short vs long."""
    from slimtune.search.refine import refine as refine_front
    from slimtune.search.results import format_table, open_study, pareto_front

    quiet()
    try:
        with handle_signals():
            refine_front(args.study, args.storage, top=args.top, trial=args.trial, steps=args.steps,
                         order=args.order, seeds=args.seeds, control=args.control, log=print)
    except KeyboardInterrupt as error:
        print(INTERRUPTED, file=sys.stderr)
        return exit_code(error)
    study, repository = open_study(args.study, args.storage)
    print(f"\nPareto front of {args.study!r} with the refined figures:")
    print(format_table(pareto_front(study, repository)))
    return 0
