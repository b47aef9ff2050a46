"""The service's rules on what a client may ask for: who may change anything (a bearer token,
compared in constant time), where a server may listen without one (loopback only), which
workloads an HTTP-created study may name (built-ins: a client never makes the server import a
module), and where files may go (inside a configured root: no `..`, no absolute path, no
symlink out).

Plain functions raising `Refused(field, message)`: the service turns them into 401/422
answers, and they can be tested without a server.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from slimtune.search.config import StudyConfig

TOKEN_ENV = "SLIMTUNE_API_TOKEN"
BUILTIN_MODEL_NAMESPACES = ("slimtune", "torchvision")
BUILTIN_DATA_NAMESPACES = ("sklearn", "torchvision")
#: the rule `check_builtin_workload` enforces on `workload.model` before anything is imported
MODEL_PATTERN = rf"^({'|'.join(BUILTIN_MODEL_NAMESPACES)}):"


def model_names() -> list[str]:
    """Every `workload.model` an HTTP client may name, as the OpenAPI schema lists them: the
    built-ins and torchvision's classification builders (what MODEL_PATTERN lets through and
    objectives' model_factory then resolves; anything else is a 422 naming the field)."""
    import torchvision

    from slimtune.objectives.models import BUILTIN_MODELS

    return ([f"slimtune:{name}" for name in sorted(BUILTIN_MODELS)]
            + [f"torchvision:{name}" for name in torchvision.models.list_models(module=torchvision.models)])


def data_pattern() -> str:
    """`workload.data` over HTTP, as the OpenAPI schema states it (JSON Schema: a regex search,
    `$` the end of the text) and `check_builtin_workload` enforces it: `elpv` or `elpv:<options>`,
    `sklearn:<name>` or `imagefolder:<path>` (non-empty), `torchvision:<one of its dataset classes>`.
    A function: the dataset names come from the installed torchvision, imported only when asked."""
    import torchvision

    datasets = "|".join(re.escape(name) for name in getattr(torchvision.datasets, "__all__", ()))
    return rf"^(elpv(:|$)|(sklearn|imagefolder):[\s\S]|torchvision:({datasets})$)"


class Refused(ValueError):
    """A request the rules refuse; `field` is the body field at fault (dotted), if any."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_can_listen(host: str, token: str | None) -> None:
    """With no token, anyone who reaches the port could launch studies: only loopback then."""
    if not token and not is_loopback(host):
        raise Refused("--host", f"{host!r} is not a loopback address; set {TOKEN_ENV} to serve on it")


def token_matches(authorization: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time (no early exit on a prefix)."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def confine(root: Path, relative: str, field: str) -> Path:
    """`root / relative`, refused unless it stays inside `root` once every symlink is resolved."""
    if not relative or "\x00" in relative:
        raise Refused(field, "must be a non-empty relative path")
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).is_absolute() or PureWindowsPath(relative).drive:
        raise Refused(field, f"{relative!r} is absolute; give a path relative to the server's root")
    if ".." in PurePosixPath(relative.replace("\\", "/")).parts:
        raise Refused(field, f"{relative!r} contains '..'; give a path inside the server's root")
    if any(len(os.fsencode(part)) > 255 for part in PurePosixPath(relative).parts):  # NAME_MAX: ENAMETOOLONG
        raise Refused(field, "a name in the path is longer than 255 bytes")
    base = root.resolve()
    try:
        target = (base / relative).resolve()  # follows symlinks of the parts that exist
    except (OSError, ValueError) as error:
        raise Refused(field, f"{relative!r} is not a usable path ({error})") from None
    if target != base and base not in target.parents:
        raise Refused(field, f"{relative!r} leads outside the server's root (a symlink?)")
    return target


def check_builtin_workload(config: StudyConfig, data_dir: Path | None) -> StudyConfig:
    """The config with its paths confined to `data_dir`, or `Refused` naming the field.

    Models: `slimtune:<name>` or `torchvision:<name>`; data: `sklearn:digits`,
    `torchvision:<Dataset>`, `elpv[:4class]`, `imagefolder:<path>`; paths (data_root, imagefolder, checkpoint)
    only relative to the server's `--data-dir`.
    """
    workload, baseline = config.workload, config.baseline
    if not re.match(MODEL_PATTERN, workload.model):  # a `slimtune:` or `torchvision:` prefix
        raise Refused("workload.model", f"{workload.model!r}: over HTTP only built-in models are allowed: "
                                        "'slimtune:<name>' or 'torchvision:<name>'")
    namespace, _, name = workload.data.partition(":")
    if namespace == "torchvision":
        import torchvision

        if name not in getattr(torchvision.datasets, "__all__", ()):
            raise Refused("workload.data", f"torchvision has no dataset {name!r}")
    elif namespace == "elpv":  # the installed elpv-dataset package (objectives/elpv.py checks the rest)
        pass
    elif namespace not in (*BUILTIN_DATA_NAMESPACES, "imagefolder") or not name:
        raise Refused("workload.data", f"{workload.data!r}: over HTTP only built-in data sets are allowed: "
                                       "'sklearn:digits', 'torchvision:<Dataset>', 'elpv' or 'imagefolder:<path>'")

    def inside(value: str, field: str) -> str:
        if data_dir is None:
            raise Refused(field, "paths are refused over HTTP unless the server was started with --data-dir")
        return str(confine(data_dir, value, field))

    changes: dict[str, dict[str, str]] = {}
    if workload.data_root is not None:
        changes.setdefault("workload", {})["data_root"] = inside(workload.data_root, "workload.data_root")
    if namespace == "imagefolder":
        changes.setdefault("workload", {})["data"] = "imagefolder:" + inside(name, "workload.data")
    if baseline.checkpoint is not None:
        changes["baseline"] = {"checkpoint": inside(baseline.checkpoint, "baseline.checkpoint")}
    if not changes:
        return config
    raw = config.model_dump(mode="json")
    for section, fields in changes.items():
        raw[section].update(fields)
    return StudyConfig.model_validate(raw)


def token_from_env() -> str | None:
    return os.environ.get(TOKEN_ENV) or None
