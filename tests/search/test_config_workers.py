"""The [workers] section: heartbeat settings with defaults, checked like every other field, and
not part of what a resumed study must keep."""

from __future__ import annotations

import pytest

from slimtune.search.config import StudyFileError, WorkersSection, load_config


def test_defaults_and_identity(write_study) -> None:
    config = load_config(write_study())
    assert config.workers == WorkersSection(heartbeat_interval_s=10, grace_period_s=60, max_retries=2)
    changed = load_config(write_study({"workers": {"heartbeat_interval_s": 2, "grace_period_s": 5}}, name="b.toml"))
    assert changed.identity() == config.identity()  # heartbeats do not change results: resume is fine


@pytest.mark.parametrize("fields, message", [
    ({"heartbeat_interval_s": 0}, "workers.heartbeat_interval_s = 0: Input should be greater than 0"),
    ({"heartbeat_interval_s": 1.5}, "workers.heartbeat_interval_s = 1.5"),
    ({"heartbeat_interval_s": 10, "grace_period_s": 15}, "workers.grace_period_s = 15: must be at least twice "
                                                          "heartbeat_interval_s (20)"),
    ({"max_retries": -1}, "workers.max_retries = -1"),
    ({"heartbeat": 3}, "workers.heartbeat: unknown field; allowed: heartbeat_interval_s, grace_period_s, max_retries"),
])
def test_bad_worker_settings_are_one_line(write_study, fields, message) -> None:
    with pytest.raises(StudyFileError) as caught:
        load_config(write_study({"workers": fields}))
    assert message in str(caught.value)


def test_a_slow_heartbeat_alone_lengthens_the_default_grace_period(write_study) -> None:
    """Setting only the heartbeat must not turn the default grace period into an error, and the
    section must survive a dump and a second validation (the HTTP API does both)."""
    config = load_config(write_study({"workers": {"heartbeat_interval_s": 520}}))
    assert config.workers.grace_period_s == 6 * 520
    assert WorkersSection.model_validate(config.workers.model_dump()) == config.workers
    assert load_config(write_study({"workers": {"heartbeat_interval_s": 5}}, name="b.toml")).workers.grace_period_s == 60
