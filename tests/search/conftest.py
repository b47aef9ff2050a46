"""One small real study for the service, report and browser tests, run once per session."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
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
    """`slimtune run` on a 6-trial study (about 15 s on 2 cores), once for the whole run: with
    pytest-xdist the first worker to ask runs it under a file lock in the folder the workers
    share (as the baseline cache in tests/conftest.py), the others wait and reuse it. Tests
    only read it (one export adds a row no other test counts)."""
    from slimtune.search.cli import main

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this run
    folder = root / "served"
    folder.mkdir(exist_ok=True)
    url = f"sqlite:///{folder / 'served.db'}"
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (folder / "done").exists():
            study_file = folder / "served.toml"
            study_file.write_text(study_toml(SERVED))
            (folder / "served.db").unlink(missing_ok=True)  # a half-built one from a worker that died
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(["run", str(study_file), "--storage", url, "--no-progress"])
            assert code == 0, err.getvalue()
            (folder / "done").touch()
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
