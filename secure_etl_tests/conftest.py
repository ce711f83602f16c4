"""Shared fixtures: a platform config written to a temporary directory, and an instance."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from secure_etl.config import PlatformConfig, load_config

BASE_CONFIG: dict = {
    "issuers": {"test-ca": {"type": "internal_ca", "lifetime_days": 30}},
    "certificates": {
        "db-server": {
            "issuer": "test-ca",
            "use": "server",
            "identifiers": ["localhost", "127.0.0.1"],
        },
        "etl-client": {
            "issuer": "test-ca",
            "use": "client",
            "identifiers": ["etl-client.test"],
        },
    },
    "keys": {"pseudo-1": {"file": "keys/pseudo-1.key", "create": True}},
    "pipelines": {
        "customers": {
            "source": {"type": "demo", "rows_per_partition": 200, "seed": 3, "bad_row_rate": 0.02},
            "client_certificate": "etl-client",
            "key_column": "customer_id",
            "transforms": [
                {
                    "type": "pseudonymise",
                    "columns": ["full_name", "email", "phone"],
                    "key": "pseudo-1",
                },
            ],
            "destination": {"type": "duckdb", "path": "warehouse.duckdb", "table": "customers"},
            "partitions": {"start": "2026-01-01-00:00"},
            # A failing step must fail the test now, not after minutes of retries.
            "retry": {"max_retries": 1, "delay_s": 0.5},
        }
    },
}


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a config (the base one, or ``data``) with its state under ``tmp_path``."""

    def write(data: dict | None = None, name: str = "platform.yaml") -> Path:
        data = copy.deepcopy(BASE_CONFIG if data is None else data)
        data.setdefault("state_dir", str(tmp_path / "state"))
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def platform(write_config, monkeypatch) -> PlatformConfig:
    monkeypatch.delenv("SECURE_ETL_STATE_DIR", raising=False)
    return load_config(write_config())


@pytest.fixture
def instance():
    from dagster import instance_for_test

    with instance_for_test() as instance:
        yield instance


@pytest.fixture
def acme_ca_factory(tmp_path):
    """Start Pebble with options (``env``, ``eab_keys``); stopped after the test."""
    from secure_etl_tests.servers import Pebble

    started = []

    def start(env: dict | None = None, eab_keys: dict | None = None, dns_server=None) -> Pebble:
        pebble = Pebble(
            tmp_path / f"pebble{len(started)}",
            env=env or {},
            eab_keys=eab_keys,
            dns_server=dns_server,
        )
        started.append(pebble)
        return pebble.start()

    yield start
    for pebble in started:
        pebble.stop()


@pytest.fixture
def acme_ca(acme_ca_factory):
    """A running Pebble with nonce rejection off and validation without sleeps."""
    return acme_ca_factory()


@pytest.fixture
def acme_platform(acme_ca, write_config, tmp_path):
    """A platform whose certificates come from the running Pebble through http-01."""
    from secure_etl_tests.servers import Pebble

    assert isinstance(acme_ca, Pebble)
    roots = tmp_path / "pebble-roots.pem"
    roots.write_bytes(acme_ca.issuing_roots())
    data = copy.deepcopy(BASE_CONFIG)
    data["issuers"]["pebble"] = {
        "type": "acme",
        "directory_url": acme_ca.directory_url,
        "server_ca_bundle": str(acme_ca.ca_bundle),
        "trust_bundle": str(roots),
        "email": "ops@example.com",
        "challenge": {"type": "http-01", "address": "127.0.0.1", "port": acme_ca.http_port},
    }
    data["certificates"]["web"] = {
        "issuer": "pebble",
        "use": "server",
        "identifiers": ["web.example.com", "127.0.0.1"],
    }
    return load_config(write_config(data, "acme.yaml"))


@pytest.fixture
def bind9(tmp_path):
    """A real BIND9 authoritative for example.test, taking TSIG-signed updates."""
    from secure_etl_tests.servers import Bind9

    server = Bind9(tmp_path / "bind9").start()
    yield server
    server.stop()


@pytest.fixture
def postgres_tls(platform, tmp_path):
    """PostgreSQL whose server certificate (db-server) and client CA come from the
    platform's internal CA; the etl-client certificate authenticates as user etl."""
    from secure_etl_tests.servers import postgres_for_platform

    server = postgres_for_platform(platform, tmp_path / "pg")
    # `cert` authentication maps the client certificate's CN to the user name.
    server.psql('CREATE ROLE "etl-client.test" LOGIN SUPERUSER')
    yield server
    server.stop()


@pytest.fixture
def openbao(tmp_path):
    """A real OpenBao (Vault API) dev server with the transit engine mounted."""
    from secure_etl_tests.servers import OpenBao

    server = OpenBao(tmp_path / "openbao").start()
    yield server
    server.stop()
