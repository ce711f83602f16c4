"""The audit log: an untouched log verifies; a modified, deleted, swapped or truncated
record is caught, and so is a rewrite that recomputes every hash."""

from __future__ import annotations

import copy
import json
import threading

import pytest

from secure_etl import cli
from secure_etl.security.audit import AuditLog, canonical, record_hash, verify
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
    from secure_etl.security.audit import key_pin, load_signing_key, platform_audit_log

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
