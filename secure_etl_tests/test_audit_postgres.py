"""The audit log in PostgreSQL (``audit.backend: postgres``) against a real server over
verify-full with a client certificate: writers in several processes at once keep one
chain, and a row updated or deleted in the table is caught by ``audit verify``."""

from __future__ import annotations

import copy
import json
import multiprocessing
from pathlib import Path

import pytest
import yaml

from secure_etl import cli
from secure_etl.config import PlatformConfig, load_config
from secure_etl.pki.renewal import certificate_store, trust_bundle
from secure_etl.security.audit import (
    AuditChainBroken,
    canonical,
    key_pin,
    load_signing_key,
    record_hash,
)
from secure_etl.security.audit_trail import platform_audit_log, verify_log
from secure_etl_tests.conftest import BASE_CONFIG, module_platform

pytestmark = pytest.mark.integration

WRITERS, EACH = 4, 50


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> PlatformConfig:
    return module_platform(tmp_path_factory)


@pytest.fixture(scope="module")
def postgres(platform, tmp_path_factory):
    from secure_etl_tests.servers import postgres_for_platform

    server = postgres_for_platform(platform, tmp_path_factory.mktemp("pg"))
    server.psql('CREATE ROLE "etl-client.test" LOGIN')
    server.psql('CREATE DATABASE audit OWNER "etl-client.test"')
    yield server
    server.stop()


def _config(platform, postgres, tmp_path: Path, table: str, every: int) -> Path:
    """A platform config whose audit log is ``table`` in the server's audit database,
    logged in to with the etl-client certificate; the signing key's pin set."""
    client = certificate_store(platform).paths("etl-client")
    key = tmp_path / "checkpoint.key"
    data = copy.deepcopy(BASE_CONFIG)
    data["state_dir"] = str(platform.resolved_state_dir())
    data["audit"] = {
        "backend": "postgres",
        "postgres": {
            "host": "localhost",
            "port": postgres.port,
            "dbname": "audit",
            "user": "etl-client.test",
            "table": table,
            "checkpoint_table": f"{table}_cp",
            "client_certificate": str(client.fullchain),
            "client_key": str(client.privkey),
            "ca_bundle": str(trust_bundle(platform, "db-server")),
        },
        "checkpoint_dir": str(tmp_path / "checkpoints"),
        "signing_key": str(key),
        "checkpoint_every": every,
        "public_key": key_pin(load_signing_key(key).public_key()),
    }
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _write(config: str, worker: int, start) -> None:
    """One writer process: its own config load and connections, like another machine."""
    log = platform_audit_log(load_config(config))
    start.wait()
    for i in range(EACH):
        log.append(f"worker-{worker}", "transform", run_id=f"run-{worker}", outputs={"i": str(i)})


def test_writers_in_four_processes_at_once_keep_one_unbroken_chain(platform, postgres, tmp_path):
    config = _config(platform, postgres, tmp_path, "audit_concurrent", every=25)
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(WRITERS)
    writers = [spawn.Process(target=_write, args=(str(config), w, start)) for w in range(WRITERS)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert [w.exitcode for w in writers] == [0] * WRITERS

    log = platform_audit_log(load_config(config))
    verdict = verify_log(log)
    records = list(log.records())
    assert (verdict.ok, verdict.problem) == (True, "")
    assert verdict.records == WRITERS * EACH + 1  # and the record that turned checkpoints on
    assert verdict.checkpoints == len(list((tmp_path / "checkpoints").glob("*.json"))) >= 7
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    for worker in range(WRITERS):
        mine = [r["outputs"]["i"] for r in records if r["actor"] == f"worker-{worker}"]
        assert mine == [str(i) for i in range(EACH)]
    # They did run at once: the first hundred records are not one writer's run.
    assert len({r["actor"] for r in records[:100]}) > 1


@pytest.fixture
def small_log(platform, postgres, tmp_path, request):
    """Ten records and a checkpoint every four in a table of the test's own."""
    table = "audit_" + request.node.name.removeprefix("test_")[:40]
    config = _config(platform, postgres, tmp_path, table, every=4)
    log = platform_audit_log(load_config(config))
    for i in range(10):
        log.append("CN=etl-client.test", "extract", "raw/customers", f"2026-03-01-{i:02d}:00")
    log.checkpoint()
    return config, log


def _tamper(log, statement: str, *params) -> list[tuple]:
    """Run ``statement`` ({} is the log's table) as the writers' own role could."""
    from psycopg import sql

    with log.endpoint.connect() as conn:
        cursor = conn.execute(sql.SQL(statement).format(sql.Identifier(log.table)), params)
        return cursor.fetchall() if cursor.description else []


def _cli_verify(config: Path, capsys) -> tuple[int, str]:
    code = cli.main(["audit", "verify", "--config", str(config)])
    return code, capsys.readouterr().out


def test_the_cli_verifies_the_table_and_names_an_updated_row(small_log, capsys):
    config, log = small_log
    assert _cli_verify(config, capsys) == (
        0,
        f"audit log: {log.path}\nok: 11 records, 3 signed checkpoints\n",
    )

    _tamper(log, "UPDATE {} SET record = replace(record, 'customers', 'orders') WHERE seq = 6")
    code, out = _cli_verify(config, capsys)
    assert code == 1
    assert f"FAILED: {log.path} seq 6: its hash does not match (modified)" in out


def test_a_deleted_row_and_a_deleted_tail_are_caught(small_log, capsys):
    config, log = small_log
    _tamper(log, "DELETE FROM {} WHERE seq > 9")
    code, out = _cli_verify(config, capsys)
    assert code == 1 and "truncated: checkpoint 000000000011.json signed 11 records" in out

    _tamper(log, "DELETE FROM {} WHERE seq = 3")
    code, out = _cli_verify(config, capsys)
    assert code == 1
    assert f"{log.path} seq 4: sequence 4 where 3 was due" in out


def test_the_checkpoint_table_emptied_fails_and_a_copy_elsewhere_still_verifies(
    small_log, tmp_path, capsys
):
    config, log = small_log
    copies = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert copies == ["000000000005.json", "000000000008.json", "000000000011.json"]
    with log.endpoint.connect() as conn:
        conn.execute(f'DELETE FROM "{log.checkpoint_table}"')  # noqa: S608 (our test table)
    code, out = _cli_verify(config, capsys)
    assert code == 1 and f"{log.checkpoint_store} has none (deleted or emptied)" in out
    with pytest.raises(AuditChainBroken, match="checkpoints were written .record 5."):
        log.checkpoint()

    argv = [
        "audit",
        "verify",
        "--config",
        str(config),
        "--checkpoints",
        str(tmp_path / "checkpoints"),
    ]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.endswith("ok: 11 records, 3 signed checkpoints\n")


def test_a_rewrite_that_recomputes_every_hash_is_caught_and_never_signed(small_log):

    config, log = small_log
    previous = "0" * 64
    for (text,) in _tamper(log, "SELECT record FROM {} ORDER BY seq"):
        record = json.loads(text)
        record["asset"] = record["asset"].replace("customers", "orders")
        record["prev"] = previous
        record["hash"] = previous = record_hash(record)
        forged = canonical(record).decode()
        _tamper(log, "UPDATE {} SET record = %s WHERE seq = %s", forged, record["seq"])
    verdict = verify_log(log)
    assert not verdict.ok and "differs from checkpoint 000000000005.json" in verdict.problem
    with pytest.raises(AuditChainBroken, match="is not the one its last checkpoint signed"):
        for _ in range(4):
            log.append("forger", "extract")
