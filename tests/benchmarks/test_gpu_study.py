"""benchmarks/gpu_study.py's arms without a GPU: what an arm had found by a given wall time
(the budget is checked between trials, so arms end at different walls) and the table."""

from __future__ import annotations

import datetime
from types import SimpleNamespace

import pytest

from tests.benchmarks import load_benchmark

@pytest.fixture(scope="module")
def gpu_study():
    return load_benchmark("gpu_study")


def _trial(number: int, state: str, finished_s: float | None, start: datetime.datetime):
    done = None if finished_s is None else start + datetime.timedelta(seconds=finished_s)
    return SimpleNamespace(number=number, state=SimpleNamespace(name=state), datetime_complete=done)


def test_the_timeline_says_what_an_arm_had_found_by_each_wall_time(gpu_study) -> None:
    start = datetime.datetime(2026, 12, 1, 7, 52)
    baseline = {"latency_ms_median": 25.0, "accuracy": 0.99}
    measured = {0: (25.0, 0.99), 1: (3.1, 1.0), 2: (2.0, 0.97), 4: (1.7, 0.985)}
    rows = {n: SimpleNamespace(measurement={"latency_ms": lat, "accuracy": acc}) for n, (lat, acc) in measured.items()}
    trials = [_trial(0, "COMPLETE", 60, start), _trial(1, "COMPLETE", 174, start), _trial(2, "COMPLETE", 190, start),
              _trial(3, "FAIL", 200, start), _trial(4, "COMPLETE", 268, start)]
    points = gpu_study.timeline(trials, rows, baseline, start)
    assert [p["trial"] for p in points] == [0, 1, 2, 4]
    assert gpu_study.best_by(points, 220)["trial"] == 1  # trial 2 is faster, but 2 points down
    assert gpu_study.best_by(points, 268)["speedup_vs_fp32_eager"] == pytest.approx(25 / 1.7)
    assert gpu_study.best_by(points, 30) is None


def _arms_run(folder, arms: dict, seconds: float, budget: float = 180.0) -> object:
    import json

    folder.mkdir()
    path = folder / "x-arms.json"
    path.write_text(json.dumps({"study": "r18", "arm_budget_s": budget, "screen_budget_s": 60.0, "device": "NVIDIA H200",
                                "date": "2026-12-01", "batch": 256, "workload": "w", "versions": {"torch": "2.11"},
                                "seconds": seconds, "arms": arms}))
    return path


def _arm(speedups_by_second: list[tuple[float, float]], wall: float) -> dict:
    timeline = [{"trial": i, "seconds": s, "speedup_vs_fp32_eager": x, "accuracy_drop": 0.0}
                for i, (s, x) in enumerate(speedups_by_second)]
    best = max(timeline, key=lambda p: p["speedup_vs_fp32_eager"])
    return {"seconds": wall, "trials": len(timeline), "failed": {}, "baseline": {"latency_ms_median": 20.0},
            "front": [], "timeline": timeline, "screen": None,
            "best_at_1pt": {**best, "describe": "x", "latency_ms_median": 20.0 / best["speedup_vs_fp32_eager"]}}


def test_arms_run_side_by_side_on_two_gpus_are_joined_and_compared(gpu_study, tmp_path) -> None:
    first = _arms_run(tmp_path / "g0", {"curated": _arm([(60, 1.0), (150, 10.0)], 200)}, 210)
    second = _arms_run(tmp_path / "g1", {"every-choice": _arm([(60, 1.0), (190, 9.6), (250, 12.0)], 260)}, 270)
    assert gpu_study.main(["--merge-arms", str(first), str(second), "--out", str(tmp_path / "joined")]) == 0
    import json

    [joined] = (tmp_path / "joined").glob("*-arms.json")
    merged = json.loads(joined.read_text())
    broad = merged["arms"]["every-choice"]
    assert broad["run"] == "g1" and merged["seconds"] == 270
    assert broad["share_of_curated_speedup"] == pytest.approx(1.2)
    assert broad["share_at_curated_wall"] == pytest.approx(0.96)  # 9.6x had finished by the curated arm's 200 s
    table = joined.with_suffix(".md").read_text()
    assert "g0/x-arms.json, g1/x-arms.json" in table and "| every-choice |" in table and "96%" in table

    clash = _arms_run(tmp_path / "g2", {"curated": _arm([(60, 2.0)], 100)}, 100)
    with pytest.raises(SystemExit, match="arm 'curated' is in more than one run"):
        gpu_study.main(["--merge-arms", str(first), str(clash), "--out", str(tmp_path / "bad")])
    other = _arms_run(tmp_path / "g3", {"no-space": _arm([(60, 2.0)], 100)}, 100, budget=120.0)
    with pytest.raises(SystemExit, match="differ in study or budgets"):
        gpu_study.main(["--merge-arms", str(first), str(other), "--out", str(tmp_path / "bad")])


