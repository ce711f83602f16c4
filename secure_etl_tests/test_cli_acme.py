"""`secure-etl acme issue|revoke` and `certs renew|list` as a user runs them."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

from secure_etl.pki.inspect import load_chain_file


def _run(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "secure_etl.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_acme_issue_writes_the_four_files_and_revoke_revokes(acme_ca, tmp_path):
    out = tmp_path / "out"
    account = tmp_path / "acct" / "account.key"
    issued = _run(
        "acme",
        "issue",
        "-d",
        "cli.example.com",
        "-d",
        "127.0.0.1",
        "--directory",
        acme_ca.directory_url,
        "--ca-bundle",
        str(acme_ca.ca_bundle),
        "--email",
        "ops@example.com",
        "--key-type",
        "ec384",
        "--http-01-address",
        "127.0.0.1",
        "--http-01-port",
        str(acme_ca.http_port),
        "--account-key",
        str(account),
        "--out",
        str(out),
    )
    assert issued.returncode == 0, issued.stderr
    assert "issued cli.example.com, 127.0.0.1" in issued.stdout
    assert stat.S_IMODE((out / "privkey.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(account.stat().st_mode) == 0o600
    leaf = load_chain_file(out / "cert.pem")
    full = load_chain_file(out / "fullchain.pem")
    assert len(leaf) == 1 and full[0] == leaf[0] and full[1:] == load_chain_file(out / "chain.pem")

    platform = tmp_path / "platform.yaml"
    platform.write_text(
        f"state_dir: {tmp_path / 'state'}\nissuers: {{ca: {{type: internal_ca}}}}\n"
    )
    revoked = _run(
        "acme",
        "revoke",
        str(out / "cert.pem"),
        "--config",
        str(platform),
        "--reason",
        "superseded",
        "--directory",
        acme_ca.directory_url,
        "--ca-bundle",
        str(acme_ca.ca_bundle),
        "--account-key",
        str(account),
    )
    assert revoked.returncode == 0, revoked.stderr
    serial = format(leaf[0].serial_number, "x")
    assert acme_ca.certificate_status(serial)["Status"] == "Revoked"
    # The revocation is in the platform's audit log, and the log verifies.
    log = tmp_path / "state" / "audit" / "audit.log"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["action"] for r in records] == ["certificate.revoked", "audit.checkpoints"]
    assert records[0]["outputs"]["reason"] == "superseded"
    assert records[0]["outputs"]["serial"] == serial
    public_key = tmp_path / "state" / "audit" / "checkpoint.pub"
    verified = _run("audit", "verify", "--config", str(platform), "--public-key", str(public_key))
    assert verified.returncode == 0 and "ok: 2 records, 1 signed checkpoints" in verified.stdout


def test_acme_issue_needs_exactly_one_challenge_method(tmp_path):
    result = _run(
        "acme",
        "issue",
        "-d",
        "a.example",
        "--directory",
        "https://127.0.0.1:9/dir",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "secure-etl: choose one of --http-01-port, --tls-alpn-01-port, --webroot or --dns-01"
    )


def test_acme_issue_reports_an_unreachable_ca_in_one_line(tmp_path):
    result = _run(
        "acme",
        "issue",
        "-d",
        "a.example",
        "--directory",
        "https://127.0.0.1:9/dir",
        "--http-01-port",
        "5002",
        "--account-key",
        str(tmp_path / "k"),
        "--out",
        str(tmp_path / "o"),
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "127.0.0.1:9" in result.stderr


def test_certs_renew_all_then_list(acme_platform, write_config, tmp_path):
    import os

    config = write_config(
        json.loads(json.dumps(acme_platform.model_dump(exclude_none=True))), "renew.yaml"
    )
    env = dict(os.environ, SECURE_ETL_CONFIG=str(config))

    renewed = _run("certs", "renew", "--all", env=env)
    assert renewed.returncode == 0, renewed.stderr
    assert "3/3 succeeded" in renewed.stdout
    assert "web: issued" in renewed.stdout

    listed = _run("certs", "list", "--json", env=env)
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {"db-server", "etl-client", "web"}
    assert all(row["status"] == "ok" for row in rows.values()), rows
    assert rows["web"]["days_remaining"] > 1

    again = _run("certs", "renew", "web", "db-server", env=env)
    assert "web: not_due" in again.stdout and "db-server: not_due" in again.stdout
