"""Keys come from the environment or owner-only files; secrets never print."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from secure_etl.config import HmacKeyConfig
from secure_etl.security.hmac_keys import KeyUnavailable, load_hmac_key


def test_the_environment_wins_over_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("K1", "ab" * 32)
    key = load_hmac_key("k1", HmacKeyConfig(env="K1", file="k.key", create=True), tmp_path)
    assert key.secret == bytes.fromhex("ab" * 32)
    assert not (tmp_path / "k.key").exists()


def test_a_base64_key_is_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("K1", base64.b64encode(b"s" * 32).decode())
    assert load_hmac_key("k1", HmacKeyConfig(env="K1"), tmp_path).secret == b"s" * 32


def test_a_created_key_file_is_owner_only_and_stable(tmp_path):
    config = HmacKeyConfig(file="keys/k.key", create=True)
    first = load_hmac_key("k1", config, tmp_path)
    second = load_hmac_key("k1", config, tmp_path)
    assert first.secret == second.secret and len(first.secret) == 32
    assert stat.S_IMODE((tmp_path / "keys/k.key").stat().st_mode) == 0o600


def test_a_world_readable_key_file_is_refused(tmp_path):
    path = tmp_path / "k.key"
    path.write_text("ab" * 32)
    os.chmod(path, 0o644)
    with pytest.raises(KeyUnavailable, match="chmod 600"):
        load_hmac_key("k1", HmacKeyConfig(file=str(path)), tmp_path)


def test_a_short_key_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("K1", "abcd")
    with pytest.raises(KeyUnavailable, match=r"\$K1: the key has 2 bytes"):
        load_hmac_key("k1", HmacKeyConfig(env="K1"), tmp_path)


def test_a_missing_key_says_where_it_looked(tmp_path):
    with pytest.raises(KeyUnavailable, match=r"\$K9 is not set and key file .*k\.key does not"):
        load_hmac_key("k1", HmacKeyConfig(env="K9", file="k.key"), tmp_path)


def test_the_secret_never_appears_in_repr(tmp_path, monkeypatch):
    monkeypatch.setenv("K1", "cd" * 32)
    key = load_hmac_key("k1", HmacKeyConfig(env="K1"), tmp_path)
    assert "cd" * 8 not in repr(key) and "k1" in repr(key)


def test_a_key_file_others_can_read_is_refused_at_start_up(platform):
    import os

    from secure_etl.defs.build import build_definitions
    from secure_etl.errors import UserError

    key = platform.resolved_state_dir() / platform.keys["pseudo-1"].file
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_bytes(b"x" * 32)
    os.chmod(key, 0o644)
    with pytest.raises(UserError, match=f"refusing to start: {key}: mode 0644"):
        build_definitions(platform)
    os.chmod(key, 0o600)
    assert build_definitions(platform)