def test_a_control_run_is_paired_with_the_long_run_of_its_seed(gpu_study) -> None:
    def run(seed, steps, balanced, control):
        return {"trial": 4, "seed": seed, "steps": steps, "status": "complete", "control": control,
                "long_balanced_accuracy": balanced}

    refined = [run(4, 200, 0.760, True), run(4, 1000, 0.775, False), run(1004, 200, 0.770, True),
               run(1004, 1000, 0.765, False), {**run(9, 1000, 0.7, False), "trial": 2}]
    assert gpu_study._control_lines(refined) == [
        "", "Longer fine-tune against its control:",
        "- trial 4: 1000 steps against the search's 200 under the same seeds and held-back split: held-out balanced "
        "accuracy +0.50 pts on average (+1.50 / -0.50 per seed)"]
    assert gpu_study._control_lines([r for r in refined if not r["control"]]) == []


def test_a_text_study_counts_sequences_and_tokens_and_has_its_own_by_hand_recipes(gpu_study) -> None:
    base = {"latency_ms_median": 40.0, "weight_mb": 90.0, "accuracy": 0.90}
    point = {"latency_ms_median": 8.0, "weight_mb": 45.0, "accuracy": 0.895}
    row = gpu_study.compared(point, base, 256, seq_len=256)
    assert row["sequences_per_s"] == pytest.approx(32_000) and row["tokens_per_s"] == pytest.approx(32_000 * 256)
    assert "images_per_s" not in row and row["speedup_vs_fp32_eager"] == pytest.approx(5.0)
    assert "images_per_s" in gpu_study.compared(point, base, 256)
    recipes = gpu_study.by_hand_recipes(600, text=True)
    assert recipes["bf16+int8_dynamic+compile"].quantization == "int8_dynamic"
    assert recipes["bf16+drop2+compile"].drop_layers == 2 and recipes["bf16+drop2+compile"].finetune_steps == 600
    assert all(r.memory_format == "contiguous" for r in recipes.values())


def test_quantization_pays_only_where_a_quantized_front_point_beats_every_unquantized_trial_as_accurate(gpu_study):
    def front(quantization, latency, accuracy):
        return {"recipe": {"quantization": quantization}, "latency_ms_median": latency, "accuracy": accuracy}

    trials = [{"quantization": "none", "latency_ms_median": 6.2, "accuracy": 0.895},
              {"quantization": "none", "latency_ms_median": 4.0, "accuracy": 0.85},  # faster, but less accurate
              {"quantization": "fp8_dynamic", "latency_ms_median": 5.0, "accuracy": 0.893}]
    assert gpu_study.quantization_pays([front("fp8_dynamic", 5.0, 0.893)], trials) is True
    slower = trials + [{"quantization": "none", "latency_ms_median": 4.5, "accuracy": 0.90}]
    assert gpu_study.quantization_pays([front("fp8_dynamic", 5.0, 0.893)], slower) is False
    assert gpu_study.quantization_pays([front("none", 6.2, 0.895)], trials) is None


def test_text_kernels_measures_a_setting_of_a_token_model(tiny_bert, tmp_path) -> None:
    import json

    text_kernels = load_benchmark("text_kernels")
    assert text_kernels.main(["--model", f"hf:{tiny_bert}", "--seq-len", "16", "--batch", "8", "--device", "cpu",
                              "--only", "fp32 eager,bf16 int8_dynamic eager", "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("*-text-kernels-b8-len16.json")
    rows = {row["setting"]: row for row in json.loads(written.read_text())["settings"]}
    assert rows["fp32 eager"]["latency_ms"] > 0 and rows["fp32 eager"]["tokens_per_s"] > 0
    assert rows["bf16 int8_dynamic eager"]["quantized_weight_share"] > 0.99
