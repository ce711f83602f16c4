"""Propagation checks that find the zone's name servers themselves, against a real
BIND9: its zone example.test names ns1.example.test (127.0.0.1) as its name server, and
the discovery starts from BIND9 itself, asked on the fixture's port."""

from __future__ import annotations

import threading
import time

import pytest

from secure_etl.acme.challenges import SolverError
from secure_etl.acme.client import AcmeClient
from secure_etl.acme.jws import AccountKey
from secure_etl.acme.propagation import (
    authoritative_servers,
    hostport,
    propagation_wait,
    wait_for_authoritative,
)
from secure_etl.acme.rfc2136 import Rfc2136Provider
from secure_etl.acme.transport import Transport
from secure_etl.challenge_config import Dns01Rfc2136Challenge
from secure_etl.pki.inspect import load_pem_chain
from secure_etl.pki.keys import generate_private_key
from secure_etl.pki.solvers import build_solver


def test_host_and_port_are_read_from_every_form():
    assert hostport("10.0.0.53") == ("10.0.0.53", 53)
    assert hostport("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert hostport("2001:db8::1") == ("2001:db8::1", 53)
    assert hostport("[2001:db8::1]:5353") == ("2001:db8::1", 5353)


@pytest.mark.integration
def test_discovery_finds_the_zone_and_its_name_server(bind9):
    zone, servers = authoritative_servers(
        "_acme-challenge.deep.www.example.test.", bind9.server, port=bind9.port
    )
    assert zone == "example.test."
    assert servers == [f"127.0.0.1:{bind9.port}"]


@pytest.mark.integration
def test_discovery_of_a_name_no_server_knows_says_where_it_looked(bind9):
    # BIND9 here does not recurse: it refuses names outside its zone.
    with pytest.raises(
        SolverError,
        match=rf"of _acme-challenge\.a\.other\.test\. through "
        rf"resolver 127\.0\.0\.1:{bind9.port}",
    ):
        authoritative_servers("_acme-challenge.a.other.test.", bind9.server, port=bind9.port)


@pytest.mark.integration
def test_the_wait_returns_once_every_authoritative_server_serves_the_record(bind9):
    provider = Rfc2136Provider(bind9.server, bind9.key_name, bind9.secret)
    fqdn = "_acme-challenge.later.example.test."
    timer = threading.Timer(0.6, provider.set_txt, (fqdn, "late-value"))
    started = time.monotonic()
    timer.start()
    try:
        took = wait_for_authoritative(
            fqdn,
            "late-value",
            resolver=bind9.server,
            port=bind9.port,
            timeout_s=10,
            interval_s=0.05,
        )
    finally:
        timer.join()
    assert 0.6 <= took <= time.monotonic() - started < 10


@pytest.mark.integration
def test_the_wait_times_out_naming_the_record_and_the_server(bind9):
    with pytest.raises(SolverError) as caught:
        wait_for_authoritative(
            "_acme-challenge.never.example.test.",
            "absent",
            resolver=bind9.server,
            port=bind9.port,
            timeout_s=1,
        )
    assert str(caught.value) == (
        "dns-01: TXT _acme-challenge.never.example.test. not visible within 1 s "
        f"(127.0.0.1:{bind9.port} does not serve it yet)"
    )


@pytest.mark.integration
def test_configured_servers_override_the_discovery(bind9):
    # A resolver that cannot answer is never asked when the servers are given.
    wait = propagation_wait([bind9.server], resolver="127.0.0.1:9", timeout_s=5)
    provider = Rfc2136Provider(bind9.server, bind9.key_name, bind9.secret)
    provider.set_txt("_acme-challenge.fixed.example.test.", "v1")
    assert wait("_acme-challenge.fixed.example.test.", "v1") < 5


@pytest.mark.integration
def test_pebble_issues_through_rfc2136_config_waiting_on_discovered_servers(
    acme_ca_factory, bind9, monkeypatch
):
    monkeypatch.setenv("TEST_TSIG_SECRET", bind9.secret)
    challenge = Dns01Rfc2136Challenge(
        type="dns-01-rfc2136",
        server=bind9.server,
        key_name=bind9.key_name,
        key_secret_env="TEST_TSIG_SECRET",
        propagation_resolver=bind9.server,
        propagation_port=bind9.port,
        propagation_timeout_s=10,
    )
    ca = acme_ca_factory(dns_server=bind9.server)
    client = AcmeClient(
        Transport(ca.directory_url, verify=str(ca.ca_bundle)),
        AccountKey(generate_private_key("ec256")),
    )
    client.register()
    solver = build_solver(challenge)
    waits = []
    original = solver.wait
    solver.wait = lambda fqdn, value: waits.append(fqdn) or original(fqdn, value)

    chain = client.issue(["*.example.test", "example.test"], generate_private_key("ec256"), solver)

    assert len(load_pem_chain(chain.pem, chain.url)) >= 2
    assert waits == ["_acme-challenge.example.test."] * 2


@pytest.mark.integration
def test_every_listed_name_server_must_answer_not_just_the_resolver(bind9):
    import dns.query
    import dns.tsigkeyring
    import dns.update

    # A second name server, 127.0.0.2, which nothing listens on.
    update = dns.update.UpdateMessage(
        "example.test.",
        keyring=dns.tsigkeyring.from_text({bind9.key_name: bind9.secret}),
        keyname=bind9.key_name,
        keyalgorithm="hmac-sha256.",
    )
    update.add("example.test.", 60, "NS", "ns2.example.test.")
    update.add("ns2.example.test.", 60, "A", "127.0.0.2")
    dns.query.tcp(update, "127.0.0.1", 5, port=bind9.port)
    fqdn = "_acme-challenge.two.example.test."
    Rfc2136Provider(bind9.server, bind9.key_name, bind9.secret).set_txt(fqdn, "v")

    _, servers = authoritative_servers(fqdn, bind9.server, port=bind9.port)
    assert servers == [f"127.0.0.1:{bind9.port}", f"127.0.0.2:{bind9.port}"]
    with pytest.raises(SolverError, match=rf"\(127\.0\.0\.2:{bind9.port}: Timeout\)"):
        wait_for_authoritative(fqdn, "v", resolver=bind9.server, port=bind9.port, timeout_s=1)
