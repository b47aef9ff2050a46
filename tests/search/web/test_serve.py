"""`slimtune serve` refuses, before listening, what it must not do."""

from __future__ import annotations

import pytest

from slimtune.search.cli import main


def test_no_token_no_public_address(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SLIMTUNE_API_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slimtune: error: --host: '0.0.0.0' is not a loopback address")
    assert "SLIMTUNE_API_TOKEN" in err


def test_a_storage_url_that_is_no_url(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SLIMTUNE_API_TOKEN", raising=False)
    assert main(["serve", "--storage", "not a url", "--port", "1"]) == 2
    assert "not a SQLAlchemy URL" in capsys.readouterr().err
