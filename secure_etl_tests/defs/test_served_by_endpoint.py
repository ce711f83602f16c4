"""Deploys are verified: a renewed PostgreSQL server certificate must be what it serves,
compared by fingerprint, so an impostor that copies the serial is not taken for ours."""

from __future__ import annotations

import copy
import os
import socket
import ssl
import threading
from contextlib import contextmanager

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from dagster import build_sensor_context

from secure_etl.config import load_config
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import CHECKS_JOB, RENEWAL_JOB
from secure_etl.pki.endpoints import served_leaf, short_fingerprint, stale_endpoints
from secure_etl.pki.keys import generate_private_key
from secure_etl.pki.renewal import (
    build_issuer,
    certificate_store,
    current_leaf,
    ensure_certificate,
)


def _served_platform(platform, postgres_tls, write_config):
    """db-server is served by the test PostgreSQL; deploying copies the files in and
    reloads the server through an admin connection with the etl-client certificate."""
    store = certificate_store(platform).paths("db-server")
    tls = postgres_tls.workdir / "tls"
    owner = "postgres" if os.geteuid() == 0 else str(os.getuid())
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["certificates"]["db-server"]["endpoints"] = [
        {"host": "localhost", "port": postgres_tls.port, "protocol": "postgres"}
    ]
    data["certificates"]["db-server"]["deploy"] = [
        {
            "type": "command",
            "argv": [
                "install",
                "-o",
                owner,
                "-m",
                "644",
                str(store.fullchain),
                str(tls / "server.crt"),
            ],
        },
        {
            "type": "command",
            "argv": [
                "install",
                "-o",
                owner,
                "-m",
                "600",
                str(store.privkey),
                str(tls / "server.key"),
            ],
        },
        {
            "type": "postgres_reload",
            "host": "localhost",
            "port": postgres_tls.port,
            "user": "etl-client.test",
            "client_certificate": "etl-client",
        },
    ]
    return load_config(write_config(data, "served.yaml"))


def _checks(result) -> dict[str, tuple[bool, str]]:
    return {
        e.check_name: (e.passed, e.description)
        for e in result.get_asset_check_evaluations()
        if e.asset_key.path[-1] == "db-server"
    }


@pytest.mark.integration
def test_renewal_reloads_postgres_and_the_new_certificate_is_served(
    platform, postgres_tls, write_config, instance
):
    served = _served_platform(platform, postgres_tls, write_config)
    before = served_leaf("localhost", postgres_tls.port, "postgres").serial_number
    assert before == current_leaf(served, "db-server").serial_number

    result = ensure_certificate(served, "db-server", force=True)

    new_serial = current_leaf(served, "db-server").serial_number
    assert new_serial != before
    new_fingerprint = short_fingerprint(current_leaf(served, "db-server"))
    assert (
        result.deployed[-1] == f"postgres_reload localhost:{postgres_tls.port}: "
        f"serving {new_fingerprint} (serial {new_serial:x})"
    )
    assert served_leaf("localhost", postgres_tls.port, "postgres").serial_number == new_serial
    checks = _checks(
        build_definitions(served).resolve_job_def(CHECKS_JOB).execute_in_process(instance=instance)
    )
    assert checks["served_by_endpoint"][0] is True


