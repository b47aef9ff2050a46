"""The service's rules as plain functions: loopback, the token compare, path confinement."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimtune.search.web.security import Refused, check_can_listen, confine, is_loopback, token_matches


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.4", False), ("example.com", False), ("", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_no_token_means_loopback_only() -> None:
    check_can_listen("127.0.0.1", None)
    check_can_listen("0.0.0.0", "a-token")
    with pytest.raises(Refused, match="SLIMTUNE_API_TOKEN"):
        check_can_listen("0.0.0.0", None)
    with pytest.raises(Refused, match="not a loopback"):
        check_can_listen("10.0.0.1", "")


def test_token_matches_only_the_exact_bearer_token() -> None:
    assert token_matches("Bearer abc", "abc")
    assert token_matches("bearer abc", "abc")
    for header in (None, "", "Bearer", "Bearer ", "Bearer ab", "Bearer abcd", "Basic abc", "abc", "Bearer ABC"):
        assert not token_matches(header, "abc"), header


def test_confine_keeps_paths_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "out").symlink_to(tmp_path / "outside")
    (root / "a" / "up").symlink_to(root)  # a link that stays inside is fine
    assert confine(root, "a/b", "out") == (root / "a" / "b").resolve()
    assert confine(root, "a/up/c", "out") == (root / "c").resolve()
    assert confine(root, "new/deeper", "out") == (root / "new" / "deeper").resolve()
    for bad in ("../x", "a/../../x", "/etc", "out", "out/x", "", "..", "a\\..\\..\\x", "C:\\x", "a\x00b"):
        with pytest.raises(Refused) as refused:
            confine(root, bad, "out")
        assert refused.value.field == "out", bad
