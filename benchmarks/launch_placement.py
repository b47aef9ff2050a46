"""Why does a launch-bound GPU measurement not repeat between processes? (issue 24)

    python benchmarks/launch_placement.py [--runs 4] [--out benchmarks/results/measurement]

benchmarks/measurement.py found ResNet-18 fp32 eager at batch 1 on an H200 bimodal between
processes (medians 1.50 or 1.90 ms) while each process agreed with itself (interval +-0.6%).
At batch 1 the GPU waits on the CPU's launches, so the suspects are the CPU side: which core
and NUMA node the process lands on, the core's clock, and the GPU's clocks after idling. Each
variant below runs in `--runs` fresh processes, interleaved (variant order rotates per round,
so drift hits all alike); each process measures twice (after its warm-up and again 1 s later)
with the trial's rule (measure_latency) and reports the cores it ran on:
- unpinned: where the scheduler puts it (what measurement.py's runs did);
- near: pinned to the GPU's NUMA node (sysfs local_cpulist of its PCI device);
- far: pinned to the cores of another NUMA node, when there is one;
- core N: pinned to one core (the first of each node);
- warm 2 s: unpinned, 2 s of calls before measuring (GPU and CPU clocks ramped up).
Writes <out>/placement.json and placement.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def _cpulist(text: str) -> list[int]:
    """`0-7,16-23` -> [0, ..., 7, 16, ..., 23] (the kernel's cpulist format)."""
    cores: list[int] = []
    for part in text.strip().split(","):
        if part:
            low, _, high = part.partition("-")
            cores.extend(range(int(low), int(high or low) + 1))
    return cores


def device_local_cores(index: int = 0) -> list[int]:
    """The cores on the GPU's own NUMA node (sysfs `local_cpulist` of its PCI device), among
    those this process may use; [] where that is not known. A launch-bound model's latency is
    the CPU's: launches from the far socket cross the interconnect."""
    import torch

    try:
        properties = torch.cuda.get_device_properties(index)
        bus_id = "{:04x}:{:02x}:{:02x}.0".format(properties.pci_domain_id, properties.pci_bus_id, properties.pci_device_id)
    except (AttributeError, RuntimeError, AssertionError):
        return []
    try:
        with open(f"/sys/bus/pci/devices/{bus_id}/local_cpulist") as listing:
            local = _cpulist(listing.read())
    except (OSError, ValueError):
        return []
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    return [core for core in local if core in allowed]


def _nodes() -> dict[int, list[int]]:
    nodes = {}
    for path in sorted(Path("/sys/devices/system/node").glob("node[0-9]*")):
        nodes[int(path.name[4:])] = _cpulist((path / "cpulist").read_text())
    return nodes


def _node_of(core: int, nodes: dict[int, list[int]]) -> int | None:
    return next((node for node, cores in nodes.items() if core in cores), None)


def variants() -> dict[str, list[int] | str | None]:
    nodes = _nodes()
    near = device_local_cores(0)
    chosen: dict[str, Any] = {"unpinned": None, "near": near or None}
    far = [c for node, cores in nodes.items() for c in cores if c not in near] if near else []
    if far:
        chosen["far"] = far
    for node, cores in nodes.items():
        chosen[f"core {cores[0]}"] = [cores[0]]
    if len(nodes) <= 1:  # one node: a core from the middle and the end too
        allowed = sorted(os.sched_getaffinity(0))
        for core in (allowed[len(allowed) // 2], allowed[-1]):
            chosen[f"core {core}"] = [core]
    chosen["warm 2 s"] = "warm"
    return chosen


def one_process(name: str, cores: list[int] | str | None) -> dict[str, Any]:
    import torch
    import torchvision

    from slimtune.objectives.latency import measure_latency
    from slimtune.spaces.precision import math_mode

    if isinstance(cores, list):
        os.sched_setaffinity(0, cores)
    libc = ctypes.CDLL(None)
    model = torchvision.models.resnet18(weights=None).cuda().eval()
    example = torch.randn(1, 3, 224, 224, device="cuda")
    seen = set()
    with torch.inference_mode(), math_mode("fp32"):
        if cores == "warm":
            until = time.perf_counter() + 2.0
            while time.perf_counter() < until:
                model(example)
            torch.cuda.synchronize()
        first = measure_latency(model, example, warmup=10, repeats=50, max_seconds=3.0)
        seen.add(libc.sched_getcpu())
        time.sleep(1.0)
        second = measure_latency(model, example, warmup=10, repeats=50, max_seconds=3.0)
        seen.add(libc.sched_getcpu())
    return {"variant": name, "first_ms": first.median_ms, "second_ms": second.median_ms,
            "first_ci": [first.ci_low_ms, first.ci_high_ms], "cores_seen": sorted(seen),
            "affinity": sorted(os.sched_getaffinity(0))}


def _child(name, cores, queue) -> None:
    try:
        queue.put(one_process(name, cores))
    except BaseException as error:
        queue.put({"variant": name, "error": f"{type(error).__name__}: {error}"})


def in_fresh_process(name: str, cores) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(name, cores, queue))
    process.start()
    result = queue.get(timeout=300)
    process.join()
    return result


def summarise(results: list[dict[str, Any]], env: dict[str, Any], out: Path) -> str:
    """placement.json and placement.md from the processes' results (one dict each)."""
    names = list(dict.fromkeys(r["variant"] for r in results))
    table = {}
    for name in names:
        rows = [r for r in results if r["variant"] == name and "error" not in r]
        if rows:
            medians = [r["first_ms"] for r in rows]
            seconds = [r["second_ms"] for r in rows]
            table[name] = {"medians_ms": medians, "one_s_later_ms": seconds,
                           "spread_pct": 100 * (max(medians) / min(medians) - 1),
                           "within_process_pct": statistics.fmean(abs(b / a - 1) * 100 for a, b in zip(medians, seconds)),
                           "nodes_seen": sorted({n for r in rows for n in r.get("nodes_seen", [])})}
    out.mkdir(parents=True, exist_ok=True)
    (out / "placement.json").write_text(json.dumps({"environment": env, "table": table, "runs": results}, indent=2) + "\n")
    lines = ["# ResNet-18 fp32 eager, batch 1: where the process runs, fresh processes", "",
             ", ".join(f"{k} {v}" for k, v in env.items()) + ".", "",
             "| variant | medians, one per process (ms) | the same process 1 s later (ms) | spread | mean change 1 s later | NUMA nodes seen |",
             "|---|---|---|---|---|---|"]
    for name, row in table.items():
        lines.append(f"| {name} | {', '.join(f'{m:.3f}' for m in row['medians_ms'])} | "
                     f"{', '.join(f'{m:.3f}' for m in row['one_s_later_ms'])} | {row['spread_pct']:.1f}% | "
                     f"{row['within_process_pct']:.1f}% | {row['nodes_seen']} |")
    text = "\n".join(lines) + "\n"
    (out / "placement.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/measurement")
    parser.add_argument("--from-log", help="summarise the JSON lines a run printed (a run cut short by a time limit)")
    args = parser.parse_args(argv)
    if args.from_log:
        lines = [line for line in Path(args.from_log).read_text().splitlines() if line.startswith("{")]
        print(summarise([json.loads(line) for line in lines], {"from": Path(args.from_log).name}, Path(args.out)))
        return 0
    import torch

    chosen = variants()
    nodes = _nodes()
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    names = list(chosen)
    for round_ in range(args.runs):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            result = in_fresh_process(name, chosen[name])
            result["nodes_seen"] = sorted({_node_of(c, nodes) for c in result.get("cores_seen", [])} - {None})
            results.append(result)
            print(json.dumps(result), flush=True)
    env = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cpu_count": os.cpu_count(),
           "numa_nodes": {n: f"{c[0]}-{c[-1]} ({len(c)})" for n, c in nodes.items()},
           "wall_s": round(time.perf_counter() - started, 1)}
    print(summarise(results, env, Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
