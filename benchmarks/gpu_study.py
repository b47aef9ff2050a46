"""The search against the by-hand ceiling, in one run on one GPU.

    python benchmarks/gpu_study.py studies/resnet18-b256.toml [--budget-s 500] [--out benchmarks/results]

1. baseline: the unmodified model, fp32 (TF32 off) eager, measured 5 times (spread_pct = max/min - 1);
2. by_hand: what an expert does with PyTorch alone (bf16 + channels_last + compile; the same
   with 50% of channels pruned and fine-tuned with the budget a trial gets; and + CUDA graphs),
   measured by the same evaluator code in a worker process, outside the search;
3. the search: the study file's study with nothing enqueued but the baseline, for the time
   left in `--budget-s` (the run ends by then: search/deadline.py);
4. the study file's `[refine]` (its fastest pruned front points fine-tuned for longer), and with
   `--baseline-seeds N` the baseline trained with N seeds (the spread of its held-out figures);
5. writes <out>/<date>-<gpu>-<study>.json and .md.

Balanced accuracy is reported beside accuracy where the workload measures it, and the targets
are then judged on it (`balanced_accuracy_drop`). `--data-root` overrides the study's
`workload.data_root` (ELPV on a machine without the package: benchmarks/elpv_array.py).

With `--arms curated,every-choice,no-space --arm-budget-s S` it instead runs, after the baseline,
one study per arm with the same wall budget each (issue 22: does the target screen make
expertise in the study file unnecessary?). The budget is the run's `--timeout` bound
(search/deadline.py): each arm's worker start, screen and trials end within S (a trial still
running then is stopped as interrupted), so equal budgets are equal wall times:
- curated: the study file as it is, with the screen off (what the file's author chose);
- every-choice: the same file with `[space]` listing every value of every deployment knob and
  pruning shape, and all four runtimes;
- no-space: the same file without `[space]` and without `runtimes` (every field absent: every
  value, every runtime the target supports).
The broad arms run the target screen first (`--screen-budget-s` of their budget); the
results give each arm's trials, best feasible speed-up at <= 1 point and the screen's time.
On a machine with several GPUs, run one invocation per GPU (CUDA_VISIBLE_DEVICES, each its own
`--out`) and join them: `gpu_study.py --merge-arms g0/X-arms.json g1/X-arms.json --out DIR`.

Every figure is a measurement of this run; nothing is copied from earlier runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or loaded from a file
from multi_gpu import write_study_toml  # noqa: E402
from slimtune.search.config import TEST_ATTR, load_config  # noqa: E402
from slimtune.search.deadline import TimedOut  # noqa: E402
from slimtune.search.isolated import IsolatedEvaluator
from slimtune.search.results import open_study, pareto_front
from slimtune.search.runner import run_study, worker_spec
from slimtune.search.screen.tables import choices_line
from slimtune.spaces import Recipe

BASELINE_REPEATS = 5


def by_hand_recipes(finetune_steps: int, text: bool = False) -> dict[str, Recipe]:
    """What an expert writes by hand. Text: torchao's documented BERT recipe (bf16 + SDPA +
    torch.compile, then + int8 dynamic quantization) and DistilBERT's idea (the top two layers
    dropped, fine-tuned with distillation for a trial's budget)."""
    if text:
        compiled = dict(precision="bf16", runtime="compile")
        return {
            "bf16+compile": Recipe(**compiled),
            "bf16+int8_dynamic+compile": Recipe(**compiled, quantization="int8_dynamic"),
            "bf16+drop2+compile": Recipe(**compiled, drop_layers=2, finetune_steps=finetune_steps,
                                         kd_temperature=4.0, kd_alpha=0.5),
        }
    half = dict(precision="bf16", memory_format="channels_last")
    pruned = dict(prune_ratio=0.5, prune_round_to=8, finetune_steps=finetune_steps, kd_temperature=4.0, kd_alpha=0.5)
    return {
        "bf16+channels_last+compile": Recipe(**half, runtime="compile"),
        "bf16+channels_last+pruned50+compile": Recipe(**half, **pruned, runtime="compile"),
        "bf16+channels_last+pruned50+compile+cudagraphs": Recipe(**half, **pruned, runtime="compile+cudagraphs"),
    }


