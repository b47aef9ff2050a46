"""How a worker joins a study it did not create: the configuration comes from storage, so
`slimtune worker NAME` on another machine needs no study file."""

from __future__ import annotations

from slimtune.storage import SlotBook

from slimtune.search.config import StudyConfig


def stored_config(study_name: str, storage_url: str) -> StudyConfig:
    """The study file a study was last run with, from its user attributes: what a worker on
    another machine runs, with no file of its own."""
    from slimtune.search.config import STUDY_FILE_ATTR, StudyFileError, parse_config
    from slimtune.search.results import open_study

    study, repository = open_study(study_name, storage_url)
    repository.engine.dispose()
    raw = study.user_attrs.get(STUDY_FILE_ATTR)
    if raw is None:
        raise StudyFileError(
            f"study {study_name!r} keeps no study file (it was created by an older slimtune): run "
            f"`slimtune run FILE --storage URL` once to store it"
        )
    return parse_config(raw, f"study {study_name!r}", stored=True)


def study_is_done(study_name: str, storage_url: str) -> bool:
    """True when the study's trial budget is used up (no slot claimed, none free)."""
    from slimtune.storage import connect

    engine = connect(storage_url, must_exist=True)
    try:
        usage = SlotBook(engine).usage(study_name)
    finally:
        engine.dispose()
    return usage.n_trials > 0 and usage.done >= usage.n_trials
