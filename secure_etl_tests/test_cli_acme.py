"""`secure-etl acme issue|revoke` and `certs renew|list` as a user runs them."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

import pytest

from secure_etl.pki.inspect import load_chain_file


def _run(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "secure_etl.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.integration
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


@pytest.mark.integration
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


def test_acme_issue_refuses_an_http_directory(tmp_path):
    account = tmp_path / "acct" / "account.key"
    result = _run(
        "acme", "issue", "-d", "a.example", "--directory", "http://127.0.0.1:9/dir",
        "--http-01-port", "5002", "--account-key", str(account), "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "secure-etl: --directory: 'http://127.0.0.1:9/dir' is not an https:// URL; "
        "refusing to use it"
    )
    assert not account.exists()


def test_acme_issue_refuses_a_bad_domain_before_creating_an_account_key(tmp_path):
    account = tmp_path / "acct" / "account.key"
    result = _run(
        "acme", "issue", "-d", "ok.example", "-d", "bad domain", "--directory",
        "https://127.0.0.1:9/dir", "--http-01-port", "5002", "--account-key", str(account),
        "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert result.returncode == 2
    assert "-d 'bad domain': not a DNS name or IP address" in result.stderr
    assert "Traceback" not in result.stderr
    assert not account.exists()


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf"])
def test_acme_issue_refuses_a_timeout_that_is_not_a_positive_number(tmp_path, timeout):
    account = tmp_path / "acct" / "account.key"
    result = _run(
        "acme", "issue", "-d", "ok.example", "--directory", "https://127.0.0.1:9/dir",
        "--http-01-port", "5002", "--account-key", str(account), "--out", str(tmp_path / "o"),
        "--timeout", timeout,
    )  # fmt: skip
    assert result.returncode == 2
    assert "give a positive number of seconds" in result.stderr
    assert not account.exists()


@pytest.mark.integration
def test_acme_revoke_with_the_certificate_key_creates_no_account_key(acme_ca, tmp_path):
    from secure_etl.acme.challenges import ChallTestSrvProvider, Dns01
    from secure_etl.acme.client import AcmeClient
    from secure_etl.acme.jws import AccountKey
    from secure_etl.acme.transport import Transport
    from secure_etl.pki.keys import generate_private_key, private_key_pem

    client = AcmeClient(
        Transport(acme_ca.directory_url, verify=str(acme_ca.ca_bundle)),
        AccountKey(generate_private_key("ec256")),
    )
    client.register()
    key = generate_private_key("ec256")
    chain = client.issue(
        ["by-key.example.com"], key, Dns01(ChallTestSrvProvider(acme_ca.challtestsrv_url))
    )
    (tmp_path / "cert.pem").write_bytes(chain.pem)
    (tmp_path / "key.pem").write_bytes(private_key_pem(key))
    account = tmp_path / "acct" / "account.key"
    revoke = (
        "acme", "revoke", str(tmp_path / "cert.pem"), "--key", str(tmp_path / "key.pem"),
        "--directory", acme_ca.directory_url, "--ca-bundle", str(acme_ca.ca_bundle),
        "--account-key", str(account),
    )  # fmt: skip
    readable = _run(*revoke)
    assert readable.returncode == 2 and "Traceback" not in readable.stderr
    assert "key.pem: mode 0644 lets others read or change it" in readable.stderr
    (tmp_path / "key.pem").chmod(0o600)

    result = _run(
        "acme", "revoke", str(tmp_path / "cert.pem"), "--key", str(tmp_path / "key.pem"),
        "--directory", acme_ca.directory_url, "--ca-bundle", str(acme_ca.ca_bundle),
        "--account-key", str(account),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert not account.exists() and "created account key" not in result.stderr
    serial = format(load_chain_file(tmp_path / "cert.pem")[0].serial_number, "x")
    assert acme_ca.certificate_status(serial)["Status"] == "Revoked"


@pytest.mark.integration
def test_acme_issue_refuses_a_forged_certificate_and_writes_nothing(acme_ca, tmp_path):
    from secure_etl_tests.acme.hostile_servers import LyingProxy, forged_leaf

    proxy = LyingProxy(acme_ca, tmp_path / "proxy")
    proxy.forge = lambda pem: forged_leaf(pem, new_key=True)
    out = tmp_path / "out"
    try:
        result = _run(
            "acme", "issue", "-d", "cli.example.com", "--directory", proxy.directory_url,
            "--ca-bundle", str(proxy.ca_bundle), "--http-01-address", "127.0.0.1",
            "--http-01-port", str(acme_ca.http_port), "--account-key", str(tmp_path / "a.key"),
            "--out", str(out),
        )  # fmt: skip
    finally:
        proxy.stop()
    assert proxy.forged == 1
    assert result.returncode == 1
    assert "fails verification (public_key)" in result.stderr and "issued" not in result.stdout
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_acme_issue_gives_up_at_its_timeout(tmp_path):
    import time

    from secure_etl_tests.acme.hostile_servers import SlowServer

    slow = SlowServer(tmp_path / "slow")
    started = time.monotonic()
    try:
        result = _run(
            "acme", "issue", "-d", "a.example", "--directory", f"{slow.base_url}/drip",
            "--ca-bundle", str(slow.ca_bundle), "--http-01-port", "5002",
            "--account-key", str(tmp_path / "a.key"), "--out", str(tmp_path / "o"),
            "--timeout", "2",
        )  # fmt: skip
    finally:
        slow.stop()
    assert result.returncode == 1
    assert "deadline for this issuance has passed" in result.stderr
    assert time.monotonic() - started < 20


def test_a_config_with_an_http_acme_directory_is_refused_at_load(tmp_path):
    config = tmp_path / "platform.yaml"
    config.write_text(
        "issuers:\n  le:\n    type: acme\n    directory_url: http://ca.test/dir\n"
        "    challenge: {type: http-01, port: 80}\n"
    )
    result = _run("certs", "list", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"secure-etl: {config}: issuers.le.directory_url: 'http://ca.test/dir' is not an "
        "https:// URL; ACME directories must use https"
    )


def test_acme_issue_flags_become_the_configs_challenge_model(monkeypatch):
    from secure_etl.cli import _parser
    from secure_etl.cli.acme import _challenge
    from secure_etl.config import Dns01Rfc2136Challenge

    monkeypatch.setenv("SECURE_ETL_TSIG_SECRET", "c2VjcmV0")
    args = _parser().parse_args(
        ["acme", "issue", "-d", "a.example", "--directory", "https://ca/dir", "--out", "o"]
        + ["--dns-01", "rfc2136", "--rfc2136-server", "127.0.0.1:5353"]
        + ["--rfc2136-key-name", "k.", "--rfc2136-algorithm", "hmac-sha512"]
    )
    assert _challenge(args) == Dns01Rfc2136Challenge(
        type="dns-01-rfc2136",
        server="127.0.0.1:5353",
        key_name="k.",
        key_secret_env="SECURE_ETL_TSIG_SECRET",
        algorithm="hmac-sha512",
        propagation_servers=["127.0.0.1:5353"],
    )


def test_certs_list_shows_the_version_and_serial_of_each_issued_certificate(write_config):
    config = str(write_config())
    assert _run("certs", "renew", "db-server", "--config", config).returncode == 0
    listed = _run("certs", "list", "--config", config)
    assert listed.returncode == 0, listed.stderr
    rows = {
        json_row["name"]: json_row
        for json_row in json.loads(_run("certs", "list", "--json", "--config", config).stdout)
    }
    header, *lines = listed.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "USE", "ISSUER", "VERSION"]
    issued = next(line for line in lines if line.startswith("db-server "))
    assert rows["db-server"]["version"] in issued.split()
    assert issued.endswith(f"ok, serial {rows['db-server']['serial']}")
    waiting = next(line for line in lines if line.startswith("etl-client "))
    assert waiting.split()[3] == "-" and waiting.endswith("not issued")
