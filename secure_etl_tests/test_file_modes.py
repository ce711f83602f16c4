"""Files, owners and modes: the state is owner-only whatever the umask, and a key (or a
lock or directory guarding one) that another user owns or that is a link is refused."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from secure_etl import cli
from secure_etl.config import HmacKeyConfig
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import CHECKS_JOB, RENEWAL_JOB
from secure_etl.defs.demo import run_demo
from secure_etl.pki.internal_ca import InternalCA
from secure_etl.pki.renewal import certificate_store
from secure_etl.pki.store import PRIVATE_KEY_CHECK, CertificateStore
from secure_etl.security.files import InsecureSecretFile, private_dir, read_secret, write_secret
from secure_etl.security.hmac_keys import KeyUnavailable, load_hmac_key

NOBODY = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


@pytest.mark.parametrize("umask", [0o000, 0o022], indirect=True)
def test_the_demo_leaves_nothing_others_can_use_whatever_the_umask(platform, umask, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    state = platform.resolved_state_dir()
    textfile = state / platform.monitoring.prometheus_textfile
    run_demo(platform, partitions=1, log=lambda _: None)

    seen = {p.relative_to(state).as_posix() for p in state.rglob("*")}
    assert {"keys", "ca", "audit", "certs", "data/raw", "warehouse.duckdb"} <= seen
    loose = {
        f"{p.relative_to(state)} {_mode(p):04o}"
        for p in [state, *state.rglob("*")]
        if not p.is_symlink()  # `current`: a link has no mode of its own
        and p not in (textfile, textfile.parent)  # node_exporter reads it: 0644
        and _mode(p) & 0o077
    }
    assert loose == set()
    assert _mode(textfile) == 0o644


def test_a_looser_data_directory_is_repaired_and_the_repair_logged(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o777)  # noqa: S103 - what a careless umask leaves
    with caplog.at_level(logging.WARNING):
        private_dir(data)
    assert _mode(data) == 0o700
    assert f"{data}: mode 0777 lets others in; changed to 0700" in caplog.text


def test_a_looser_audit_log_is_repaired_on_the_next_append(platform, caplog):
    from secure_etl.security.audit_trail import platform_audit_log

    audit = platform_audit_log(platform)
    audit.append(actor="test", action="first")
    os.chmod(audit.path, 0o644)  # made before modes were set, or by hand
    with caplog.at_level(logging.WARNING):
        audit.append(actor="test", action="second")
    assert _mode(audit.path) == 0o600
    assert "mode 0644 let others use it; repaired to 0600" in caplog.text


def test_a_key_directory_others_may_write_is_refused_and_one_they_may_read_repaired(tmp_path):
    ca = InternalCA("test", tmp_path / "ca")
    (tmp_path / "ca").mkdir()
    os.chmod(tmp_path / "ca", 0o777)  # noqa: S103
    with pytest.raises(InsecureSecretFile, match=r"ca: mode 0777 lets others replace the keys"):
        ca.ensure_root()
    assert not ca.key_path.exists()

    os.chmod(tmp_path / "ca", 0o755)  # noqa: S103 - readable, not writable: tightened
    ca.ensure_root()
    assert _mode(tmp_path / "ca") == 0o700


def test_a_key_directory_owned_by_another_user_is_refused(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    os.chown(keys, NOBODY, NOBODY)
    with pytest.raises(InsecureSecretFile, match=rf"{keys}: a directory of keys owned by uid "):
        private_dir(keys, holds_keys=True)

    write_secret(tmp_path / "k.key", b"secret")
    os.rename(tmp_path / "k.key", keys / "k.key")
    with pytest.raises(InsecureSecretFile, match=f"owned by uid {NOBODY}"):
        read_secret(keys / "k.key")


def test_a_key_file_owned_by_another_user_is_refused_naming_the_file_and_owner(tmp_path):
    config = HmacKeyConfig(file="keys/k.key", create=True)
    load_hmac_key("k1", config, tmp_path)
    key_file = tmp_path / "keys/k.key"
    os.chown(key_file, NOBODY, NOBODY)  # still 0600: only the owner is wrong

    with pytest.raises(KeyUnavailable) as refused:
        load_hmac_key("k1", config, tmp_path)
    message = str(refused.value)
    assert str(key_file) in message and f"owned by uid {NOBODY} (nobody)" in message


def test_a_symlinked_key_file_is_refused(tmp_path):
    write_secret(tmp_path / "elsewhere.key", b"ab" * 32)
    (tmp_path / "keys").mkdir(mode=0o700)
    (tmp_path / "keys/k.key").symlink_to(tmp_path / "elsewhere.key")
    with pytest.raises(KeyUnavailable, match=r"keys/k.key: is a symbolic link"):
        load_hmac_key("k1", HmacKeyConfig(file="keys/k.key"), tmp_path)


def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path):
    store = CertificateStore(tmp_path / "certs")
    target = tmp_path / "victim"
    target.write_bytes(b"keep")
    store.certificate_dir("web")
    (tmp_path / "certs/web/.lock").symlink_to(target)
    with pytest.raises(InsecureSecretFile, match=r"web/.lock: the lock is a symbolic link"):
        with store.lock("web"):
            pass

    ca = InternalCA("test", tmp_path / "ca")
    private_dir(tmp_path / "ca")
    (tmp_path / "ca/.lock").symlink_to(target)
    with pytest.raises(InsecureSecretFile, match="symbolic link"):
        ca.ensure_root()
    assert target.read_bytes() == b"keep"


def test_a_symlinked_certificate_directory_is_refused(tmp_path):
    store = CertificateStore(tmp_path / "certs")
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    private_dir(tmp_path / "certs")
    (tmp_path / "certs/web").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InsecureSecretFile, match=r"certs/web: a certificate directory is a"):
        with store.lock("web"):
            pass
    assert "symbolic link" in store.private_key_problem("web")


def test_a_world_readable_private_key_fails_its_check_and_the_status(
    platform, instance, tmp_path, monkeypatch, capsys
):
    defs = build_definitions(platform)
    defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
    privkey = certificate_store(platform).paths("db-server").privkey
    monkeypatch.chdir(tmp_path)
    config = ["status", "--json", "--config", str(tmp_path / "platform.yaml")]

    def status() -> tuple[int, dict, list[str]]:
        # Without DAGSTER_HOME for the command only: undone here, while the instance's
        # temporary home still exists (undone at teardown, it would put back a deleted
        # directory for the tests that follow).
        with monkeypatch.context() as env:
            env.delenv("DAGSTER_HOME", raising=False)
            code = cli.main(config)
        report = json.loads(capsys.readouterr().out)
        failing = {c["name"]: c["failing_checks"] for c in report["certificates"]}
        return code, failing, [p for p in report["problems"] if "failing" in p]

    # Without run history there are other problems (exit 1), none of them a key's.
    assert status()[1:] == ({"db-server": [], "etl-client": []}, [])

    os.chmod(privkey, 0o644)
    run = defs.resolve_job_def(CHECKS_JOB).execute_in_process(instance=instance)
    (check,) = [
        e
        for e in run.get_asset_check_evaluations()
        if e.check_name == PRIVATE_KEY_CHECK and e.asset_key.path[-1] == "db-server"
    ]
    assert not check.passed and check.severity.value == "ERROR"
    assert "mode 0644 lets others read or change it" in check.description

    code, failing, problems = status()
    assert code == 1
    assert failing == {"db-server": [PRIVATE_KEY_CHECK], "etl-client": []}
    assert problems == [f"certificate db-server: failing {PRIVATE_KEY_CHECK}"]