def compared(point: dict, baseline: dict, batch: int, seq_len: int | None = None) -> dict:
    """The keys every row of the results carries, against the fp32 eager baseline; text
    workloads (`seq_len`) count sequences and tokens per second instead of images."""
    per_s = batch * 1000.0 / point["latency_ms_median"]
    return {
        "speedup_vs_fp32_eager": baseline["latency_ms_median"] / point["latency_ms_median"],
        "weights_reduction": baseline["weight_mb"] / point["weight_mb"],
        "accuracy_drop": baseline["accuracy"] - point["accuracy"],
    } | ({"images_per_s": per_s} if seq_len is None else {"sequences_per_s": per_s, "tokens_per_s": per_s * seq_len}
         ) | ({"balanced_accuracy_drop": baseline["balanced_accuracy"] - point["balanced_accuracy"]}
         if point.get("balanced_accuracy") is not None and baseline.get("balanced_accuracy") is not None else {})


def _point(measurement) -> dict:
    return {
        "latency_ms_median": measurement.latency_ms, "latency_ms_p95": measurement.latency_p95_ms,
        "peak_memory_mb": measurement.peak_memory_mb, "weight_mb": measurement.weight_mb,
        "accuracy": measurement.accuracy, "compile_s": measurement.compile_s, "params": measurement.params,
        "balanced_accuracy": getattr(measurement, "balanced_accuracy", None),
    }


def run_facts() -> dict:
    """The card, the versions and the date every results file starts with."""
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import torchao

        versions["torchao"] = torchao.__version__
    except ImportError:
        pass
    return {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "versions": versions,
            "date": datetime.date.today().isoformat()}


