"""PostgreSQL over verify-full with client certificates: what is accepted and refused."""

from __future__ import annotations

import psycopg
import pytest

from secure_etl.defs.resources import certificate_resources, resource_key

pytestmark = pytest.mark.integration


def _connect(server, **overrides):
    args = {
        "host": "localhost",
        "port": server.port,
        "dbname": "postgres",
        "user": "etl-client.test",
        "connect_timeout": 5,
        **overrides,
    }
    return psycopg.connect(**args)


def test_verify_full_with_the_client_certificate_succeeds(platform, postgres_tls):
    client = certificate_resources(platform)[resource_key("etl-client")]
    with _connect(postgres_tls, **client.psycopg_kwargs()) as conn:
        row = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        ssl_on, version = row.fetchone()
    assert ssl_on is True and version in {"TLSv1.2", "TLSv1.3"}


def _client_files(platform, tmp_path, *, expired=False):
    """Client cert files for etl-client.test; optionally already expired."""
    import datetime as dt

    from secure_etl.pki.keys import generate_private_key
    from secure_etl.pki.renewal import build_issuer

    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=40 if expired else 0)
    issued = build_issuer(platform, "test-ca").issue(
        ["etl-client.test"],
        "client",
        generate_private_key("ec256"),
        not_before=start,
        lifetime=dt.timedelta(days=30),
    )
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_bytes(issued.fullchain_pem)
    key.write_bytes(issued.key_pem)
    key.chmod(0o600)
    return str(cert), str(key)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("plaintext", "no encryption"),
        ("wrong_ca", "certificate verify failed"),
        ("wrong_host_name", 'does not match host name "db.wrong.test"'),
        ("expired_client_certificate", "certificate expired"),
        ("no_client_certificate", "connection requires a valid client certificate"),
    ],
)
def test_weaker_or_wrong_connections_are_refused_with_a_clear_error(
    platform, postgres_tls, tmp_path, case, expected
):
    good = certificate_resources(platform)[resource_key("etl-client")].psycopg_kwargs()
    if case == "plaintext":
        args = {"sslmode": "disable"}
    elif case == "wrong_ca":
        from secure_etl.pki.internal_ca import InternalCA

        other = InternalCA("other", tmp_path / "other-ca")
        other.ensure_root()
        args = {**good, "sslrootcert": str(other.root_path)}
    elif case == "wrong_host_name":
        args = {**good, "host": "db.wrong.test", "hostaddr": "127.0.0.1"}
    elif case == "expired_client_certificate":
        cert, key = _client_files(platform, tmp_path, expired=True)
        args = {**good, "sslcert": cert, "sslkey": key}
    else:
        args = {key: value for key, value in good.items() if key not in ("sslcert", "sslkey")}
        args["sslcert"] = str(tmp_path / "none.pem")  # libpq would else look in ~/.postgresql

    with pytest.raises(psycopg.OperationalError) as caught:
        _connect(postgres_tls, **args).close()
    assert expected in str(caught.value)
