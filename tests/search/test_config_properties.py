"""Property-based: random and broken study files give a valid configuration or one line
naming the problem (`StudyFileError`), never a traceback; a valid configuration survives the
round trip through storage that `slimtune worker` relies on."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from slimtune.search.config import StudyConfig, StudyFileError, load_config, parse_config
from tests.conftest import TINY_STUDY

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=8,
)
FIELDS = [(section, field) for section, fields in TINY_STUDY.items() for field in fields] + [
    ("workers", "heartbeat_interval_s"), ("workers", "grace_period_s"), ("workers", "max_retries"),
    ("space", "precision"), ("space", "prune_importance"), ("space", "kd_alpha"), ("target", "device"),
    ("baseline", "checkpoint"), ("workload", "data_root"), ("bogus", "field"), ("space", "bogus"),
]


@st.composite
def broken_studies(draw: st.DrawFn) -> dict[str, Any]:
    """The tiny study with a few fields dropped, replaced by anything, or added; sometimes a
    whole section replaced by a scalar."""
    raw: dict[str, Any] = {section: dict(fields) for section, fields in TINY_STUDY.items()}
    for _ in range(draw(st.integers(1, 4))):
        section, field = draw(st.sampled_from(FIELDS))
        action = draw(st.sampled_from(["drop", "set", "set", "section"]))
        if action == "drop":
            raw.get(section, {}).pop(field, None) if isinstance(raw.get(section), dict) else None
        elif action == "section":
            raw[section] = draw(values)
        else:
            if not isinstance(raw.get(section), dict):
                raw[section] = {}
            raw[section][field] = draw(values)
    return raw


def assert_one_line(error: StudyFileError, source: str) -> None:
    message = str(error)
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(f"{source}: "), message


@SETTINGS
@given(raw=broken_studies())
@example(raw={**TINY_STUDY, "target": {**TINY_STUDY["target"], "\n": 0}})  # once failed CI: a raw newline
@example(raw={**TINY_STUDY, "a\rb": {}})
def test_any_broken_study_is_one_line_or_a_valid_config(raw: dict[str, Any]) -> None:
    try:
        config = parse_config(raw, "study.toml")
    except StudyFileError as error:
        assert_one_line(error, "study.toml")
        return
    # Valid: what `run` stores and `worker` reads back is the same configuration.
    assert parse_config(config.model_dump(mode="json"), "stored") == config


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml(str(k))} = {_toml(v)}" for k, v in value.items() if v is not None) + "}"
    return repr(value)


def _file(raw: dict[str, Any]) -> str:
    lines = []
    for section, fields in raw.items():
        if isinstance(fields, dict):
            lines.append(f"[{_toml(str(section))}]")
            lines += [f"{_toml(str(k))} = {_toml(v)}" for k, v in fields.items() if v is not None]
        elif fields is not None:
            lines.insert(0, f"{_toml(str(section))} = {_toml(fields)}")
    return "\n".join(lines) + "\n"


@SETTINGS
@given(raw=broken_studies(), overrides=st.dictionaries(
    st.sampled_from(["study.n_trials", "study.sampler", "study.seed"]), scalars, max_size=3))
def test_broken_study_files_on_disk_give_one_line(tmp_path: Path, raw: dict[str, Any], overrides: dict) -> None:
    path = tmp_path / "study.toml"
    path.write_text(_file(raw))
    try:
        load_config(path, overrides)
    except StudyFileError as error:
        assert_one_line(error, str(path))


@SETTINGS
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_random_bytes_are_one_line_too(tmp_path: Path, text: str | bytes) -> None:
    path = tmp_path / "random.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        config = load_config(path)
    except StudyFileError as error:
        assert_one_line(error, str(path))
    else:
        assert isinstance(config, StudyConfig)
