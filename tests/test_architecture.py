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
