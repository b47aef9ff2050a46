"""Verify an exported model in a fresh process: `python -m slimtune.objectives.verify_export DIR`.

A fresh process is the point: nothing of the process that built the model (its modules, its
compiled graphs, its RNG) can make the artifact look right. It loads the folder through
`load_exported` (every hash checked), runs the workload's held-out split at the trial's batch
size, and times the forward with the trial's runtime, warm-up and repeats. Before each step it
prints {"stage": "..."} (flushed), so the driver can say what a crash or a hang interrupted. The
last line of stdout is one JSON object: the figures, or {"error": reason}.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import torch

from .accuracy import top1_accuracy
from .artifacts import load_exported
from .latency import measure_latency
from .workloads import load_workload


def _with_runtime(exported, runtime: str):
    """The trial's runtime around the loaded module, where the format is a PyTorch module."""
    fmt = exported.manifest["format"]
    if fmt in ("pt2", "state_dict") and runtime != "eager":
        from slimtune.spaces.runtime import prepare

        return prepare(exported.model, runtime), runtime
    return exported.model, {"torchscript": "torchscript", "onnx": "onnxruntime (CPU)", "aoti": "aoti"}.get(fmt, "eager")


def _stage(name: str) -> None:
    print(json.dumps({"stage": name}), flush=True)


def verify(folder: str) -> dict:
    from slimtune.spaces.precision import math_mode

    started = time.perf_counter()
    _stage("loading the model")
    exported = load_exported(folder)
    manifest = exported.manifest
    measure, workload_spec = manifest["measure"], manifest["workload"]
    if measure.get("threads") and exported.device.type == "cpu":
        torch.set_num_threads(measure["threads"])
    _stage("loading the data")
    # the split the trial was judged on: its validation split (absent in manifests of studies made
    # before it: the held-out split)
    workload = load_workload(workload_spec["model"], workload_spec["data"], tuple(workload_spec["input_shape"]),
                             workload_spec.get("data_root"), workload_spec.get("validation_share"))
    batch_size = measure["batch_size"]
    with math_mode(manifest["recipe"]["precision"]):
        run, runtime = _with_runtime(exported, manifest["recipe"]["runtime"])
        _stage("measuring accuracy")
        accuracy = top1_accuracy(run, workload.data.val, batch_size, exported.device, prepare=exported.inputs)
        example = workload.example(batch_size)
        _stage("measuring latency")
        latency = measure_latency(run, exported.inputs(example), warmup=measure["latency_warmup"],
                                  repeats=measure["latency_repeats"], max_seconds=measure.get("latency_max_s", 3.0))
    return {
        "accuracy": accuracy, "latency_ms": latency.median_ms, "latency_p95_ms": latency.p95_ms,
        "latency_repeats": latency.repeats, "batch_size": batch_size, "runtime": runtime,
        "device": str(exported.device), "threads": torch.get_num_threads(),
        "torchao_imported": "torchao" in sys.modules, "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    warnings.filterwarnings("ignore")
    try:
        result = verify(args[0])
    except Exception as error:
        from slimtune.spaces.errors import one_line

        print(json.dumps({"error": one_line(error)}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
