"""The layering in pyproject.toml ([tool.importlinter]) holds: search above objectives above
spaces, storage apart; inside search the CLI, web, export/report/workers, then the driver; and
no import circle in any package. docs/architecture.md draws it."""

from __future__ import annotations

from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold(capsys) -> None:
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out


def test_every_code_folder_with_an_init_is_an_installed_package() -> None:
    """`[tool.setuptools] packages` lists the packages by hand (slimtune is a namespace over the
    four folders): a new subfolder missing there works in an editable install, where CI runs,
    and is absent from a built wheel, which is what the GPU machine installs."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {f"slimtune.{name}": path for name, path in
               ((dotted.removeprefix("slimtune."), path) for dotted, path in config["package-dir"].items())}
    found = set()
    for package, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *relative)))
    assert found == set(config["packages"])
