"""CertificateResource gives working TLS: a real mutual-TLS handshake over loopback."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest
from cryptography import x509
from dagster import build_asset_context

from secure_etl.defs.resources import (
    CertificateResource,
    PipelineResources,
    certificate_resources,
    resource_key,
    step_certificate,
)
from secure_etl.pki.keys import load_private_key
from secure_etl.pki.renewal import ensure_certificate


@pytest.fixture
def resources(platform):
    for name in platform.certificates:
        ensure_certificate(platform, name)
    return certificate_resources(platform)


def _serve_once(context: ssl.SSLContext, listener: socket.socket, seen: dict) -> None:
    conn, _ = listener.accept()
    try:
        with context.wrap_socket(conn, server_side=True) as tls:
            peer = tls.getpeercert()
            seen["client_cn"] = dict(x[0] for x in peer["subject"])["commonName"]
            seen["version"] = tls.version()
            tls.sendall(b"hello")
    except (ssl.SSLError, OSError) as err:
        seen["error"] = err


def _handshake(server_ctx, client_ctx, server_name: str) -> tuple[bytes, dict]:
    seen: dict = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        thread = threading.Thread(target=_serve_once, args=(server_ctx, listener, seen))
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=5) as raw:
                with client_ctx.wrap_socket(raw, server_hostname=server_name) as tls:
                    data = tls.recv(5)
        finally:
            thread.join(5)
    return data, seen


def test_server_and_client_certificates_complete_a_mutual_tls_handshake(resources):
    server = resources[resource_key("db-server")]
    client = resources[resource_key("etl-client")]

    data, seen = _handshake(server.ssl_context(), client.ssl_context(), "localhost")

    assert data == b"hello"
    assert seen["client_cn"] == "etl-client.test"
    assert seen["version"] in {"TLSv1.2", "TLSv1.3"}


def test_a_client_refuses_a_server_whose_name_the_certificate_does_not_cover(resources):
    server = resources[resource_key("db-server")]
    client = resources[resource_key("etl-client")]

    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch|match"):
        _handshake(server.ssl_context(), client.ssl_context(), "db.elsewhere.test")


def test_connection_arguments_point_at_the_current_version(resources, platform):
    client = resources[resource_key("etl-client")]
    args = client.psycopg_kwargs()
    assert args["sslmode"] == "verify-full"
    assert args["sslcert"].endswith("etl-client/current/fullchain.pem")
    assert args["sslkey"].endswith("etl-client/current/privkey.pem")
    assert isinstance(client.httpx_kwargs()["verify"], ssl.SSLContext)

    before = client.fullchain_path.read_bytes()
    ensure_certificate(platform, "etl-client", force=True)
    assert client.fullchain_path.read_bytes() != before  # same path, new certificate


def test_a_pipeline_reads_its_certificate_typed_and_refuses_anything_else(resources):
    key = resource_key("etl-client")
    wanted = PipelineResources(key)
    with build_asset_context(resources={key: resources[key]}) as context:
        certificate = wanted.certificate(context)
        assert isinstance(certificate, CertificateResource) and certificate.name == "etl-client"
        assert wanted.bigquery_clients(context) is None
    with build_asset_context(resources={key: "a path, not a resource"}) as context:
        with pytest.raises(
            TypeError, match=f"resource '{key}' is a str, not a CertificateResource"
        ):
            wanted.certificate(context)


def test_a_step_keeps_the_version_current_when_it_began_through_a_renewal(resources, platform):
    client = resources[resource_key("etl-client")]
    with step_certificate(platform, client) as pinned:
        began = pinned.serial()
        renewed = ensure_certificate(platform, "etl-client", force=True)  # lands mid-step
        assert renewed.outcome == "renewed" and renewed.version != pinned.version
        # The resource itself follows `current`; the step's copy does not, for either file.
        assert client.serial() != began
        assert pinned.serial() == began
        assert f"versions/{pinned.version}/" in pinned.psycopg_kwargs()["sslkey"]
        leaf = x509.load_pem_x509_certificate(pinned.fullchain_path.read_bytes())
        key = pinned.privkey_path.read_bytes()
        assert load_private_key(key).public_key() == leaf.public_key()  # one pair
        pinned.ssl_context()  # OpenSSL agrees: the key matches the certificate


def test_a_step_whose_version_was_pruned_uses_the_current_one(resources, platform, monkeypatch):
    client = resources[resource_key("etl-client")]
    monkeypatch.setitem(
        platform.certificates,
        "etl-client",
        platform.certificates["etl-client"].model_copy(update={"keep_versions": 1}),
    )
    with step_certificate(platform, client) as pinned:
        ensure_certificate(platform, "etl-client", force=True)  # prunes the step's version
        assert pinned.serial() == client.serial()
        pinned.ssl_context()
