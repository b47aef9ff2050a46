"""Which deployment settings pay on a text encoder, and which kernels they run, without a search.

    python benchmarks/text_kernels.py --model hf:PATH [--seq-len 256] [--batch 256] [--out DIR]

Each setting (precision x quantization x runtime, and two shapes: 50% of heads and MLP neurons
pruned, the top two layers dropped) is built from the pretrained checkpoint by slimtune's own
evaluator, without fine-tuning (latency does not depend on the weights' values), and measured as
a trial is: CUDA events, warm-up, median and p95, the compile time, the share of Linear weights
torchao quantized. Then torch.profiler records one forward and lists the five kernels that took
the most GPU time: whether an int8 / fp8 setting ran int8 or fp8 matrix kernels, or fell back.

The data is a few generated sentences (accuracy is not the question here; the study is);
results go to <out>/<date>-<gpu>-text-kernels.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script
from gpu_study import gpu_slug, run_facts  # noqa: E402

SETTINGS = [  # (name, recipe fields)
    ("fp32 eager", {}),
    ("bf16 eager", {"precision": "bf16"}),
    ("bf16 compile", {"precision": "bf16", "runtime": "compile"}),
    ("bf16 int8_dynamic compile", {"precision": "bf16", "quantization": "int8_dynamic", "runtime": "compile"}),
    ("bf16 fp8_dynamic compile", {"precision": "bf16", "quantization": "fp8_dynamic", "runtime": "compile"}),
    ("bf16 int8_weight_only compile", {"precision": "bf16", "quantization": "int8_weight_only", "runtime": "compile"}),
    ("bf16 int4_weight_only compile", {"precision": "bf16", "quantization": "int4_weight_only", "runtime": "compile"}),
    ("bf16 compile, prune 0.5", {"precision": "bf16", "runtime": "compile", "prune_ratio": 0.5}),
    ("bf16 compile, drop 2 layers", {"precision": "bf16", "runtime": "compile", "drop_layers": 2}),
    ("bf16 int8_dynamic compile, prune 0.5", {"precision": "bf16", "quantization": "int8_dynamic",
                                              "runtime": "compile", "prune_ratio": 0.5}),
    ("bf16 compile+cudagraphs", {"precision": "bf16", "runtime": "compile+cudagraphs"}),
    ("bf16 int8_dynamic eager", {"precision": "bf16", "quantization": "int8_dynamic"}),
]
#: settings whose kernels are profiled (the quantized ones, and the float one they compete with)
PROFILED = ("bf16 compile", "bf16 int8_dynamic compile", "bf16 fp8_dynamic compile", "bf16 int8_weight_only compile")


def sentences(tokenizer, count: int, seq_len: int) -> list[str]:
    words = [w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 3][:5000]
    rng = random.Random(0)
    return [" ".join(rng.choices(words, k=seq_len)) for _ in range(count)]


def top_kernels(candidate, example, count: int = 5) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        for _ in range(3):
            candidate(example)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            candidate(example)
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    total = sum(e.self_device_time_total for e in events) or 1.0
    return [{"kernel": e.key[:120], "share": e.self_device_time_total / total} for e in events[:count]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="hf:minilm or hf:PATH")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--only", help="comma-separated setting names (default: all)")
    parser.add_argument("--budget-s", type=float, default=400.0, help="start no setting after this many seconds")
    parser.add_argument("--out", default="benchmarks/results/text")
    args = parser.parse_args(argv)

    from slimtune.objectives.evaluator import Budget, Evaluator
    from slimtune.objectives.text import checkpoint_folder, load_tokenizer
    from slimtune.objectives.workloads import load_workload
    from slimtune.spaces import Recipe
    from slimtune.spaces.precision import math_mode

    started = time.perf_counter()
    tokenizer = load_tokenizer(checkpoint_folder(args.model.removeprefix("hf:")))
    rows = Path(tempfile.mkdtemp()) / "sentences.csv"
    with open(rows, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        for i, text in enumerate(sentences(tokenizer, 2 * args.batch, args.seq_len)):
            writer.writerow([text, i % 2])
    workload = load_workload(args.model, f"textcsv:{rows}", (args.seq_len,))
    device = torch.device(args.device)
    evaluator = Evaluator(workload, workload.make_model().eval(), device, batch_sizes=(args.batch,),
                          budget=Budget(finetune_steps=0, trial_timeout_s=300, latency_warmup=10,
                                        latency_repeats=50, latency_max_s=5.0))
    results = {"model": args.model, "seq_len": args.seq_len, "batch": args.batch, **run_facts(), "settings": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{results['date']}-{gpu_slug()}-text-kernels-b{args.batch}-len{args.seq_len}"
    wanted = set(args.only.split(",")) if args.only else None
    for name, fields in SETTINGS:
        if wanted and name not in wanted:
            continue
        if time.perf_counter() - started > args.budget_s:
            results["settings"].append({"setting": name, "error": f"not run: past --budget-s {args.budget_s:g}"})
            continue
        recipe = Recipe(**fields)
        row: dict = {"setting": name, "recipe": recipe.to_dict()}
        try:
            measurement = evaluator.evaluate(recipe)
            row.update(latency_ms=measurement.latency_ms, latency_p95_ms=measurement.latency_p95_ms,
                       compile_s=measurement.compile_s, weight_mb=measurement.weight_mb,
                       quantized_weight_share=measurement.quantized_weight_share, params=measurement.params,
                       tokens_per_s=args.batch * args.seq_len * 1000.0 / measurement.latency_ms)
            if device.type == "cuda" and name in PROFILED:  # built again: the compile is cached by now
                with math_mode(recipe.precision):
                    evaluator._deadline = time.perf_counter() + 300
                    candidate = evaluator.build(recipe)
                    del evaluator._deadline
                    row["top_kernels"] = top_kernels(candidate, candidate.inputs(evaluator.example(args.batch)))
        except Exception as error:  # a setting that fails is a result: say why
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        results["settings"].append(row)
        print(f"[{time.perf_counter() - started:6.1f} s] {name}: "
              + (f"{row['latency_ms']:.3f} ms, compile {row['compile_s'] or 0:.0f} s" if "latency_ms" in row
                 else row["error"]), flush=True)
        stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    base = next((r["latency_ms"] for r in results["settings"] if r["setting"] == "fp32 eager" and "latency_ms" in r),
                None)
    lines = [f"# {results['model']} at batch {results['batch']} x {results['seq_len']} tokens, {results['device']}",
             "", f"{results['date']}; {results['versions']}; no fine-tuning (latency only); slimtune's evaluator.", "",
             "| setting | median ms | p95 ms | x fp32 eager | k tokens/s | compile s | quantized share | top kernel |",
             "|---|---|---|---|---|---|---|---|"]
    for row in results["settings"]:
        if "error" in row:
            lines.append(f"| {row['setting']} | failed: {row['error']} | | | | | | |")
            continue
        kernel = (row.get("top_kernels") or [{}])[0]
        lines.append(
            f"| {row['setting']} | {row['latency_ms']:.3f} | {row['latency_p95_ms']:.3f} | "
            f"{base / row['latency_ms']:.2f} | {row['tokens_per_s'] / 1000:.0f} | {row['compile_s'] or 0:.1f} | "
            f"{row['quantized_weight_share']:.0%} | {kernel.get('kernel', '')[:60]} ({kernel.get('share', 0):.0%}) |"
            if base else f"| {row['setting']} | {row['latency_ms']:.3f} | | | | | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
