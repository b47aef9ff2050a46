"""Create or resume a study and run its trials: the one place where spaces, objectives and
storage meet.

Everything that can be wrong with the input (study file, workload, database, an existing
study with another configuration) is checked before the study is created, so a bad run
leaves nothing behind. Each trial's measurements are written to slimtune's tables before
Optuna is told, so a tell that fails loses nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from slimtune.objectives import TrialStopped
from slimtune.objectives.worker import DEFAULT_FACTORY, WorkerSpec
from slimtune.spaces import SearchSpace
from slimtune.spaces.errors import one_line
from slimtune.storage import DEFAULT_STORAGE, Repository, SlotBook, connect, is_sqlite, optuna_storage, safe_url, single_process

from slimtune.search import screen, signals
from slimtune.objectives.splits import cost_line
from slimtune.search.config import CONFIG_ATTR, STUDY_FILE_ATTR, VALIDATION_ATTR, StudyConfig, StudyFileError
from slimtune.search.confirm import confirm_at_end
from slimtune.search.deadline import Deadline, RunBudget, TimedOut
from slimtune.search.holdout import measure_test_at_end, refuse_old_study, resolution_lines
from slimtune.search.fingerprint import fingerprint
from slimtune.search.first_trials import PruneLadder, first_trials
from slimtune.search.hypervolume import HYPERVOLUME_ATTR, hypervolume_settings, study_hypervolume
from slimtune.search.isolated import IsolatedEvaluator, WorkerFailed
from slimtune.search.samplers import make_sampler
from slimtune.search.stopping import StopWhenFrontStalls
from slimtune.search.warm_start import WarmStart, enqueue_warm_start, load_front, plan_warm_start
from slimtune.search.many_workers import LostTrialHandler, Worker, fail_running
from slimtune.search.studies import N_TRIALS_ATTR

Log = Callable[[str], None]
FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)


class TrialFailed(Exception):
    """A trial that failed or was stopped; Optuna records it as FAIL and the study goes on."""


@dataclass
class TrialObjective:
    """The Optuna objective: sample a recipe, measure it, record it, return the objectives."""

    config: StudyConfig
    space: SearchSpace
    evaluator: IsolatedEvaluator
    repository: Repository
    fingerprint_id: int
    log: Log

    def __call__(self, trial: optuna.Trial) -> list[float]:
        if trial.user_attrs.get("baseline") and not self.space.contains_baseline():
            recipe = self.space.baseline_recipe()  # outside the space: measured, not sampled
        else:
            recipe = self.space.suggest(trial)
        trial.set_user_attr("recipe", recipe.to_dict())
        # export rebuilds the model from these: the trial's seed, and the study's (baseline training)
        trial.set_user_attr("seed", self.config.study.seed + trial.number)
        trial.set_user_attr("study_seed", self.config.study.seed)
        record = dict(study_name=trial.study.study_name, trial_number=trial.number,
                      recipe=recipe.to_dict(), fingerprint_id=self.fingerprint_id)
        try:
            with signals.delivered():  # SIGTERM/SIGINT stop a measurement, not Optuna's bookkeeping
                measurement = self.evaluator.evaluate(recipe, seed=self.config.study.seed + trial.number)
        except KeyboardInterrupt:
            self.repository.record_trial(**record, status="interrupted", reason="interrupted by the user")
            trial.set_user_attr("status", "interrupted")
            raise
        except Exception as error:  # any failure of a candidate is a result, not a crash
            status = "stopped" if isinstance(error, TrialStopped) else "failed"
            # the worker's reasons are already one line, with the original error's type in them
            reason = str(error) if isinstance(error, (TrialStopped, WorkerFailed)) else one_line(error)
            self.repository.record_trial(**record, status=status, reason=reason)
            trial.set_user_attr("status", status)
            trial.set_user_attr("reason", reason)
            self.log(f"trial {trial.number} {status}: {reason}")
            raise TrialFailed(reason) from error
        accuracy_drop = self.evaluator.baseline_accuracy - measurement.accuracy
        stored = measurement.to_dict()
        balanced_drop = None
        if self.evaluator.baseline_balanced_accuracy is not None:
            balanced_drop = self.evaluator.baseline_balanced_accuracy - measurement.balanced_accuracy
            stored["balanced_accuracy_drop"] = balanced_drop
        self.repository.record_trial(**record, status="complete", measurement=stored, accuracy_drop=accuracy_drop)
        trial.set_user_attr("status", "complete")
        trial.set_user_attr("accuracy_drop", accuracy_drop)
        judged = measurement.judged_on  # with `confidence`, the upper end of the drop's interval decides
        upper = (lambda name, drop: judged[f"{name}_ci"][1] if self.config.constraints.confidence and judged else drop)
        max_drop = self.config.constraints.max_accuracy_drop
        if max_drop is not None:  # on every trial, the baseline included: no constraint = feasible
            trial.set_constraint("accuracy_drop", upper("accuracy_drop", accuracy_drop) - max_drop)
        max_balanced_drop = self.config.constraints.max_balanced_accuracy_drop
        if max_balanced_drop is not None and balanced_drop is not None:
            trial.set_constraint("balanced_accuracy_drop",
                                 upper("balanced_accuracy_drop", balanced_drop) - max_balanced_drop)
        return [measurement.objective(name) for name in self.config.objectives]


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def result_numbers(study: optuna.Study) -> list[int]:
    """Trials that finished with a result of their own (not interrupted, not lost)."""
    from slimtune.storage.slots import counts_as_result

    return [t.number for t in study.get_trials(deepcopy=False, states=FINISHED)
            if counts_as_result(t.state, t.user_attrs.get("status"))]


def _existing_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study | None:
    if name not in optuna.get_all_study_names(storage):
        return None
    return optuna.load_study(study_name=name, storage=storage)


def _check_resume(study: optuna.Study, config: StudyConfig, storage_url: str) -> None:
    stored, wanted = study.user_attrs.get(CONFIG_ATTR), config.identity()
    if stored is not None and stored != wanted:
        changed = sorted(k for k in wanted if stored.get(k) != wanted[k])
        raise StudyFileError(
            f"study.name = {config.study.name!r}: a study of that name in {safe_url(storage_url)!r} was run with a "
            f"different [{', '.join(changed)}]; give this one another name"
        )


class SnapshotCallback:
    """Writes the feasible Pareto front after every completed trial, so its history can be queried."""

    def __init__(self, repository: Repository):
        self.repository = repository

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state != TrialState.COMPLETE:
            return
        best = study.best_trials
        front = [{"trial_number": t.number, "values": list(t.values)} for t in best]
        self.repository.record_snapshot(study.study_name, trial.number, front, study_hypervolume(study, best))


def worker_spec(config: StudyConfig, factory: str = DEFAULT_FACTORY) -> WorkerSpec:
    """What the worker process needs from the study file, as plain data."""
    from slimtune.objectives.cache import cache_root

    budget = config.budget
    return WorkerSpec(
        model=config.workload.model, data=config.workload.data, input_shape=tuple(config.workload.input_shape),
        data_root=config.workload.data_root, device=config.target.device, threads=config.target.threads,
        batch_sizes=tuple(config.workload.batch_sizes),
        budget=dict(
            finetune_steps=budget.finetune_steps, finetune_lr=budget.finetune_lr,
            finetune_batch_size=config.baseline.batch_size, trial_timeout_s=budget.trial_timeout_s,
            latency_warmup=budget.latency_warmup, latency_repeats=budget.latency_repeats,
            latency_rel_tol=budget.latency_rel_tol, latency_max_s=budget.latency_max_s,
        ),
        max_accuracy_drop=config.constraints.max_accuracy_drop,
        max_balanced_accuracy_drop=config.constraints.max_balanced_accuracy_drop,
        validation_share=config.workload.validation_share, ci_level=config.constraints.confidence or 0.95,
        space=config.search_space().to_dict(),
        checkpoint=config.baseline.checkpoint,
        training=dict(epochs=config.baseline.epochs, batch_size=config.baseline.batch_size,
                      lr=config.baseline.lr, seed=config.study.seed),
        inductor_cache_dir=str(cache_root() / "inductor" / config.study.name),
        factory=factory,
    )


def run_study(
    config: StudyConfig,
    storage_url: str = DEFAULT_STORAGE,
    *,
    timeout: float | Deadline | None = None,
    log: Log = print,
    progress: bool = True,
    join: bool = False,
    prepare_only: bool = False,
    warm_start: WarmStart | None = None,
    evaluator_factory: str = DEFAULT_FACTORY,
) -> optuna.Study:
    """Create or resume `config.study.name` in `storage_url` and run it up to `n_trials` finished
    trials in all, across every worker (a resumed study runs only the remainder). Returns the
    Optuna study. `join`: the study must exist (`slimtune worker`); `prepare_only`: create or
    resume it and train the baseline, but run no trial (`slimtune launch`). `warm_start` enqueues
    another study's front as the first trials of a new study. Trials run in a worker process
    (`isolated.py`); `evaluator_factory` ("module:function") builds the evaluator there (tests
    name one that injects faults).

    `timeout` (seconds from this call, or the caller's `Deadline`) bounds the whole run: the
    baseline, the screen, the trials and the confirmation (search/deadline.py). A trial starts
    only when the trials so far say it can finish in time; one still running at its stop is
    stopped as SIGTERM stops it (interrupted, retried when the same command runs again), and the
    run goes on to its confirmation. Anything else still running at the deadline raises
    `TimedOut` (a KeyboardInterrupt, as a signal's stop is)."""
    if timeout is not None and not isinstance(timeout, Deadline):
        timeout = Deadline(timeout)
    with contextlib.ExitStack() as held:
        return _run_study(config, storage_url, held, timeout=timeout, log=log, progress=progress, join=join,
                          prepare_only=prepare_only, warm_start=warm_start, evaluator_factory=evaluator_factory)


def _run_study(
    config: StudyConfig,
    storage_url: str,
    held: contextlib.ExitStack,
    *,
    timeout: Deadline | None,
    log: Log,
    progress: bool,
    join: bool,
    prepare_only: bool,
    warm_start: WarmStart | None,
    evaluator_factory: str,
) -> optuna.Study:
    device = torch.device(config.target.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StudyFileError(f"target.device = {config.target.device!r}: no CUDA device here; allowed: cpu")
    threads = config.target.threads or torch.get_num_threads()

    evaluator = held.enter_context(IsolatedEvaluator(
        worker_spec(config, evaluator_factory), log=log, memory_limit_mb=config.budget.memory_limit_mb,
    ))
    evaluator.deadline = deadline = timeout
    setup_started = deadline.clock() if deadline is not None else 0.0
    # The workload (and a checkpoint) are checked in the worker before the database is touched;
    # training waits until the database has answered, so a wrong URL does not cost a training run.
    with signals.delivered():
        evaluator.load()
    # The warm start's source is read (and a wrong one refused) before this database is touched.
    source = load_front(warm_start, storage_url, config.study.name) if warm_start is not None else None
    engine = connect(storage_url)
    held.enter_context(single_process(storage_url))  # SQLite: this process only
    repository = Repository(engine)
    repository.check_compatible()
    slots = SlotBook(engine)
    lost = LostTrialHandler(repository, slots, config.workers, log)
    storage = optuna_storage(
        storage_url, heartbeat_interval=config.workers.heartbeat_interval_s,
        grace_period=config.workers.grace_period_s, stale_trial_callback=lost,
    )
    existing = _existing_study(storage, config.study.name)
    if existing is None and join:
        from slimtune.search.results import StudyNotFound

        raise StudyNotFound(f"study {config.study.name!r} not found in {safe_url(storage_url)!r}")
    if existing is not None:  # before the validation split, or another one: refused (search/holdout.py)
        refuse_old_study(existing, evaluator.data)
    if existing is not None and not join:  # a joining worker runs the study's own configuration
        _check_resume(existing, config, storage_url)
    if warm_start is not None and existing is not None:
        log(f"warm start ignored: study {config.study.name!r} exists (a warm start fills a new study's first trials)")
        source = None

    with signals.delivered():
        evaluator.prepare()
    log(f"baseline: {evaluator.source}" + (f" ({evaluator.train_seconds:.1f} s)" if evaluator.train_seconds else ""))
    # what a fresh worker costs (the baseline then comes from the cache): a trial stopped at the
    # deadline leaves none, and the confirmation after it needs one
    restart_s = deadline.clock() - setup_started - evaluator.train_seconds if deadline is not None else 0.0
    if evaluator.data.get("validation"):  # what the validation split costs the training data
        log(cost_line(evaluator.data["validation"]))
    space, removals = evaluator.space, evaluator.removals
    for removal in removals:
        log(f"probe: {removal}")
    for line in resolution_lines(config, evaluator):  # a constraint the split is too small for
        log(line)
    stored = repository.screen(config.study.name) if existing is not None else None
    with signals.delivered():  # the target screen: measured once per study, read back after
        screened = screen.for_study(config, space, evaluator, stored.result if stored else None,
                                    existing=existing is not None and bool(result_numbers(existing)),
                                    log=log, run_timeout_s=deadline.seconds if deadline else None,
                                    time_left_s=deadline.left() if deadline else None)
    if screened is not None:
        space = screen.narrow(space, screened)
        for line in screen.summary(screened):
            log(line)
    plan = plan_warm_start(*source, space, removals) if source is not None else None

    with signals.deferred():  # a study is created whole or not at all
        repository.create_schema()
        study = optuna.create_study(
            study_name=config.study.name,
            storage=storage,
            directions=list(config.objectives.values()),
            sampler=make_sampler(config.study.sampler, config.study.seed, config.study.n_trials),
            load_if_exists=True,
        )
        if existing is None:
            study.set_metric_names(list(config.objectives))
            study.set_user_attr(CONFIG_ATTR, config.identity())
            study.set_user_attr("probe_removed", [str(r) for r in removals])
            study.set_user_attr(HYPERVOLUME_ATTR, hypervolume_settings(
                config.objectives, config.constraints.max_accuracy_drop, config.constraints.max_balanced_accuracy_drop))
            study.enqueue_trial(space.baseline_params(), user_attrs={"baseline": True})
            if plan is not None:
                enqueue_warm_start(study, plan, log)
        if screened is not None and stored is None:  # a study created over HTTP screens on its first run
            repository.record_screen(config.study.name, screened, screened["seconds"])
            # only where the study has room: a waiting trial past n_trials would outlive the run
            winners = first_trials(space, screened)[:max(0, config.study.n_trials - len(study.trials))]
            for winner in winners:
                study.enqueue_trial(winner.params, user_attrs=winner.user_attrs)
            if winners:
                log("screen: the first trials start from its winners: " + "; ".join(w.describe() for w in winners))
        if study.user_attrs.get(VALIDATION_ATTR) is None and evaluator.data.get("validation"):
            study.set_user_attr(VALIDATION_ATTR, evaluator.data["validation"])  # checked on every resume
        if not join:  # what `slimtune worker` reads: the study file as last run
            study.set_user_attr(STUDY_FILE_ATTR, config.model_dump(mode="json"))
        study.set_user_attr(N_TRIALS_ATTR, config.study.n_trials)  # what "finished" means to the dashboard
        slots.set_budget(config.study.name, config.study.n_trials, result_numbers(study), replace=not join)
        fingerprint_id = repository.record_fingerprint(config.study.name, fingerprint(device, threads))
    if join:  # every worker samples its own points (the same seed everywhere would repeat them)
        study.sampler.reseed_rng()
    elif existing is not None:  # a resumed run must not replay the points its seed gave the first time
        study.sampler = make_sampler(config.study.sampler, config.study.seed + len(study.trials), config.study.n_trials)
    if is_sqlite(storage_url):  # this process holds the file: a RUNNING trial is a dead one
        fail_running(study, lost)

    usage = slots.usage(config.study.name)
    remaining = usage.n_trials - usage.done
    if prepare_only:
        return study
    if remaining <= 0:
        log(f"study {config.study.name!r} already has {usage.done} finished trials")
        return study
    objective = TrialObjective(config, space, evaluator, repository, fingerprint_id, log)
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [SnapshotCallback(repository)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=remaining, desc=config.study.name, unit="trial")
        objective.log = bar.write

        def advance(study: optuna.Study, trial: FrozenTrial) -> None:
            bar.set_postfix(front=len(study.best_trials), refresh=False)
            bar.update(1)

        callbacks.append(advance)
    callbacks.append(PruneLadder(config.study.n_trials, objective.log))  # a screened study's first rungs
    stop_when = config.study.stop_when
    stopper = None
    if stop_when is not None:
        stopper = StopWhenFrontStalls(stop_when.hypervolume_gain_below, stop_when.over_trials, objective.log).start(study)
        callbacks.append(stopper)
    budget = None
    run_trial: Callable[[optuna.Trial], list[float]] = objective
    if deadline is not None:
        budget = RunBudget(deadline, 0 if join else config.budget.confirm_rounds, config.budget.latency_warmup,
                           config.budget.latency_repeats, config.budget.latency_max_s, restart_s=max(0.0, restart_s),
                           objectives=list(config.objectives), log=objective.log)
        run_trial = budget.timed(objective, evaluator)

    def should_stop() -> bool:
        if stopper is not None and stopper.stopped is not None:
            return True
        return budget is not None and not budget.may_start(study)

    worker = Worker(study, run_trial, slots, repository, config.workers, log, callbacks, catch=(TrialFailed,),
                    should_stop=should_stop)
    try:
        worker.run()
    except TimedOut as stopped:  # a trial ran into its stop: interrupted, retried on resume
        objective.log(f"{stopped.args[0]}: the running trial was stopped (interrupted; the same command retries it)")
    finally:
        if bar is not None:
            bar.close()
    if not join:  # the study's run ended: re-measure its front against the baseline (search/confirm.py)
        confirm_at_end(study, repository, config, evaluator, log, budget)
        measure_test_at_end(study, repository, config, evaluator, log, budget)  # the test split, read once
    return study
