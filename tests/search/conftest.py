"""One small real study for the service, report and browser tests, run once per session."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import TINY_STUDY, toml_value

#: the tiny study with two more trials, so its front has several points
SERVED = {**TINY_STUDY, "study": {**TINY_STUDY["study"], "name": "served", "n_trials": 6}}


def study_toml(sections: dict) -> str:
    return "\n".join(
        f"[{section}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in fields.items())
        for section, fields in sections.items()
    )


@dataclass(frozen=True)
class Served:
    url: str
    name: str
    folder: Path


@pytest.fixture(scope="session")
def served_study(tmp_path_factory: pytest.TempPathFactory) -> Served:
    """`slimtune run` on a 6-trial study (about 15 s on 2 cores); tests only read it."""
    from slimtune.search.cli import main

    folder = tmp_path_factory.mktemp("served")
    study_file = folder / "served.toml"
    study_file.write_text(study_toml(SERVED))
    url = f"sqlite:///{folder / 'served.db'}"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", str(study_file), "--storage", url, "--no-progress"])
    assert code == 0, err.getvalue()
    return Served(url, SERVED["study"]["name"], folder)


def plotly_array(value):
    """An array from a figure's JSON: plotly sends numpy arrays as {dtype, bdata[, shape]}."""
    import base64

    import numpy as np

    if not isinstance(value, dict):
        return np.asarray(value)
    array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    shape = value.get("shape")
    return array.reshape([int(n) for n in str(shape).split(",")]) if shape else array