@pytest.mark.integration
def test_a_certificate_nobody_loaded_fails_the_check_and_the_sensor_redeploys_it(
    platform, postgres_tls, write_config, instance
):
    served = _served_platform(platform, postgres_tls, write_config)
    defs = build_definitions(served)
    old = served_leaf("localhost", postgres_tls.port, "postgres")
    # A new version becomes current without any deploy (say, renewed by hand).
    issued = build_issuer(served, "test-ca").issue(
        ["localhost", "127.0.0.1"], "server", generate_private_key("ec256")
    )
    store = certificate_store(served)
    with store.lock("db-server"):
        store.install("db-server", issued)
    new = current_leaf(served, "db-server")

    checks = _checks(defs.resolve_job_def(CHECKS_JOB).execute_in_process(instance=instance))
    passed, reason = checks["served_by_endpoint"]
    assert passed is False
    assert (
        f"serves {short_fingerprint(old)} (serial {old.serial_number:x}), "
        f"current is {short_fingerprint(new)} (serial {new.serial_number:x})"
    ) in reason

    sensor = defs.resolve_sensor_def("certificate_renewal")
    tick = sensor(build_sensor_context(instance=instance, definitions=defs))
    (request,) = tick.run_requests
    run = defs.resolve_job_def(RENEWAL_JOB).execute_in_process(
        instance=instance, asset_selection=request.asset_selection, tags=request.tags
    )
    (event,) = run.get_asset_materialization_events()
    assert event.materialization.metadata["outcome"].value == "redeployed"
    assert _checks(run)["served_by_endpoint"][0] is True
    assert served_leaf("localhost", postgres_tls.port, "postgres") == new


@contextmanager
def _tls_server(tmp_path, chain: list[x509.Certificate], key):
    """A real TLS server on a loopback port that presents ``chain`` (leaf first)."""
    certfile, keyfile = tmp_path / "served-chain.pem", tmp_path / "served-key.pem"
    certfile.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    with context.wrap_socket(conn, server_side=True) as tls:
                        tls.recv(1)  # until the client closes
                except (OSError, ssl.SSLError):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _impostor(genuine: x509.Certificate):
    """Another key's certificate with the genuine one's serial, names and extensions."""
    key = generate_private_key("ec256")
    builder = (
        x509.CertificateBuilder()
        .subject_name(genuine.subject)
        .issuer_name(genuine.issuer)
        .public_key(key.public_key())
        .serial_number(genuine.serial_number)
        .not_valid_before(genuine.not_valid_before_utc)
        .not_valid_after(genuine.not_valid_after_utc)
    )
    for extension in genuine.extensions:
        if not isinstance(extension.value, x509.SubjectKeyIdentifier | x509.AuthorityKeyIdentifier):
            builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(key, hashes.SHA256()), key


def test_an_impostor_with_the_current_serial_fails_the_check_naming_both_fingerprints(
    platform, write_config, instance, tmp_path
):
    ensure_certificate(platform, "db-server")
    genuine = current_leaf(platform, "db-server")
    impostor, key = _impostor(genuine)
    assert impostor.serial_number == genuine.serial_number and impostor != genuine
    with _tls_server(tmp_path, [impostor], key) as port:
        data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
        data["certificates"]["db-server"]["endpoints"] = [{"host": "127.0.0.1", "port": port}]
        served = load_config(write_config(data, "impostor.yaml"))
        result = build_definitions(served).resolve_job_def(CHECKS_JOB)
        checks = _checks(result.execute_in_process(instance=instance))
    passed, reason = checks["served_by_endpoint"]
    assert passed is False
    assert f"127.0.0.1:{port} serves {short_fingerprint(impostor)}" in reason
    assert f"current is {short_fingerprint(genuine)}" in reason
    assert f"(serial {genuine.serial_number:x})" in reason and "same serial" in reason


def test_the_served_chain_is_compared_as_far_as_the_server_sends_it(platform, tmp_path):
    from secure_etl.config import Endpoint

    ensure_certificate(platform, "db-server")
    genuine = current_leaf(platform, "db-server")
    key = serialization.load_pem_private_key(
        certificate_store(platform).paths("db-server").privkey.read_bytes(), None
    )
    ours, theirs = _impostor(genuine)[0], _impostor(genuine)[0]  # two stand-in CA certs
    with _tls_server(tmp_path, [genuine, theirs], key) as port:
        endpoint = [Endpoint(host="127.0.0.1", port=port)]
        assert stale_endpoints(endpoint, [genuine]) == []
        (problem,) = stale_endpoints(endpoint, [genuine, ours])
    assert problem.startswith(f"127.0.0.1:{port} serves the current leaf, but chain certificate 2")
    assert short_fingerprint(theirs) in problem and short_fingerprint(ours) in problem