def gpu_slug() -> str:
    return gpu_slug_of(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")


def gpu_slug_of(name: str) -> str:
    match = re.search(r"(H100|H200|A100|L40S|L4|B200|GH200)", name)
    return (match.group(1) if match else re.sub(r"[^a-z0-9]+", "-", name.lower())).lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study_file", nargs="?")
    parser.add_argument("--merge-arms", nargs="+", metavar="ARMS_JSON",
                        help="join the arms of several runs (one per GPU) into one table, then stop")
    parser.add_argument("--budget-s", type=float, default=500.0, help="wall-clock budget for the whole run")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--n-trials", type=int, help="cap on the search's trials (default: the study file's)")
    parser.add_argument("--data-root", help="workload.data_root for this machine (an absolute path)")
    parser.add_argument("--model", help="workload.model for this machine (hf:PATH where the package is not installed)")
    parser.add_argument("--baseline-seeds", type=int, default=1, help="train the baseline with this many seeds (spread)")
    parser.add_argument("--arms", help="comma-separated: curated, every-choice, no-space (see above)")
    parser.add_argument("--arm-budget-s", type=float, default=120.0, help="wall budget of each arm's study")
    parser.add_argument("--screen-budget-s", type=float, help="the broad arms' [screen] budget_s")
    parser.add_argument("--setting-timeout-s", type=float, help="the broad arms' [screen] setting_timeout_s")
    args = parser.parse_args(argv)
    if args.merge_arms:
        return merge_arms([Path(p) for p in args.merge_arms], Path(args.out))
    if not args.study_file:
        parser.error("the study file is required (except with --merge-arms)")
    if args.arms:
        return run_arms(args)
    started = time.perf_counter()
    config = load_config(args.study_file, {"study.n_trials": args.n_trials, "workload.data_root": args.data_root,
                                           "workload.model": args.model})
    batch = config.workload.batch_sizes[0]
    seq_len = config.workload.input_shape[0] if len(config.workload.input_shape) == 1 else None
    log = lambda line: print(f"[{time.perf_counter() - started:6.1f} s] {line}", flush=True)  # noqa: E731

    results: dict = {
        "workload": f"{config.workload.model} on {config.workload.data} at {config.workload.input_shape}",
        "study": config.study.name, "batch": batch,
        **run_facts(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{results['date']}-{gpu_slug()}-{config.study.name}"

    def save() -> None:  # after every step: a run cut short keeps what it measured
        results["seconds"] = time.perf_counter() - started
        stem.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")

    with IsolatedEvaluator(worker_spec(config), log=log) as evaluator:
        evaluator.load()
        evaluator.prepare()
        log(f"baseline: {evaluator.source} accuracy {evaluator.baseline_accuracy:.4f}")
        runs = [evaluator.evaluate(Recipe(), seed=config.study.seed) for _ in range(BASELINE_REPEATS)]
        medians = [m.latency_ms for m in runs]
        baseline = _point(runs[len(runs) // 2])
        baseline["latency_ms_median"] = sorted(medians)[len(medians) // 2]
        baseline["latency_ms_runs"] = medians
        baseline["spread_pct"] = 100.0 * (max(medians) / min(medians) - 1.0)
        results["baseline"] = baseline
        results["baseline_compared"] = compared(baseline, baseline, batch, seq_len)
        log(f"baseline fp32 eager: {medians} ms, spread {baseline['spread_pct']:.2f}%")
        save()
        results["by_hand"] = {}
        for name, recipe in by_hand_recipes(config.budget.finetune_steps, text=seq_len is not None).items():
            try:
                measurement = evaluator.evaluate(recipe, seed=config.study.seed)
            except Exception as error:  # a by-hand recipe that fails is reported, not hidden
                results["by_hand"][name] = {"recipe": recipe.to_dict(), "error": str(error)}
                log(f"by hand {name}: failed: {error}")
                continue
            point = _point(measurement)
            results["by_hand"][name] = {"recipe": recipe.to_dict(), **point, **compared(point, baseline, batch, seq_len)}
            log(f"by hand {name}: {point['latency_ms_median']:.3f} ms, "
                f"{results['by_hand'][name]['speedup_vs_fp32_eager']:.2f}x, drop {results['by_hand'][name]['accuracy_drop']:.4f}")
            save()
        measured = {name: Recipe.from_dict(row["recipe"]) for name, row in results["by_hand"].items() if "error" not in row}
        if measured and evaluator.data.get("validation"):  # judged as the front is: once, on the test split
            figures = evaluator.test(list(measured.values()), [config.study.seed] * len(measured))
            results["baseline"]["test"] = {"accuracy": figures["baseline_accuracy"], "examples": figures["examples"],
                                           "balanced_accuracy": figures["baseline_balanced_accuracy"]}
            for name, point in zip(measured, figures["points"]):
                results["by_hand"][name]["test"] = point
            save()

    # The search ends by its budget (search/deadline.py: a trial still running then is stopped).
    search_budget = args.budget_s - (time.perf_counter() - started) - 30.0 - SEED_S * (args.baseline_seeds - 1)
    if config.refine is not None:  # each refined point: its fine-tune plus a compile
        search_budget -= config.refine.top * config.refine.seeds * REFINE_S * (1.5 if config.refine.control else 1.0)
    storage = f"sqlite:///{tempfile.mkdtemp()}/study.db"
    log(f"search: {search_budget:.0f} s for new trials")
    search_started = time.perf_counter()
    # at least the time to start a worker and measure the baseline trial
    study = run_study(config, storage, timeout=max(60.0, search_budget), log=log, progress=False)
    study_obj, repository = open_study(config.study.name, storage)
    front = pareto_front(study_obj, repository)
    results["search"] = {
        "seconds": time.perf_counter() - search_started,
        "trials": len(study.trials),
        "complete": sum(t.state.name == "COMPLETE" for t in study.trials),
        "failed": {t.number: t.user_attrs.get("reason") for t in study.trials if t.state.name == "FAIL"},
    }
    rows = {row.trial_number: row for row in repository.trials(config.study.name)}
    results["front"] = []
    for record in front.to_dict(orient="records"):
        row = rows[int(record["trial"])]
        measurement = row.measurement
        point = {
            "latency_ms_median": measurement["latency_ms"], "latency_ms_p95": measurement["latency_p95_ms"],
            "peak_memory_mb": measurement["peak_memory_mb"], "weight_mb": measurement["weight_mb"],
            "accuracy": measurement["accuracy"], "compile_s": measurement.get("compile_s"),
            "params": measurement["params"], "balanced_accuracy": measurement.get("balanced_accuracy"),
        }
        test = (study_obj.user_attrs.get(TEST_ATTR) or {}).get("points", {}).get(str(row.trial_number))
        results["front"].append({
            "trial": row.trial_number, "recipe": row.recipe, "describe": Recipe.from_dict(row.recipe).describe(),
            **point, **compared(point, baseline, batch, seq_len), **({"test": test} if test else {}),
        })
    results["front"].sort(key=lambda p: p["latency_ms_median"])
    results["trial_points"] = [  # every completed trial, for the quantization test
        {"trial": row.trial_number, "quantization": row.recipe.get("quantization", "none"),
         "latency_ms_median": row.measurement["latency_ms"], "accuracy": row.measurement["accuracy"]}
        for row in rows.values() if row.measurement and row.measurement.get("latency_ms") is not None]
    save()
    if config.refine is not None:
        results["refine"] = refine_front(config, storage, baseline, log)
        save()
    if args.baseline_seeds > 1:
        results["baseline_seeds"] = baseline_seeds(config, args.baseline_seeds, log)
    results["targets"] = targets(results)
    save()
    stem.with_suffix(".md").write_text(markdown(results))
    log(f"wrote {stem}.json and .md")
    print(markdown(results))
    return 0


SEED_S = 20.0  # what one more baseline seed takes (training + held-out scores), for the budget
REFINE_S = 30.0  # what one refined point takes, for the budget


def refine_front(config, storage: str, baseline: dict, log) -> list[dict]:
    """`[refine]` on the search's study: short vs long figures per refined point."""
    from slimtune.search.refine import refine

    from slimtune.search.results import selection_key

    rows = []
    kept: dict[int, tuple[float, dict]] = {}  # trial -> the run the front and export take (chosen_refined's rule)
    for refined in refine(config.study.name, storage, top=config.refine.top, steps=config.refine.steps,
                          order=config.refine.order, seeds=config.refine.seeds, control=config.refine.control, log=log):
        build = (refined.long or {}).get("build") or {}
        row = {"trial": refined.trial, "steps": refined.steps, "status": refined.status, "reason": refined.reason,
               "control": refined.control,
               "short_steps": refined.short.get("finetune_steps_run"), "seed": refined.seed,
               "selected_step": build.get("selected_step"), "selection_score": build.get("selection_score")}
        for key in ("accuracy", "balanced_accuracy", "latency_ms"):
            row[f"short_{key}"] = refined.short.get(key)
            row[f"long_{key}"] = (refined.long or {}).get(key)
        if refined.long is not None and baseline.get("balanced_accuracy") is not None:
            row["short_balanced_accuracy_drop"] = baseline["balanced_accuracy"] - refined.short["balanced_accuracy"]
            row["long_balanced_accuracy_drop"] = baseline["balanced_accuracy"] - refined.long["balanced_accuracy"]
        rows.append(row)
        if refined.long is not None and (refined.trial not in kept or
                                         selection_key(refined.long) >= kept[refined.trial][0]):
            kept[refined.trial] = (selection_key(refined.long), row)
    for _, row in kept.values():
        row["kept"] = True
    return rows


def baseline_seeds(config, seeds: int, log) -> dict:
    """The baseline trained with seeds 0..N-1 (the study's training recipe), scored on the same
    held-out split: how much one seed's figure can be trusted on a split of this size."""
    from slimtune.objectives import TrainingRecipe, get_baseline, load_workload
    from slimtune.objectives.accuracy import accuracy_scores

    workload = load_workload(config.workload.model, config.workload.data, tuple(config.workload.input_shape),
                             config.workload.data_root, config.workload.validation_share)
    held_out = workload.data.test if workload.data.test is not None else workload.data.val  # the test split
    device = torch.device(config.target.device)
    runs = []
    for seed in range(seeds):
        recipe = TrainingRecipe(epochs=config.baseline.epochs, batch_size=config.baseline.batch_size,
                                lr=config.baseline.lr, seed=config.study.seed + seed)
        model = get_baseline(workload, device, recipe=recipe).model.to(device).eval()
        scores = accuracy_scores(model, held_out, config.workload.batch_sizes[0], device)
        runs.append({"seed": config.study.seed + seed, "accuracy": scores.accuracy,
                     "balanced_accuracy": scores.balanced_accuracy})
        log(f"baseline seed {config.study.seed + seed}: accuracy {scores.accuracy:.4f}, "
            f"balanced {scores.balanced_accuracy:.4f}")
    balanced = [r["balanced_accuracy"] for r in runs]
    return {"runs": runs, "balanced_accuracy_min": min(balanced), "balanced_accuracy_max": max(balanced),
            "balanced_accuracy_spread_pts": 100 * (max(balanced) - min(balanced))}


ALL_RUNTIMES = ["eager", "cudagraphs", "compile", "compile+cudagraphs"]


def arm_study(raw: dict, arm: str, screen_budget_s: float | None, setting_timeout_s: float | None = None) -> dict:
    """The study file of one arm, as a TOML dict (see the module's docstring)."""
    from slimtune.spaces.registry import study_fields

    raw = json.loads(json.dumps(raw))
    raw["study"]["name"] = f"{raw['study']['name']}-{arm}"
    # the arms compare what each search found in the same wall time; a confirmation at the end
    # would rebuild and recompile every front point outside that time
    raw.setdefault("budget", {})["confirm_rounds"] = 0
    if arm == "curated":
        raw["screen"] = {"enabled": False}
        return raw
    on_cpu = raw.get("target", {}).get("device", "cpu") == "cpu"  # a dry run of this script
    target = raw.setdefault("target", {})
    if on_cpu:  # a dry run: no compile on the 2-core machine
        target["runtimes"] = ["eager"]
    elif arm == "every-choice":
        target["runtimes"] = list(ALL_RUNTIMES)
    else:  # absent: every runtime the target supports, as a user's file without them
        target.pop("runtimes", None)
    if arm == "every-choice":
        space = raw.setdefault("space", {})
        for field in study_fields():
            if field.kind == "choices" and field.name != "runtime" and field.name != "prune_importance":
                space[field.name] = list(field.allowed)
    elif arm == "no-space":
        raw.pop("space", None)
    else:
        raise SystemExit(f"unknown arm {arm!r}; allowed: curated, every-choice, no-space")
    raw["screen"] = {"enabled": True, **({"budget_s": screen_budget_s} if screen_budget_s else {}),
                     **({"setting_timeout_s": setting_timeout_s} if setting_timeout_s else {})}
    return raw


def timeline(trials, rows: dict, baseline: dict, arm_started: datetime.datetime) -> list[dict]:
    """Each completed trial by when it finished (seconds since the arm started), with its
    speed-up and whether it is within 1 point: what the arm had found by any wall time (arms end
    by their budget; before the bound of issue 34 a trial could start at its last second)."""
    points = []
    for trial in trials:
        row = rows.get(trial.number)
        if trial.state.name != "COMPLETE" or row is None or not row.measurement or trial.datetime_complete is None:
            continue
        m = row.measurement
        points.append({"trial": trial.number, "seconds": (trial.datetime_complete - arm_started).total_seconds(),
                       "speedup_vs_fp32_eager": baseline["latency_ms_median"] / m["latency_ms"],
                       "accuracy_drop": baseline["accuracy"] - m["accuracy"]})
    return sorted(points, key=lambda p: p["seconds"])


def best_by(points: list[dict], seconds: float) -> dict | None:
    """The fastest trial within 1 point that had finished `seconds` into its arm."""
    return best_at_one_point([p for p in points if p["seconds"] <= seconds])


def best_at_one_point(front: list[dict]) -> dict | None:
    ok = [p for p in front if p["accuracy_drop"] <= 0.01]
    return max(ok, key=lambda p: p["speedup_vs_fp32_eager"]) if ok else None


def run_arms(args: argparse.Namespace) -> int:
    """The baseline once, then one study per arm with the same wall budget each."""
    from slimtune.storage import Repository, connect

    started = time.perf_counter()
    log = lambda line: print(f"[{time.perf_counter() - started:6.1f} s] {line}", flush=True)  # noqa: E731
    raw = tomllib.loads(Path(args.study_file).read_text())
    config = load_config(args.study_file, {"study.n_trials": args.n_trials})
    batch = config.workload.batch_sizes[0]
    results: dict = {
        "workload": f"{config.workload.model} on {config.workload.data} at {config.workload.input_shape}",
        "study": config.study.name, "batch": batch, "arm_budget_s": args.arm_budget_s,
        "screen_budget_s": args.screen_budget_s,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda},
        "date": datetime.date.today().isoformat(), "arms": {},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{results['date']}-{gpu_slug()}-{config.study.name}-arms"

    def save() -> None:
        results["seconds"] = time.perf_counter() - started
        stem.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        stem.with_suffix(".md").write_text(arms_markdown(results))

    folder = Path(tempfile.mkdtemp())
    for arm in args.arms.split(","):
        arm_raw = arm_study(raw, arm, args.screen_budget_s, args.setting_timeout_s)
        if args.n_trials:
            arm_raw["study"]["n_trials"] = args.n_trials
        arm_config = load_config(write_study_toml(arm_raw, folder / f"{arm}.toml"))
        storage = f"sqlite:///{folder / (arm + '.db')}"
        log(f"arm {arm}: {args.arm_budget_s:.0f} s")
        arm_started = time.perf_counter()
        arm_clock = datetime.datetime.now()  # Optuna's trial times are naive local datetimes
        try:
            study = run_study(arm_config, storage, timeout=args.arm_budget_s, log=log, progress=False)
        except (Exception, TimedOut) as error:  # an arm that breaks (or ends before its trials) is reported
            results["arms"][arm] = {"error": f"{type(error).__name__}: {error}"}
            log(f"arm {arm} failed: {error}")
            save()
            continue
        study_obj, repository = open_study(arm_config.study.name, storage)
        front = pareto_front(study_obj, repository)
        rows = {row.trial_number: row for row in repository.trials(arm_config.study.name)}
        # each arm's trial 0 is the unmodified model in fp32 (TF32 off) eager: its own baseline
        baseline = {"latency_ms_median": rows[0].measurement["latency_ms"], "weight_mb": rows[0].measurement["weight_mb"],
                    "accuracy": rows[0].measurement["accuracy"]}
        points = []
        for record in front.to_dict(orient="records"):
            row = rows[int(record["trial"])]
            m = row.measurement
            point = {"latency_ms_median": m["latency_ms"], "latency_ms_p95": m["latency_p95_ms"],
                     "peak_memory_mb": m["peak_memory_mb"], "weight_mb": m["weight_mb"], "accuracy": m["accuracy"],
                     "compile_s": m.get("compile_s"), "params": m["params"]}
            points.append({"trial": row.trial_number, "recipe": row.recipe,
                           "describe": Recipe.from_dict(row.recipe).describe(), **point, **compared(point, baseline, batch)})
        points.sort(key=lambda p: p["latency_ms_median"])
        screened = Repository(connect(storage)).screen(arm_config.study.name)
        results["arms"][arm] = {
            "seconds": time.perf_counter() - arm_started,
            "trials": len(study.trials),
            "complete": sum(t.state.name == "COMPLETE" for t in study.trials),
            "failed": {t.number: t.user_attrs.get("reason") for t in study.trials if t.state.name == "FAIL"},
            "baseline": baseline, "front": points, "best_at_1pt": best_at_one_point(points),
            "timeline": timeline(study.trials, rows, baseline, arm_clock),
            "screen": screened.result if screened is not None else None,
        }
        save()
    compare_arms(results)
    save()
    print(arms_markdown(results))
    return 0


def compare_arms(results: dict) -> None:
    """Each arm's best against the curated arm's: at the end, and at the curated arm's wall."""
    curated_arm = results["arms"].get("curated") or {}
    curated = curated_arm.get("best_at_1pt")
    for row in results["arms"].values():
        best = row.get("best_at_1pt")
        if curated and best:
            row["share_of_curated_speedup"] = best["speedup_vs_fp32_eager"] / curated["speedup_vs_fp32_eager"]
        if curated and "timeline" in row and "seconds" in curated_arm:  # at the curated arm's wall time
            early = best_by(row["timeline"], curated_arm["seconds"])
            row["share_at_curated_wall"] = early["speedup_vs_fp32_eager"] / curated["speedup_vs_fp32_eager"] if early else 0.0


def merge_arms(paths: list[Path], out: Path) -> int:
    """The arms of runs made side by side (one per GPU of a machine) as one table; each arm
    keeps which run (file) it came from. The runs must be of the same study and arm budget."""
    runs = [json.loads(p.read_text()) for p in paths]
    keys = {(r["study"], r["arm_budget_s"], r.get("screen_budget_s")) for r in runs}
    if len(keys) != 1:
        raise SystemExit(f"--merge-arms: the runs differ in study or budgets: {sorted(map(str, keys))}")
    merged = {**runs[0], "arms": {}, "seconds": max(r.get("seconds", 0) for r in runs), "merged_from": [f"{p.parent.name}/{p.name}" for p in paths]}
    for path, run in zip(paths, runs):
        for arm, row in run["arms"].items():
            if arm in merged["arms"]:
                raise SystemExit(f"--merge-arms: arm {arm!r} is in more than one run")
            shares = ("share_of_curated_speedup", "share_at_curated_wall")  # compared again below
            merged["arms"][arm] = {**{k: v for k, v in row.items() if k not in shares}, "run": path.parent.name}
    compare_arms(merged)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{merged['date']}-{gpu_slug_of(merged['device'])}-{merged['study']}-arms"
    stem.with_suffix(".json").write_text(json.dumps(merged, indent=2, default=str) + "\n")
    stem.with_suffix(".md").write_text(arms_markdown(merged))
    print(arms_markdown(merged))
    return 0


def arms_markdown(results: dict) -> str:
    lines = [f"# {results['study']}: curated vs broad study files, {results['device']}", "",
             f"{results['workload']}, batch {results['batch']}; torch {results['versions'].get('torch')}; "
             f"{results['date']}; {results['arm_budget_s']:.0f} s per arm, the screen included. Speed-ups against "
             "each arm's trial 0 (the unmodified model, fp32 with TF32 off, eager)."
             + (f" Joined from separate runs (side by side on a machine's GPUs, or one after another): "
                f"{', '.join(results['merged_from'])}."
                if results.get("merged_from") else ""), "",
             "| arm | baseline ms | trials (failed) | wall s | screen s | kept by the screen | best feasible at <= 1 pt | speed-up | share of curated | share at the curated arm's wall |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, row in results["arms"].items():
        if "error" in row:
            lines.append(f"| {arm} | failed: {row['error']} | | | | | | | | |")
            continue
        screen = row.get("screen")
        kept = choices_line(screen) if screen else "(off)"
        screen_s = f"{screen['seconds']:.0f}" if screen else "-"
        best = row.get("best_at_1pt")
        point = f"{best['describe']}, {best['latency_ms_median']:.3f} ms" if best else "-"
        speedup = f"{best['speedup_vs_fp32_eager']:.2f}x" if best else "-"
        share = row.get("share_of_curated_speedup")
        share_text = f"{share:.0%}" if share is not None else "-"
        at_wall = row.get("share_at_curated_wall")
        at_wall_text = f"{at_wall:.0%}" if at_wall is not None else "-"
        wall = f"{row['seconds']:.0f}" if "seconds" in row else "-"
        lines.append(f"| {arm} | {row['baseline']['latency_ms_median']:.3f} | {row['trials']} ({len(row['failed'])}) | {wall} | "
                     f"{screen_s} | {kept} | {point} | {speedup} | {share_text} | {at_wall_text} |")
    return "\n".join(lines) + "\n"


def targets(results: dict) -> dict:
    """The issue's targets, checked on this run's figures (1 point = 0.01 accuracy; balanced
    accuracy where the run measured it)."""
    key = "balanced_accuracy_drop" if "balanced_accuracy_drop" in results["baseline_compared"] else "accuracy_drop"
    # the front and the by-hand recipes by the same rule: their drops on the test split, read once
    # after the search, where this run measured it (else the search's own figures)
    on_test = all("test" in p for p in results["front"]) and all(
        "test" in h for h in results["by_hand"].values() if "error" not in h)
    drop = (lambda p: p["test"][key]) if on_test else (lambda p: p[key])  # noqa: E731
    ok = [p for p in results["front"] if drop(p) <= 0.01]
    hand = [h for h in results["by_hand"].values() if "error" not in h and drop(h) <= 0.01]
    best_hand = max((h["speedup_vs_fp32_eager"] for h in hand), default=None)
    best_front = max((p["speedup_vs_fp32_eager"] for p in ok), default=None)
    return {
        "judged_on": f"test {key}" if on_test else key,
        "front_vs_best_by_hand_at_1pt": best_front / best_hand if best_front and best_hand else None,
        "front_at_least_1_3x_best_by_hand": bool(best_front and best_hand and best_front >= 1.3 * best_hand),
        "best_by_hand_speedup_at_1pt": best_hand,
        "best_front_speedup_at_1pt": best_front,
        "front_at_least_as_fast_as_best_by_hand": best_front is not None and best_hand is not None and best_front >= best_hand,
        "best_weights_reduction_at_1pt": max((p["weights_reduction"] for p in ok), default=None),
        "front_4x_smaller_weights": any(p["weights_reduction"] >= 4 for p in ok),
        "best_per_s_at_1pt": max((_per_s(p) for p in ok), default=None),
        "baseline_spread_within_3pct": results["baseline"]["spread_pct"] <= 3.0,
        "quantized_point_beats_every_unquantized": quantization_pays(results["front"], results.get("trial_points", [])),
    }


def quantization_pays(front: list[dict], points: list[dict]) -> bool | None:
    """Issue 32's test: the front holds a quantized point faster than every unquantized trial of
    the study at equal or better accuracy (None: the front holds no quantized point)."""
    quantized = [p for p in front if p["recipe"].get("quantization", "none") != "none"]
    if not quantized:
        return None
    return any(all(q["latency_ms_median"] < p["latency_ms_median"] for p in points
                   if p["quantization"] == "none" and p["accuracy"] >= q["accuracy"])
               for q in quantized)


def _per_s(row: dict) -> float:
    return row["images_per_s"] if "images_per_s" in row else row["sequences_per_s"]


def markdown(results: dict) -> str:
    base = results["baseline"]
    lines = [
        f"# {results['study']}: search vs by hand, {results['device']}",
        "",
        f"{results['workload']}, batch {results['batch']}; torch {results['versions'].get('torch')}, "
        f"torchao {results['versions'].get('torchao', '-')}; {results['date']}. "
        f"Baseline fp32 (TF32 off) eager measured {len(base['latency_ms_runs'])} times: "
        f"{', '.join(f'{v:.3f}' for v in base['latency_ms_runs'])} ms (spread {base['spread_pct']:.2f}%).",
        "",
        f"| what | recipe | latency ms (median / p95) | {'img/s' if 'images_per_s' in results['baseline_compared'] else 'seq/s'}"
        " | speed-up | weights | accuracy drop (pts, validation) | test drop (pts, 95% interval) | compile s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| baseline | fp32 eager | {base['latency_ms_median']:.3f} / {base['latency_ms_p95']:.3f} | "
        f"{results['batch'] * 1000 / base['latency_ms_median']:,.0f} | 1.00x | 1.00x | 0.00 | 0.00 | - |",
    ]
    for name, row in results["by_hand"].items():
        if "error" in row:
            lines.append(f"| by hand | {name} | failed: {row['error']} | | | | | | |")
        else:
            lines.append(_row("by hand", name, row))
    for row in results["front"]:
        lines.append(_row(f"front #{row['trial']}", row["describe"], row))
    search = results["search"]
    lines += ["", f"Search: {search['trials']} trials in {search['seconds']:.0f} s ({search['complete']} complete, "
              f"{len(search['failed'])} failed).", "", "Targets: " + ", ".join(f"{k} = {v}" for k, v in results["targets"].items())]
    lines += _balanced_lines(results)
    return "\n".join(lines) + "\n"


def _balanced_lines(results: dict) -> list[str]:
    """Balanced accuracy per row, the refined points and the baseline's seed spread, when measured."""
    if results["baseline"].get("balanced_accuracy") is None:
        return []
    lines = ["", f"Balanced accuracy: baseline {100 * results['baseline']['balanced_accuracy']:.2f}%"]
    for name, row in list(results["by_hand"].items()) + [(f"front #{r['trial']}", r) for r in results["front"]]:
        if "balanced_accuracy_drop" in row:
            lines.append(f"- {name}: {100 * row['balanced_accuracy']:.2f}% (drop {100 * row['balanced_accuracy_drop']:+.2f} pts)")
    if results.get("refine"):
        lines += ["", "Refined points: the best step is kept, chosen on training images held back from the run; "
                  "with several seeds, **kept** marks the run the front and export take (best on those images).", "",
                  "| refined trial | seed | fine-tuning steps (kept step) | held-back score | accuracy | balanced accuracy | balanced drop (pts) |",
                  "|---|---|---|---|---|---|---|"]
        for r in results["refine"]:
            if r["status"] != "complete":
                lines.append(f"| {r['trial']} | {r.get('seed', '-')} | {r['steps']} | {r['status']}: {r['reason']} | | | |")
                continue
            kept = f" ({r['selected_step']})" if r.get("selected_step") is not None else ""
            score = f"{100 * r['selection_score']:.2f}" if r.get("selection_score") is not None else "-"
            steps = f"{r['steps']}{kept}, control" if r.get("control") else f"{r['short_steps']} -> {r['steps']}{kept}"
            lines.append(f"| {r['trial']}{' **kept**' if r.get('kept') else ''} | {r.get('seed', '-')} | "
                         f"{steps} | {score} | {100 * r['short_accuracy']:.2f} -> "
                         f"{100 * r['long_accuracy']:.2f} | {100 * r['short_balanced_accuracy']:.2f} -> "
                         f"{100 * r['long_balanced_accuracy']:.2f} | {100 * r.get('short_balanced_accuracy_drop', 0):+.2f} -> "
                         f"{100 * r.get('long_balanced_accuracy_drop', 0):+.2f} |")
        lines += _control_lines(results["refine"])
    if results.get("baseline_seeds"):
        seeds = results["baseline_seeds"]
        lines += ["", "Baseline over seeds: " + ", ".join(
            f"seed {r['seed']} {100 * r['balanced_accuracy']:.2f}%" for r in seeds["runs"])
            + f" (balanced; spread {seeds['balanced_accuracy_spread_pts']:.2f} pts)"]
    return lines


def _control_lines(refined: list[dict]) -> list[str]:
    """With `[refine] control`: per point, the long run against the search's fine-tune re-run
    with the same seed and held-back split (the short figures above are the front's, selected)."""
    from slimtune.search.refine import paired_line

    lines = []
    for trial in dict.fromkeys(r["trial"] for r in refined):
        runs = [r for r in refined if r["trial"] == trial and r["status"] == "complete"]
        pairs = [(c, l) for c in runs if c.get("control") for l in runs if not l.get("control") and l["seed"] == c["seed"]]
        if pairs:  # the line `slimtune refine` logs
            scores = [(c["long_balanced_accuracy"], l["long_balanced_accuracy"]) for c, l in pairs]
            lines.append(f"- trial {trial}: "
                         + paired_line(scores, "balanced_accuracy", pairs[0][0]["steps"], pairs[0][1]["steps"]))
    return ["", "Longer fine-tune against its control:"] + lines if lines else []


def _row(what: str, recipe: str, row: dict) -> str:
    compile_s = f"{row['compile_s']:.0f}" if row.get("compile_s") is not None else "-"
    return (f"| {what} | {recipe} | {row['latency_ms_median']:.3f} / {row['latency_ms_p95']:.3f} | "
            f"{_per_s(row):,.0f} | {row['speedup_vs_fp32_eager']:.2f}x | {row['weights_reduction']:.2f}x | "
            f"{100 * row['accuracy_drop']:+.2f} | {_test_drop(row)} | {compile_s} |")


def _test_drop(row: dict) -> str:
    """The drop on the test split with its interval ('+0.28 [-0.55, +1.11]'), or '-'."""
    test = row.get("test")
    if not test:
        return "-"
    low, high = test["accuracy_drop_ci"]
    return f"{100 * test['accuracy_drop']:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"


if __name__ == "__main__":
    sys.exit(main())
