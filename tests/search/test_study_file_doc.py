"""docs/study-file.md is generated from the study file's models: the committed page must be what
the models give now, a field added to a model must change the page (so a stale page fails), a
field without help must be refused, and the command the page names must work."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import Field, create_model

from slimtune.search import study_file_doc
from slimtune.search.config import BudgetSection, StudyConfig, _Section
from slimtune.spaces.registry import study_fields


def test_the_committed_page_is_what_the_models_give() -> None:
    assert study_file_doc.PAGE.exists(), f"docs/study-file.md is missing: run `{study_file_doc.COMMAND}`"
    assert study_file_doc.PAGE.read_text() == study_file_doc.render(), (
        f"docs/study-file.md disagrees with search/config.py or the knobs: run `{study_file_doc.COMMAND}`")


def test_the_page_names_the_command_that_regenerates_it_at_its_top() -> None:
    top = study_file_doc.render().splitlines()[:8]
    assert any(f"`{study_file_doc.COMMAND}`" in line for line in top)
    assert study_file_doc.COMMAND == "python -m slimtune.search.study_file_doc"


def test_every_section_and_field_is_on_the_page_with_its_default() -> None:
    page = study_file_doc.render()
    for section, field in StudyConfig.model_fields.items():
        assert f"## [{section}]" in page
        model = next((arg for arg in (field.annotation, *getattr(field.annotation, "__args__", ()))
                      if isinstance(arg, type) and issubclass(arg, _Section)), None)
        for name, sub in (model.model_fields.items() if model else ()):
            row = next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))
            if sub.is_required():
                assert "*required*" in row
            elif sub.default is not None:
                assert f"`{study_file_doc._toml(sub.default)}`" in row, row
    assert "| `trial_timeout_s` | number | `60.0` | > 0 |" in page
    assert '| `sampler` | string | `"tpe"` | `"tpe"`, `"nsga2"`, `"gp"`, `"random"` |' in page


def test_the_knobs_bounds_and_choices_come_from_the_registry() -> None:
    page = study_file_doc.render()
    for knob_field in study_fields():
        if knob_field.name == "runtime":  # its choices are [target] runtimes
            assert all(f'`"{value}"`' in page for value in knob_field.allowed)
        elif knob_field.kind == "range":
            assert f"| `{knob_field.name}` | `[low, high]` | *absent*: the whole range | within [{knob_field.bounds[0]}, " \
                   f"{knob_field.bounds[1]}]" in page
        else:
            row = next(line for line in page.splitlines() if line.startswith(f"| `{knob_field.name}` |"))
            assert all(f"`{study_file_doc._toml(value)}`" in row for value in knob_field.allowed), row
            assert knob_field.help in row


def _with_extra_budget_field(**field) -> type[StudyConfig]:
    budget = create_model("BudgetSection", __base__=BudgetSection, **field)
    return create_model("StudyConfig", __base__=StudyConfig, budget=(budget, budget()))


def test_a_field_added_to_a_model_changes_the_page_so_a_stale_page_fails(tmp_path) -> None:
    extended = _with_extra_budget_field(
        warmup_budget_s=(float, Field(default=5.0, gt=0, description="Seconds of warm-up a trial may spend.")))
    page = study_file_doc.render(extended)
    assert page != study_file_doc.PAGE.read_text()
    assert "| `warmup_budget_s` | number | `5.0` | > 0 | Seconds of warm-up a trial may spend. |" in page

    # what `--check` does with a page written before the field existed
    stale = tmp_path / "study-file.md"
    stale.write_text(study_file_doc.render())
    assert study_file_doc.main(["--check", "--out", str(stale)]) == 0
    stale.write_text(page)
    assert study_file_doc.main(["--check", "--out", str(stale)]) == 1


def test_a_field_without_help_is_refused() -> None:
    extended = _with_extra_budget_field(undocumented_s=(float, 1.0))
    with pytest.raises(study_file_doc.MissingHelp, match=r"\[budget\] undocumented_s: no help"):
        study_file_doc.render(extended)


def test_the_command_the_page_names_checks_the_committed_page() -> None:
    done = subprocess.run([sys.executable, "-m", "slimtune.search.study_file_doc", "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "matches the models" in done.stdout
