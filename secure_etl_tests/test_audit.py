"""The audit log: an untouched log verifies; a modified, deleted, swapped or truncated
record is caught, and so is a rewrite that recomputes every hash."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secure_etl import cli
from secure_etl.security.audit import (
    AuditChainBroken,
    AuditLog,
    canonical,
    key_pin,
    load_signing_key,
    pinned_key,
    record_hash,
    verify,
)
from secure_etl.security.audit_trail import platform_audit_log
from secure_etl_tests.conftest import BASE_CONFIG

RECORDS = 10


@pytest.fixture
def log(tmp_path) -> AuditLog:
    audit = AuditLog(
        tmp_path / "audit" / "audit.log",
        tmp_path / "elsewhere" / "checkpoints",
        tmp_path / "audit" / "checkpoint.key",
        checkpoint_every=4,
    )
    for i in range(RECORDS):
        audit.append(
            "CN=etl-client.test",
            "extract",
            "raw/customers",
            f"2026-03-01-{i:02d}:00",
            f"run-{i}",
            inputs={"source": "postgres://db/t"},
            outputs={"raw": f"sha256:{i:064x}"},
            key_ids=["k1"],
        )
    audit.checkpoint()
    return audit


def _verify(audit: AuditLog):
    return verify(audit.path, audit.checkpoint_dir, audit.signing_key_path.with_suffix(".pub"))


def _lines(audit: AuditLog) -> list[bytes]:
    return audit.path.read_bytes().splitlines(keepends=True)


def _write(audit: AuditLog, lines: list[bytes]) -> None:
    audit.path.write_bytes(b"".join(lines))


def test_an_untouched_log_verifies_with_its_checkpoints(log):
    verdict = _verify(log)
    # The first checkpoint adds the record that says checkpoints are on.
    assert (verdict.ok, verdict.records, verdict.checkpoints) == (True, RECORDS + 1, 3)
    assert json.loads(_lines(log)[4])["action"] == "audit.checkpoints"
    assert oct(log.path.stat().st_mode & 0o777) == "0o600"
    assert oct(log.signing_key_path.stat().st_mode & 0o777) == "0o600"
    first = json.loads(_lines(log)[0])
    assert first["seq"] == 1 and first["prev"] == "0" * 64


def test_a_modified_record_is_named(log):
    lines = _lines(log)
    record = json.loads(lines[4])
    record["action"] = "load"
    lines[4] = canonical(record) + b"\n"
    _write(log, lines)
    verdict = _verify(log)
    assert not verdict.ok and f"{log.path}:5: its hash does not match" in verdict.problem


def test_a_deleted_record_is_named(log):
    lines = _lines(log)
    del lines[3]
    _write(log, lines)
    verdict = _verify(log)
    assert not verdict.ok and f"{log.path}:4: sequence 5 where 4 was due" in verdict.problem


def test_two_swapped_records_are_named(log):
    lines = _lines(log)
    lines[2], lines[6] = lines[6], lines[2]
    _write(log, lines)
    verdict = _verify(log)
    assert not verdict.ok and f"{log.path}:3: sequence 7 where 3 was due" in verdict.problem


def test_a_truncated_log_is_caught_by_its_checkpoint(log):
    _write(log, _lines(log)[:7])
    verdict = _verify(log)
    assert not verdict.ok and "truncated" in verdict.problem and "the log has 7" in verdict.problem


def test_a_rewrite_that_recomputes_every_hash_is_caught_by_the_signed_checkpoints(log):
    records = [json.loads(line) for line in _lines(log)]
    records[1]["outputs"] = {"raw": "sha256:" + "f" * 64}
    previous = "0" * 64
    for record in records:  # the forger recomputes the whole chain
        record["prev"] = previous
        record["hash"] = previous = record_hash(record)
    _write(log, [canonical(r) + b"\n" for r in records])
    verdict = _verify(log)
    assert not verdict.ok and "differs from checkpoint" in verdict.problem


def test_a_forged_checkpoint_signature_is_caught(log):
    point = sorted(log.checkpoint_dir.glob("*.json"))[0]
    signed = json.loads(point.read_bytes())
    signed["records"] = 3
    point.write_bytes(canonical(signed))
    verdict = _verify(log)
    assert not verdict.ok and "checkpoint signature is not valid" in verdict.problem


def test_concurrent_writers_keep_one_chain(tmp_path):
    audit = AuditLog(tmp_path / "a.log", tmp_path / "cp", tmp_path / "k.key", checkpoint_every=50)

    def write(worker: int) -> None:
        for i in range(40):
            audit.append(f"worker-{worker}", "transform", outputs={"i": str(i)})

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    verdict = _verify(audit)
    assert (verdict.ok, verdict.records, verdict.checkpoints) == (True, 161, 3)


def test_the_cli_verifies_and_names_the_first_bad_record(log, capsys):
    args = [
        "audit",
        "verify",
        str(log.path),
        "--checkpoints",
        str(log.checkpoint_dir),
        "--public-key",
        str(log.signing_key_path.with_suffix(".pub")),
    ]
    assert cli.main(args) == 0
    assert "ok: 11 records, 3 signed checkpoints" in capsys.readouterr().out
    lines = _lines(log)
    del lines[0]
    _write(log, lines)
    assert cli.main(args) == 1
    assert f"FAILED: {log.path}:1: sequence 2 where 1 was due" in capsys.readouterr().out


def test_the_cli_without_a_path_verifies_the_configured_log_with_its_pinned_key(
    platform, write_config, capsys, monkeypatch
):
    audit = platform_audit_log(platform)
    audit.append("CN=x", "extract")
    audit.checkpoint()
    # Unpinned: the key beside the log is what a forger would replace, so it is not used.
    monkeypatch.setenv("SECURE_ETL_CONFIG", str(write_config()))
    assert cli.main(["audit", "verify"]) == 1
    pin = key_pin(load_signing_key(audit.signing_key_path).public_key())
    out = capsys.readouterr().out
    assert "FAILED: the checkpoint public key is not pinned" in out and pin in out
    pinned = copy.deepcopy(BASE_CONFIG) | {"audit": {"public_key": pin}}
    monkeypatch.setenv("SECURE_ETL_CONFIG", str(write_config(pinned, "pinned.yaml")))
    assert cli.main(["audit", "verify"]) == 0
    out = capsys.readouterr().out
    assert f"audit log: {audit.path}" in out and "ok: 2 records, 1 signed checkpoints" in out


# --- Nothing is signed over a broken chain --------------------------------------------


def _forge_after(audit: AuditLog) -> None:
    """Append by hand a record that claims to follow the head but was edited after its
    hash was computed (what a forger without the whole chain to recompute leaves)."""
    last = json.loads(_lines(audit)[-1])
    forged = {**last, "seq": last["seq"] + 1, "prev": last["hash"], "action": "load"}
    forged["hash"] = record_hash(forged)
    forged["actor"] = "CN=someone-else"  # edited after hashing
    with audit.path.open("ab") as handle:
        handle.write(canonical(forged) + b"\n")


def test_a_forged_record_after_a_checkpoint_is_never_signed_and_verify_fails(log, capsys):
    _forge_after(log)
    signed_before = sorted(log.checkpoint_dir.glob("*.json"))
    with pytest.raises(AuditChainBroken, match="its hash does not match"):
        log.checkpoint()
    # An append that falls on a checkpoint is written, then refused a signature too.
    with pytest.raises(AuditChainBroken, match="refusing to sign a broken chain"):
        for _ in range(log.checkpoint_every):
            log.append("CN=etl-client.test", "extract")
    assert sorted(log.checkpoint_dir.glob("*.json")) == signed_before
    args = ["audit", "verify", str(log.path), "--checkpoints", str(log.checkpoint_dir)]
    assert cli.main([*args, "--public-key", str(log.signing_key_path.with_suffix(".pub"))]) == 1
    assert f"FAILED: {log.path}:12: its hash does not match" in capsys.readouterr().out


def test_a_checkpoint_over_a_rewritten_signed_head_is_refused(log):
    lines = _lines(log)
    record = json.loads(lines[-1])
    record["outputs"] = {"raw": "sha256:" + "e" * 64}
    record["hash"] = record_hash(record)  # a consistent record, but not the signed one
    _write(log, [*lines[:-1], canonical(record) + b"\n"])
    with pytest.raises(AuditChainBroken, match="not the one its last checkpoint signed"):
        log.checkpoint()
    with pytest.raises(AuditChainBroken, match="not the one its last checkpoint signed"):
        log.append("CN=etl-client.test", "extract")  # record 12: a checkpoint is due


def test_a_signing_key_that_is_not_the_pinned_one_signs_nothing(log, tmp_path):
    other = tmp_path / "other.key"
    pinned = AuditLog(log.path, log.checkpoint_dir, other, public_key=_pin(log))
    with pytest.raises(AuditChainBroken, match="not the key audit.public_key pins"):
        pinned.checkpoint()


# --- A checkpoint store that is gone ------------------------------------------------------


def _pin(audit: AuditLog) -> str:
    return key_pin(load_signing_key(audit.signing_key_path).public_key())


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_a_checkpoint_store_deleted_or_emptied_after_signing_fails(log, how):
    if how == "deleted":
        shutil.rmtree(log.checkpoint_dir)
    else:
        for point in log.checkpoint_dir.glob("*.json"):
            point.unlink()
    verdict = verify(log.path, log.checkpoint_dir, pinned_key(_pin(log)))
    assert not verdict.ok
    assert f"{log.path}:5: checkpoints have been written since this record" in verdict.problem
    assert "deleted or emptied" in verdict.problem
    with pytest.raises(AuditChainBroken, match="restore it"):
        log.checkpoint()  # and the writer will not start a new, shorter history


def test_a_log_never_checkpointed_verifies_without_a_checkpoint_store(tmp_path):
    audit = AuditLog(tmp_path / "a.log", tmp_path / "cp", tmp_path / "k.key")
    audit.append("CN=x", "extract")
    verdict = verify(audit.path, audit.checkpoint_dir, None)
    assert (verdict.ok, verdict.records, verdict.checkpoints) == (True, 1, 0)


def test_the_cli_fails_on_a_deleted_checkpoint_store_and_refuses_a_missing_or_file_flag(
    log, capsys
):
    key = ["--public-key", str(log.signing_key_path.with_suffix(".pub"))]
    shutil.rmtree(log.checkpoint_dir)
    here = ["--checkpoints", str(log.checkpoint_dir.parent)]  # there, but empty
    assert cli.main(["audit", "verify", str(log.path), *here, *key]) == 1
    assert "deleted or emptied" in capsys.readouterr().out
    assert cli.main(["audit", "verify", str(log.path), "--checkpoints", str(log.path), *key]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--checkpoints {log.path}: is not a directory" in err
    missing = ["--checkpoints", str(log.checkpoint_dir)]
    assert cli.main(["audit", "verify", str(log.path), *missing, *key]) == 2
    assert f"--checkpoints {log.checkpoint_dir}: does not exist" in capsys.readouterr().err


def test_the_configured_store_deleted_fails_the_cli(platform, write_config, capsys, monkeypatch):
    audit = platform_audit_log(platform)
    audit.append("CN=x", "extract")
    audit.checkpoint()
    shutil.rmtree(audit.checkpoint_dir)
    pinned = copy.deepcopy(BASE_CONFIG) | {"audit": {"public_key": _pin(audit)}}
    monkeypatch.setenv("SECURE_ETL_CONFIG", str(write_config(pinned, "pinned.yaml")))
    assert cli.main(["audit", "verify"]) == 1
    assert "deleted or emptied" in capsys.readouterr().out


def test_checkpoints_signed_by_another_key_than_the_pinned_one_fail(log, tmp_path):
    stranger = AuditLog(tmp_path / "x.log", tmp_path / "x", tmp_path / "x.key")
    stranger.append("CN=x", "extract")
    stranger.checkpoint()
    verdict = verify(log.path, log.checkpoint_dir, pinned_key(_pin(stranger)))
    assert not verdict.ok and "checkpoint signature is not valid" in verdict.problem


# --- Torn lines and long records ------------------------------------------------------


def test_a_torn_last_line_does_not_stop_later_appends_and_is_named(log, capsys):
    whole = _lines(log)
    torn = whole[-1][: len(whole[-1]) // 2]  # a write cut short by a kill
    with log.path.open("ab") as handle:
        handle.write(torn)
    record = log.append("CN=etl-client.test", "extract")
    assert record["seq"] == RECORDS + 2 and record["prev"] == json.loads(whole[-1])["hash"]
    assert _lines(log)[-2] == torn + b"\n"  # kept, on a line of its own
    log.checkpoint()
    verdict = _verify(log)
    assert (verdict.ok, verdict.records, verdict.torn) == (True, RECORDS + 2, (12,))
    key = ["--public-key", str(log.signing_key_path.with_suffix(".pub"))]
    assert (
        cli.main(["audit", "verify", str(log.path), "--checkpoints", str(log.checkpoint_dir), *key])
        == 0
    )
    assert f"note: {log.path}: line 12: a write cut short" in capsys.readouterr().out


def test_a_whole_last_record_missing_only_its_newline_is_kept(log):
    log.path.write_bytes(log.path.read_bytes()[:-1])
    record = log.append("CN=etl-client.test", "extract")
    assert record["seq"] == RECORDS + 2
    assert _verify(log).ok and not _verify(log).torn


class _Counted(bytes):
    """Bytes that count what concatenating them copies."""

    copied = 0

    def __add__(self, other):
        _Counted.copied += len(self) + len(other)
        return bytes(self) + bytes(other)

    def __radd__(self, other):
        _Counted.copied += len(self) + len(other)
        return bytes(other) + bytes(self)


class _CountingHandle:
    def __init__(self, handle):
        self.handle, self.read_bytes = handle, 0

    def read(self, *args):
        data = self.handle.read(*args)
        self.read_bytes += len(data)
        return _Counted(data)

    def __iter__(self):
        return iter(self.handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def __getattr__(self, name):
        return getattr(self.handle, name)


def test_appending_after_a_16_mb_record_reads_it_once(tmp_path, monkeypatch):
    audit = AuditLog(tmp_path / "a.log", tmp_path / "cp", tmp_path / "k.key")
    big = 16 << 20
    audit.append("CN=x", "extract", outputs={"blob": "x" * big})
    handles: list[_CountingHandle] = []
    opened = AuditLog._locked

    def counting(self):
        handles.append(_CountingHandle(opened(self)))
        return handles[-1]

    monkeypatch.setattr(AuditLog, "_locked", counting)
    _Counted.copied = 0
    record = audit.append("CN=x", "extract")
    assert record["seq"] == 2 and _verify(audit).ok
    # Linear: the long line is read once and joined once, never re-copied per block.
    [handle] = handles
    assert handle.read_bytes < big + (1 << 20) and _Counted.copied < big


# --- Key use is recorded before values are printed -----------------------------------


def _encrypted_value(platform) -> str:
    import pyarrow as pa

    from secure_etl.etl.protect import ColumnCipher
    from secure_etl.security.hmac_keys import load_key_ring

    ring = load_key_ring("pseudo-1", platform.keys["pseudo-1"], platform.resolved_state_dir())
    [(key_id, key)] = ring.items()
    cipher = ColumnCipher(key.secret, key_id, deterministic=False)
    return cipher.column(pa.array(["+1 555 0100"]), "phone")[0].as_py()


@pytest.mark.parametrize("command", ["decrypt", "pseudonym"])
def test_a_key_command_killed_after_printing_a_value_left_its_record(
    platform, write_config, command
):
    value = _encrypted_value(platform)
    extra = ["--column", "phone"] if command == "decrypt" else []
    process = subprocess.Popen(
        [sys.executable, "-m", "secure_etl.cli", "keys", command, "pseudo-1", *extra],
        env={**os.environ, "SECURE_ETL_CONFIG": str(write_config())},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        process.stdin.write(value + "\n")
        process.stdin.flush()
        printed = process.stdout.readline()
        assert printed.strip()  # a value was printed...
        process.send_signal(signal.SIGKILL)  # ...and the process killed before end of input
    finally:
        process.kill()
        process.wait(timeout=30)
    records = [json.loads(line) for line in platform_audit_log(platform).path.open()]
    [begin] = [r for r in records if r["action"] == f"key.{command}.begin"]
    assert begin["actor"].startswith("cli:") and begin["key_ids"] == ["pseudo-1"]
    assert begin["inputs"]["intent"].startswith("print the")
    assert not [r for r in records if r["action"] == f"key.{command}"]  # no outcome: killed
    # Neither what came in nor what was printed is in the log (a fragment such as "555"
    # would also match the hex of an unrelated hash).
    log = platform_audit_log(platform).path.read_text()
    for secret in (value, printed.strip(), "+1 555 0100"):
        assert secret not in log


# --- A certificate install is recorded before the swap -------------------------------


def test_a_fault_between_the_swap_and_its_record_leaves_the_intent_naming_current(
    platform, monkeypatch
):
    from cryptography.hazmat.primitives import hashes

    from secure_etl.pki.renewal import current_leaf, ensure_certificate
    from secure_etl.pki.store import CertificateStore

    install = CertificateStore.install

    def install_then_die(self, *args, **kwargs):
        install(self, *args, **kwargs)  # ``current`` has moved
        raise KeyboardInterrupt("injected: killed before the outcome was recorded")

    monkeypatch.setattr(CertificateStore, "install", install_then_die)
    with pytest.raises(KeyboardInterrupt):
        ensure_certificate(platform, "db-server")
    records = [json.loads(line) for line in platform_audit_log(platform).path.open()]
    assert [r["action"] for r in records] == ["certificate.installing"]
    leaf = current_leaf(platform, "db-server")
    assert records[0]["outputs"] == {
        "serial": format(leaf.serial_number, "x"),
        "certificate": "sha256:" + leaf.fingerprint(hashes.SHA256()).hex(),
    }
    assert records[0]["asset"] == "certificates/db-server"
    assert records[0]["actor"] == "issuer:test-ca"


def test_an_install_is_recorded_before_and_after(platform):
    from secure_etl.pki.renewal import ensure_certificate

    result = ensure_certificate(platform, "db-server")
    records = [json.loads(line) for line in platform_audit_log(platform).path.open()]
    assert [r["action"] for r in records] == ["certificate.installing", "certificate.issued"]
    assert records[1]["outputs"]["version"] == result.version
    assert records[0]["outputs"]["certificate"] == records[1]["outputs"]["certificate"]


def test_an_older_checkpoint_copied_over_a_newer_one_fails(log):
    older, *_, newest = sorted(log.checkpoint_dir.glob("*.json"))
    newest.write_bytes(older.read_bytes())  # hides that the log was cut back
    verdict = _verify(log)
    assert not verdict.ok and f"{newest}: signs record 5, not its name" in verdict.problem


def test_a_pin_that_is_not_a_key_is_one_line_and_exit_2(log, write_config, capsys, monkeypatch):
    args = ["audit", "verify", str(log.path), "--checkpoints", str(log.checkpoint_dir)]
    assert cli.main([*args, "--public-key", str(log.path)]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and f"--public-key: {log.path}: not a PEM public key (it is not PEM text)" in err
    )
    bad = copy.deepcopy(BASE_CONFIG) | {"audit": {"public_key": "ed25519:not-hex"}}
    monkeypatch.setenv("SECURE_ETL_CONFIG", str(write_config(bad, "bad.yaml")))
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "audit.public_key" in err


def test_the_health_report_says_whether_the_checkpoint_key_is_pinned(platform, write_config):
    import datetime as dt

    from secure_etl.config import load_config
    from secure_etl.monitor.health import audit_status

    audit = platform_audit_log(platform)
    audit.append("CN=x", "extract")
    audit.checkpoint()
    now = dt.datetime.now(dt.UTC)
    assert audit_status(platform, now).audit_key_pinned is False
    pinned = copy.deepcopy(BASE_CONFIG) | {"audit": {"public_key": _pin(audit)}}
    status = audit_status(load_config(write_config(pinned, "pinned.yaml")), now)
    assert status.audit_key_pinned is True and status.audit_chain_ok is True


@given(
    st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=8),
    st.booleans(),
    st.integers(1, 7),
)
def test_lines_read_backwards_are_the_lines_read_forwards(lines, torn, block):
    import io

    from secure_etl.security.audit import _lines_backwards

    data = b"".join(line + b"\n" for line in lines) + (b"cut" if torn else b"")
    forwards, offset = [], 0
    for line in io.BytesIO(data):
        forwards.append((offset, line))
        offset += len(line)
    backwards = list(_lines_backwards(io.BytesIO(data), len(data), block))
    assert backwards == forwards[::-1]
