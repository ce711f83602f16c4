"""tls-alpn-01 (RFC 8737/8738): what our listener serves, and Pebble validating it."""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import ssl
import subprocess
import sys

import pytest
from cryptography import x509

from secure_etl.acme.challenges import SolverError
from secure_etl.acme.client import AcmeClient
from secure_etl.acme.errors import AuthorizationFailed
from secure_etl.acme.jws import AccountKey
from secure_etl.acme.tls_alpn import ID_PE_ACME_IDENTIFIER, TlsAlpn01, sni_name
from secure_etl.acme.transport import Transport
from secure_etl.pki.inspect import load_pem_chain
from secure_etl.pki.keys import generate_private_key
from secure_etl_tests.servers import free_port


def _handshake(port: int, server_name: str, alpn: list[str] | None = None):
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
            return x509.load_der_x509_certificate(der), tls.selected_alpn_protocol()


def test_the_certificate_for_an_identifier_carries_its_san_and_key_authorization_digest():
    port = free_port()
    solver = TlsAlpn01("127.0.0.1", port)
    solver.present("alpn.example.com", "tok-a", "tok-a.thumb")
    solver.present("127.0.0.1", "tok-b", "tok-b.thumb")
    try:
        cert, protocol = _handshake(port, "alpn.example.com", ["acme-tls/1"])
        assert protocol == "acme-tls/1"
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert list(san) == [x509.DNSName("alpn.example.com")]
        ext = cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
        assert ext.critical
        assert ext.value.value == b"\x04\x20" + hashlib.sha256(b"tok-a.thumb").digest()

        # An IP address is asked for by its reverse name (RFC 8738 §6).
        assert sni_name("127.0.0.1") == "1.0.0.127.in-addr.arpa"
        cert, _ = _handshake(port, "1.0.0.127.in-addr.arpa.", ["acme-tls/1"])
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert list(san) == [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    finally:
        solver.close()


def test_a_name_without_a_pending_challenge_gets_no_certificate():
    port = free_port()
    solver = TlsAlpn01("127.0.0.1", port)
    solver.present("alpn.example.com", "tok", "tok.thumb")
    try:
        with pytest.raises(ssl.SSLError):
            _handshake(port, "other.example.com", ["acme-tls/1"])
        solver.cleanup("alpn.example.com", "tok")
        with pytest.raises(ssl.SSLError):
            _handshake(port, "alpn.example.com", ["acme-tls/1"])
    finally:
        solver.close()
    with pytest.raises(ConnectionRefusedError):
        _handshake(port, "alpn.example.com", ["acme-tls/1"])


def test_a_wildcard_is_refused_with_the_reason():
    with pytest.raises(SolverError, match=r"cannot validate the wildcard \*\.example\.com"):
        TlsAlpn01("127.0.0.1", free_port()).present("*.example.com", "t", "t.k")


def _client(ca) -> AcmeClient:
    client = AcmeClient(
        Transport(ca.directory_url, verify=str(ca.ca_bundle)),
        AccountKey(generate_private_key("ec256")),
    )
    client.register()
    return client


@pytest.mark.integration
def test_pebble_issues_through_tls_alpn01_for_a_name_and_an_address(acme_ca):
    solver = TlsAlpn01("127.0.0.1", acme_ca.ports["tls"])
    try:
        chain = _client(acme_ca).issue(
            ["alpn.example.com", "127.0.0.1"], generate_private_key("ec256"), solver
        )
    finally:
        solver.close()  # the listener outlives the test otherwise (the port is Pebble's)
    leaf = load_pem_chain(chain.pem, chain.url)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["alpn.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


@pytest.mark.integration
def test_a_wrong_key_authorization_fails_the_authorization_naming_the_identifier(acme_ca):
    class WrongKeyAuthorization(TlsAlpn01):
        def present(self, identifier: str, token: str, key_authorization: str) -> None:
            super().present(identifier, token, f"{token}.not-our-account-thumbprint")

    solver = WrongKeyAuthorization("127.0.0.1", acme_ca.ports["tls"])
    with pytest.raises(AuthorizationFailed) as caught:
        try:
            _client(acme_ca).issue(["wrong.example.com"], generate_private_key("ec256"), solver)
        finally:
            solver.close()
    assert caught.value.identifier == "wrong.example.com"
    assert "wrong.example.com" in str(caught.value)
    assert "tls-alpn-01" in str(caught.value)
    assert "acmeValidation extension" in str(caught.value)  # failed for the digest, not the SAN


@pytest.mark.integration
def test_the_cli_issues_through_tls_alpn01(acme_ca, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "secure_etl.cli",
            "acme",
            "issue",
            "-d",
            "cli-alpn.example.com",
            "--directory",
            acme_ca.directory_url,
            "--ca-bundle",
            str(acme_ca.ca_bundle),
            "--tls-alpn-01-address",
            "127.0.0.1",
            "--tls-alpn-01-port",
            str(acme_ca.ports["tls"]),
            "--account-key",
            str(tmp_path / "account.key"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "issued cli-alpn.example.com" in result.stdout


@pytest.mark.integration
def test_the_cli_names_a_busy_tls_alpn01_port_in_one_line(acme_ca, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "secure_etl.cli",
                "acme",
                "issue",
                "-d",
                "busy.example.com",
                "--directory",
                acme_ca.directory_url,
                "--ca-bundle",
                str(acme_ca.ca_bundle),
                "--tls-alpn-01-address",
                "127.0.0.1",
                "--tls-alpn-01-port",
                str(port),
                "--account-key",
                str(tmp_path / "account.key"),
                "--out",
                str(tmp_path / "out"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"secure-etl: tls-alpn-01: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_a_platform_configured_for_tls_alpn01_issues_and_its_checks_pass(
    acme_ca, write_config, tmp_path
):
    import copy

    from secure_etl.config import load_config
    from secure_etl.pki.renewal import ensure_certificate, inspect_current
    from secure_etl_tests.conftest import BASE_CONFIG

    roots = tmp_path / "pebble-roots.pem"
    roots.write_bytes(acme_ca.issuing_roots())
    data = copy.deepcopy(BASE_CONFIG)
    data["issuers"]["pebble"] = {
        "type": "acme",
        "directory_url": acme_ca.directory_url,
        "server_ca_bundle": str(acme_ca.ca_bundle),
        "trust_bundle": str(roots),
        "challenge": {"type": "tls-alpn-01", "address": "127.0.0.1", "port": acme_ca.ports["tls"]},
    }
    data["certificates"]["web"] = {
        "issuer": "pebble",
        "use": "server",
        "identifiers": ["alpn-web.example.com", "127.0.0.1"],
    }
    platform = load_config(write_config(data, "alpn.yaml"))

    assert ensure_certificate(platform, "web").outcome == "issued"
    assert [r for r in inspect_current(platform, "web") if not r.passed] == []
