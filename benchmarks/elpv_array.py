"""ELPV's images as one compressed array file, for a machine without the `elpv-dataset` package
(the GPU machines have no network): the 2,624 cells resized to one size, uint8, with their
defect probabilities, in an .npz that `data = "elpv"` reads through `data_root`.

    python benchmarks/elpv_array.py --size 96 --out .gpu/elpv-96.npz

The images are licensed CC-BY-NC-SA-4.0 (the package's licence): never commit the file.
The split, the labels and the final resize to the study's input shape are the loader's
(objectives/workloads.py), so the same seed gives the same split as the package does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch


def resized_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N x size x size, probabilities), resized as the loader resizes (bilinear, antialiased)."""
    from elpv_dataset.utils import load_dataset

    images, probs, _ = load_dataset()
    pixels = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).float()
    out = torch.cat([
        torch.nn.functional.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        for chunk in pixels.split(256)
    ])
    return out.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy(), np.asarray(probs, dtype=np.float64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=96, help="side of the square images (pixels)")
    parser.add_argument("--out", required=True, help="the .npz to write")
    args = parser.parse_args(argv)
    images, probs = resized_images(args.size)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=images, probs=probs)
    print(f"wrote {out}: {len(images)} images at {args.size}x{args.size}, {out.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
