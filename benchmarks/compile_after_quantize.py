"""Does quantizing one model change how the next one compiles, in the same process? (issue 22)

    python benchmarks/compile_after_quantize.py [--out benchmarks/results/screen]

torchao's int8/int4 transforms switch on inductor's coordinate-descent tuning for the whole
process unless their config says `set_inductor_config=False` (spaces/quantization.py now
does). The target screen quantizes in the trial worker, so with the default every later
compile there, quantized or not, missed inductor's cache and tuned for longer. One process,
ResNet-18 fp16 channels_last at batch 256 (random weights), each step timing the first call of
a fresh `torch.compile`: cold; again (inductor's cache warm); after slimtune's quantize() of
another copy; after torchao's own config setter (what the default did). Writes
<out>/compile-after-quantize.json and prints each step as it ends.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/screen")
    args = parser.parse_args(argv)
    import torch
    import torch._inductor.config as inductor
    import torchvision

    from slimtune.spaces.quantization import quantize

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    batch, side = (256, 224) if device.type == "cuda" else (2, 32)
    model = torchvision.models.resnet18(weights=None).to(device=device, dtype=dtype).eval()
    model = model.to(memory_format=torch.channels_last)
    example = torch.randn(batch, 3, side, side, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps: list[dict] = []

    def compile_once(what: str) -> None:
        torch._dynamo.reset()
        compiled = torch.compile(copy.deepcopy(model))
        started = time.perf_counter()
        with torch.inference_mode():
            compiled(example)
        if device.type == "cuda":
            torch.cuda.synchronize()
        steps.append({"step": what, "first_call_s": round(time.perf_counter() - started, 2),
                      "coordinate_descent_tuning": bool(inductor.coordinate_descent_tuning)})
        print(json.dumps(steps[-1]), flush=True)
        (out / "compile-after-quantize.json").write_text(json.dumps(
            {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
             "steps": steps}, indent=2) + "\n")

    compile_once("cold")
    compile_once("again (cache warm)")
    quantize(copy.deepcopy(model), "int8_weight_only", device)
    compile_once("after slimtune's int8_weight_only quantize() of another copy")
    import torchao.quantization.utils

    torchao.quantization.utils.recommended_inductor_config_setter()  # what torchao's default did
    compile_once("after torchao's recommended_inductor_config_setter() (the old default)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
