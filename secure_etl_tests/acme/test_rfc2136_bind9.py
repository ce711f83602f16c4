"""dns-01 through RFC 2136 against a real BIND9, with Pebble resolving through it."""

from __future__ import annotations

import pytest

from secure_etl.acme.challenges import Dns01, SolverError
from secure_etl.acme.client import AcmeClient
from secure_etl.acme.jws import AccountKey
from secure_etl.acme.rfc2136 import Rfc2136Provider, wait_for_txt
from secure_etl.acme.transport import Transport
from secure_etl.pki.inspect import load_pem_chain
from secure_etl.pki.keys import generate_private_key

pytestmark = pytest.mark.integration


def _provider(bind9, secret=None, **kwargs) -> Rfc2136Provider:
    return Rfc2136Provider(bind9.server, bind9.key_name, secret or bind9.secret, **kwargs)


def test_a_signed_update_adds_and_removes_the_txt_record(bind9):
    provider = _provider(bind9)
    fqdn = "_acme-challenge.www.example.test."
    provider.set_txt(fqdn, "token-value")
    assert wait_for_txt(fqdn, "token-value", [bind9.server], timeout_s=5) < 5
    provider.clear_txt(fqdn, "token-value")
    with pytest.raises(SolverError, match="not visible within 1 s"):
        wait_for_txt(fqdn, "token-value", [bind9.server], timeout_s=1)


def test_a_wrong_tsig_key_is_refused_with_the_servers_answer(bind9):
    provider = _provider(bind9, secret="d3JvbmcgdHNpZyBzZWNyZXQgZm9yIHRlc3Rpbmc=")
    with pytest.raises(SolverError, match="refused the TSIG signature of key 'acme-update'"):
        provider.set_txt("_acme-challenge.a.example.test.", "v")


def test_a_name_outside_every_zone_is_named(bind9):
    with pytest.raises(SolverError, match="serves no zone for _acme-challenge.a.other.test"):
        _provider(bind9).set_txt("_acme-challenge.a.other.test.", "v")


def test_pebble_validates_dns01_through_bind9(acme_ca_factory, bind9):
    ca = acme_ca_factory(dns_server=bind9.server)
    client = AcmeClient(
        Transport(ca.directory_url, verify=str(ca.ca_bundle)),
        AccountKey(generate_private_key("ec256")),
    )
    client.register()
    solver = Dns01(
        _provider(bind9), wait=lambda f, v: wait_for_txt(f, v, [bind9.server], timeout_s=10)
    )

    chain = client.issue(["*.example.test", "example.test"], generate_private_key("ec256"), solver)

    assert len(load_pem_chain(chain.pem, chain.url)) >= 2


def test_the_cli_issues_through_rfc2136(acme_ca_factory, bind9, tmp_path):
    import os
    import subprocess
    import sys

    ca = acme_ca_factory(dns_server=bind9.server)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "secure_etl.cli",
            "acme",
            "issue",
            "-d",
            "cli.example.test",
            "--directory",
            ca.directory_url,
            "--ca-bundle",
            str(ca.ca_bundle),
            "--dns-01",
            "rfc2136",
            "--rfc2136-server",
            bind9.server,
            "--rfc2136-key-name",
            bind9.key_name,
            "--account-key",
            str(tmp_path / "account.key"),
            "--out",
            str(tmp_path / "out"),
        ],
        env=dict(os.environ, SECURE_ETL_TSIG_SECRET=bind9.secret),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "fullchain.pem").read_bytes().count(b"BEGIN CERTIFICATE") >= 2
