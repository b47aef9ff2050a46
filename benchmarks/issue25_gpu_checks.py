"""Two checks for issue 25 on a GPU machine, in one run (results as JSON on stdout and in OUT):

1. torchao's int8/fp8 configs as slimtune builds them (version 2 where a config has versions):
   each choice quantizes a small CNN (convs + Linear), runs eager and compiled, and every
   warning raised is counted (torchao 0.17 warned "PlainLayout is deprecated" per layer with
   its version-1 defaults). Coverage as `quantize` reports it.
2. AOTInductor: the small CNN packaged with `write_artifact(..., "aoti")`, then loaded by a
   fresh process through `verify_in_fresh_process` with a 60 s limit: the verdict is what
   `slimtune export --format aoti` would print.

`python benchmarks/issue25_gpu_checks.py [cuda|cpu] OUT_DIR` (each result is printed as it is
measured; the whole report at the end). On the H200 (2026-12-01) a first run printed nothing in
its 160 s limit (it printed only at the end then), so the GPU figures are still to be measured.
"""

from __future__ import annotations

import collections
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

#: the choices whose torchao config changed version on 0.17 (compiled too; the others eager only)
COMPILED = ("int8_weight_only", "int8_dynamic")
LOADER = """
import json, sys, torch
print(json.dumps({"stage": "loading the model"}), flush=True)
model = torch._inductor.aoti_load_package(sys.argv[1] + "/model.pt2")
print(json.dumps({"stage": "measuring accuracy"}), flush=True)
x = torch.randn(4, 3, 32, 32, device="DEVICE")
print(json.dumps({"loaded": True, "shape": list(model(x).shape)}))
"""


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(1024, 256), nn.ReLU(), nn.Linear(256, 10))


def quantization_checks(device: torch.device) -> dict:
    from slimtune.spaces.quantization import _plan, coverage, quantize

    results = {}
    choices = ["int8_weight_only", "int8_dynamic", "int4_weight_only"] + (["fp8_dynamic"] if device.type == "cuda" else [])
    for choice in choices:
        entry: dict = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                entry["versions"] = [getattr(config, "version", None) for config, _ in _plan(choice, device)]
                model = small_cnn().to(device).eval()
                report = quantize(model, choice, device)
                entry["coverage"] = coverage(report.quantized, report.weight_share, report.layer_count)
                entry["skipped"] = report.skipped
                x = torch.randn(32, 3, 32, 32, device=device)
                with torch.no_grad():
                    eager = model(x)
                    if choice in COMPILED:
                        started = time.perf_counter()
                        compiled = torch.compile(model)(x)
                        entry["compile_s"] = round(time.perf_counter() - started, 1)
                        entry["max_abs_diff_eager_vs_compiled"] = float((eager.float() - compiled.float()).abs().max())
                entry["ok"] = bool(torch.isfinite(eager.float()).all())
            except Exception as error:  # recorded, the next choice still runs
                entry["ok"] = False
                entry["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        counts = collections.Counter(f"{w.category.__name__}: {str(w.message).splitlines()[0][:160]}" for w in caught)
        entry["warnings"] = dict(counts.most_common(8))
        results[choice] = entry
        print(json.dumps({choice: entry}), flush=True)  # as it goes: a run cut by a time limit keeps what it measured
        torch._dynamo.reset()
    return results


def aoti_check(device: torch.device, folder: Path) -> dict:
    from slimtune.objectives.artifacts import write_artifact
    from slimtune.search.export.build import verify_in_fresh_process

    model = small_cnn().to(device).eval()
    started = time.perf_counter()
    try:
        write_artifact(model, "aoti", folder, torch.randn(256, 3, 32, 32, device=device))
    except Exception as error:
        return {"written": False, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
    written_s = time.perf_counter() - started
    size = (folder / "model.pt2").stat().st_size
    started = time.perf_counter()
    print(json.dumps({"aoti_package_bytes": size, "compile_and_write_s": round(written_s, 1)}), flush=True)
    verdict = verify_in_fresh_process(folder, 60, command=(sys.executable, "-c", LOADER.replace("DEVICE", device.type)))
    return {"written": True, "package_bytes": size, "compile_and_write_s": round(written_s, 1),
            "verdict": verdict, "verify_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    device = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else ".")
    out.mkdir(parents=True, exist_ok=True)
    from importlib import metadata

    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "torchao": metadata.version("torchao"),
        "quantization": quantization_checks(device),
        "aoti": aoti_check(device, out / "aoti-package"),
    }
    text = json.dumps(result, indent=1)
    print(text)
    (out / "issue25-gpu-checks.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
