"""Conformance of the ACME client against a real Pebble (Debian's pebble 2.4.0)."""

from __future__ import annotations

import base64

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from secure_etl.acme.challenges import ChallTestSrvProvider, Dns01, Http01Standalone
from secure_etl.acme.client import AcmeClient
from secure_etl.acme.errors import (
    AccountDoesNotExist,
    AuthorizationFailed,
    ExternalAccountRequired,
)
from secure_etl.acme.jws import AccountKey
from secure_etl.acme.transport import Transport
from secure_etl.pki.inspect import inspect_chain, load_pem_chain
from secure_etl.pki.keys import generate_private_key

pytestmark = pytest.mark.integration


def _client(ca, key_type: str = "ec256") -> AcmeClient:
    transport = Transport(ca.directory_url, verify=str(ca.ca_bundle))
    return AcmeClient(transport, AccountKey(generate_private_key(key_type)))


def _dns01(ca) -> Dns01:
    return Dns01(ChallTestSrvProvider(ca.challtestsrv_url))


@pytest.mark.parametrize("key_type", ["ec256", "ec384", "rsa2048"])
def test_http01_issuance_end_to_end_chains_to_pebbles_root(acme_ca, key_type):
    client = _client(acme_ca, key_type)  # the account key too: ES256, ES384, RS256
    account = client.register("ops@example.com")
    assert account.status == "valid" and account.contact == ("mailto:ops@example.com",)
    solver = Http01Standalone("127.0.0.1", acme_ca.http_port)
    cert_key = generate_private_key(key_type)
    try:
        chain = client.issue(["www.example.com", "api.example.com", "127.0.0.1"], cert_key, solver)
    finally:
        solver.close()

    certs = load_pem_chain(chain.pem, chain.url)
    assert certs[0].public_key().public_numbers() == cert_key.public_key().public_numbers()
    roots = load_pem_chain(acme_ca.issuing_roots(), "pebble roots")
    results = {
        r.name: r
        for r in inspect_chain(
            certs,
            identifiers=["www.example.com", "api.example.com", "127.0.0.1"],
            use="server",
            roots=roots,
        )
    }
    assert results["chain_trusted"].passed, results["chain_trusted"].reason
    assert results["covers_identifiers"].passed
    assert results["eku_fits_use"].passed


def test_dns01_issuance_including_a_wildcard(acme_ca):
    client = _client(acme_ca)
    client.register()
    chain = client.issue(
        ["*.example.org", "example.org"], generate_private_key("ec256"), _dns01(acme_ca)
    )
    sans = (
        load_pem_chain(chain.pem, chain.url)[0]
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value.get_values_for_type(x509.DNSName)
    )
    assert sorted(sans) == ["*.example.org", "example.org"]


def test_twenty_issuances_succeed_while_half_the_nonces_are_rejected(acme_ca_factory):
    ca = acme_ca_factory(env={"PEBBLE_WFE_NONCEREJECT": "50"})
    client = _client(ca)
    client.register()
    for i in range(20):
        chain = client.issue([f"n{i}.example.net"], generate_private_key("ec256"), _dns01(ca))
        assert b"BEGIN CERTIFICATE" in chain.pem
    # About half of all signed requests were refused and retried.
    assert client.transport.bad_nonce_retries > 20


def test_eab_is_required_and_accepted_when_given(acme_ca_factory):
    mac = base64.urlsafe_b64encode(b"k" * 32).rstrip(b"=").decode()
    ca = acme_ca_factory(eab_keys={"kid-1": mac})
    assert _client(ca).directory.external_account_required

    with pytest.raises(ExternalAccountRequired):
        _client(ca).register()
    account = _client(ca).register(eab=("kid-1", mac))
    assert account.status == "valid"


def test_revocation_with_the_account_key_shows_in_pebbles_management_api(acme_ca):
    client = _client(acme_ca)
    client.register()
    chain = client.issue(["revoke-me.example.com"], generate_private_key("ec256"), _dns01(acme_ca))
    leaf = load_pem_chain(chain.pem, chain.url)[0]
    serial = format(leaf.serial_number, "x")
    assert acme_ca.certificate_status(serial)["Status"] == "Valid"

    client.revoke(leaf.public_bytes(serialization.Encoding.DER), reason="keyCompromise")

    status = acme_ca.certificate_status(serial)
    assert status["Status"] == "Revoked"


def test_revocation_with_the_certificate_key(acme_ca):
    client = _client(acme_ca)
    client.register()
    cert_key = generate_private_key("ec256")
    chain = client.issue(["by-key.example.com"], cert_key, _dns01(acme_ca))
    leaf = load_pem_chain(chain.pem, chain.url)[0]

    _client(acme_ca).revoke(leaf.public_bytes(serialization.Encoding.DER), cert_key=cert_key)

    assert acme_ca.certificate_status(format(leaf.serial_number, "x"))["Status"] == "Revoked"


def test_account_key_rollover_keeps_the_account(acme_ca):
    client = _client(acme_ca)
    account = client.register()
    old_key = client.key
    new_key = AccountKey(generate_private_key("ec256"))

    client.change_key(new_key)

    found = AcmeClient(client.transport, new_key).find_account()
    assert found.url == account.url
    with pytest.raises(AccountDoesNotExist):
        AcmeClient(client.transport, old_key).find_account()
    # The account keeps working with its new key.
    assert client.issue(["rolled.example.com"], generate_private_key("ec256"), _dns01(acme_ca))


def test_contact_update_and_deactivation(acme_ca):
    client = _client(acme_ca)
    client.register("a@example.com")
    assert client.update_contact(["b@example.com"]).contact == ("mailto:b@example.com",)
    assert client.deactivate().status == "deactivated"


def test_a_preferred_alternate_chain_is_chosen_by_its_root_name(acme_ca_factory):
    ca = acme_ca_factory(env={"PEBBLE_ALTERNATE_ROOTS": "2"})
    roots = load_pem_chain(ca.issuing_roots(), "roots")
    assert len(roots) == 3
    wanted = roots[2].subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    client = _client(ca)
    client.register()

    chain = client.issue(
        ["alt.example.com"], generate_private_key("ec256"), _dns01(ca), preferred_issuer=wanted
    )

    assert len(chain.alternates) == 2
    top = load_pem_chain(chain.pem, chain.url)[-1]
    assert top.issuer == roots[2].subject


def test_a_challenge_that_cannot_be_validated_names_the_identifier(acme_ca):
    client = _client(acme_ca)
    client.register()

    # Nobody listens on Pebble's http-01 port: validation must fail.
    class Silent:
        challenge_type = "http-01"

        def present(self, *args):
            pass

        def cleanup(self, *args):
            pass

        def close(self):
            pass

    with pytest.raises(AuthorizationFailed) as caught:
        client.issue(["unreachable.example.com"], generate_private_key("ec256"), Silent())
    assert caught.value.identifier == "unreachable.example.com"
    assert caught.value.problem is not None
    assert "unreachable.example.com" in str(caught.value)


def test_http01_through_a_webroot_served_by_another_web_server(acme_ca, tmp_path):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from secure_etl.acme.challenges import Http01Webroot

    webroot = tmp_path / "www"
    webroot.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(webroot))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", acme_ca.http_port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = _client(acme_ca)
    client.register()
    try:
        chain = client.issue(
            ["webroot.example.com"], generate_private_key("ec256"), Http01Webroot(webroot)
        )
    finally:
        server.shutdown()
        server.server_close()
    assert b"BEGIN CERTIFICATE" in chain.pem
    assert list((webroot / ".well-known" / "acme-challenge").iterdir()) == []  # cleaned up
