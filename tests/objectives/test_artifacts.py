"""Each export format round-trips a small pruned + quantized model: written, loaded back through
`load_exported` (hashes checked), and giving the same logits; a changed file is refused."""

from __future__ import annotations

import json

import pytest
import torch

from slimtune.objectives.artifacts import (
    FORMATS, ArtifactError, FormatError, check_format, file_hashes, load_exported, write_artifact,
)
from slimtune.objectives.models import small_cnn
from slimtune.spaces import Recipe
from slimtune.spaces.pruning import prune
from slimtune.spaces.quantization import quantize

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def pruned_quantized():
    torch.manual_seed(0)
    model = small_cnn(10, SHAPE).eval()
    example = torch.randn(4, *SHAPE)
    prune(model, 0.5, example, num_classes=10)
    quantize(model, "int8_weight_only", torch.device("cpu"))
    return model.eval()


def _folder(tmp_path, model, fmt):
    folder = tmp_path / fmt
    example = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(1))
    info = write_artifact(model, fmt, folder, example, fresh_model=lambda: small_cnn(10, SHAPE))
    manifest = {
        "format": fmt, "files": file_hashes(folder), "measure": {"device": "cpu"},
        "input": {"dtype": "float32", "memory_format": "contiguous"},
        "workload": {"model": "slimtune:small_cnn", "input_shape": list(SHAPE), "num_classes": 10},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder, info


@pytest.mark.parametrize("fmt", ["pt2", "torchscript", "onnx", "state_dict"])
def test_format_round_trips_pruned_quantized(tmp_path, pruned_quantized, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="the onnx format is checked with onnxruntime")
    folder, info = _folder(tmp_path, pruned_quantized, fmt)
    exported = load_exported(folder)
    batch = torch.randn(7, *SHAPE)  # another batch size than the export's example
    with torch.inference_mode():
        expected = pruned_quantized(batch)
        got = exported(exported.inputs(batch))
    assert got.shape == (7, 10)
    torch.testing.assert_close(got.float(), expected.float(), atol=1e-4, rtol=1e-4)
    if fmt in ("pt2", "onnx"):
        assert info["batch"] == "dynamic"


def test_state_dict_restores_the_pruned_widths(tmp_path, pruned_quantized):
    folder, _ = _folder(tmp_path, pruned_quantized, "state_dict")
    model = load_exported(folder).model
    assert model[0].out_channels == pruned_quantized[0].out_channels < 64
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in pruned_quantized.parameters())


def test_a_tampered_file_is_refused(tmp_path, pruned_quantized):
    folder, _ = _folder(tmp_path, pruned_quantized, "pt2")
    data = bytearray((folder / "model.pt2").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.pt2").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the manifest"):
        load_exported(folder)


def test_an_unlisted_or_missing_file_is_refused(tmp_path, pruned_quantized):
    folder, _ = _folder(tmp_path, pruned_quantized, "pt2")
    (folder / "extra.py").write_text("print('hi')")
    with pytest.raises(ArtifactError, match="not listed"):
        load_exported(folder)
    (folder / "extra.py").unlink()
    (folder / "model.pt2").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_exported(folder)


def test_formats_that_cannot_hold_a_recipe_say_which_can():
    with pytest.raises(FormatError, match=r"AOTInductor.*formats that can: pt2, torchscript, onnx, state_dict$"):
        check_format("aoti", Recipe(), "cpu")
    with pytest.raises(FormatError, match="formats that can: pt2, onnx, state_dict"):
        check_format("torchscript", Recipe(quantization="int8_dynamic"), "cpu")
    with pytest.raises(FormatError, match="bfloat16"):
        check_format("onnx", Recipe(precision="bf16"), "cpu")
    check_format("aoti", Recipe(runtime="compile"), "cuda")
    assert set(FORMATS) == {"pt2", "torchscript", "onnx", "state_dict", "aoti"}



@pytest.fixture(scope="module")
def pruned():
    torch.manual_seed(0)
    model = small_cnn(10, SHAPE).eval()
    prune(model, 0.5, torch.randn(4, *SHAPE), num_classes=10)
    return model.eval()


@pytest.mark.parametrize("fmt", ["pt2", "torchscript", "onnx", "state_dict"])
def test_a_model_exported_at_a_large_batch_is_weights_plus_graph(tmp_path, pruned, pruned_quantized, fmt):
    """The example batch is not part of the files: 8192 x 1 x 8 x 8 floats are 2.1 MB, the pruned
    CNN's weights 0.1 MB; the files weigh the same as at batch 16, within 256 kB of the weights.
    (torch.jit.trace of torchao's int8 tensors stores a float copy of each weight besides its
    int8 one, so the weights-plus-graph bound is checked on the unquantized model there.)"""
    from slimtune.objectives.artifacts import file_sizes
    from slimtune.objectives.memory import weight_bytes

    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="the onnx format is checked with onnxruntime")
    model = pruned if fmt == "torchscript" else pruned_quantized
    sizes = {}
    for rows in (16, 8192):
        write_artifact(model, fmt, tmp_path / str(rows), torch.randn(rows, *SHAPE),
                       fresh_model=lambda: small_cnn(10, SHAPE))
        sizes[rows] = sum(file_sizes(tmp_path / str(rows)).values())
    assert abs(sizes[8192] - sizes[16]) < 4096, sizes
    assert sizes[8192] < weight_bytes(model) + 256_000, (sizes, weight_bytes(model))


def test_state_dict_of_a_bf16_quantized_convolution_loads_with_weights_only(tmp_path):
    """In bf16, torchao stores an int8 weight-only convolution as an IntxUnpackedToInt8Tensor,
    which a `weights_only` load in a fresh process (where torchao has registered none of its
    classes as safe yet) refused until the loader allowed torchao's tensor classes."""
    import subprocess
    import sys

    torch.manual_seed(0)
    model = small_cnn(10, SHAPE).eval().to(torch.bfloat16)
    quantize(model, "int8_weight_only", torch.device("cpu"))
    folder = tmp_path / "state_dict"
    folder.mkdir()
    write_artifact(model, "state_dict", folder, torch.randn(4, *SHAPE, dtype=torch.bfloat16),
                   fresh_model=lambda: small_cnn(10, SHAPE))
    manifest = {
        "format": "state_dict", "files": file_hashes(folder), "measure": {"device": "cpu"},
        "input": {"dtype": "bfloat16", "memory_format": "contiguous"},
        "workload": {"model": "slimtune:small_cnn", "input_shape": list(SHAPE), "num_classes": 10},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    batch = torch.randn(3, *SHAPE)
    torch.save(batch, tmp_path / "batch.pt")
    code = ("import sys, torch; from slimtune.objectives.artifacts import load_exported; "
            "m = load_exported(sys.argv[1]); b = torch.load(sys.argv[2]); "
            "torch.save(m(m.inputs(b)).float(), sys.argv[3])")
    done = subprocess.run([sys.executable, "-c", code, str(folder), str(tmp_path / "batch.pt"), str(tmp_path / "out.pt")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with torch.inference_mode():
        torch.testing.assert_close(torch.load(tmp_path / "out.pt"), model(batch.bfloat16()).float())
