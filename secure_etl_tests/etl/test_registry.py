"""The registry: every ``type:`` of the config has one connector class, and each one
describes itself without reaching its system."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest
from pydantic import TypeAdapter

from secure_etl import config
from secure_etl.etl import registry
from secure_etl.etl.connector import ClientTls, Runtime

SOURCES = {
    "demo": {"type": "demo", "seed": 3},
    "postgres": {"type": "postgres", "host": "db", "dbname": "d", "user": "u", "table": "t"},
    "https_api": {"type": "https_api", "url": "https://api.example.com/v1"},
    "mariadb": {
        "type": "mariadb",
        "host": "db",
        "database": "d",
        "user": "u",
        "table": "t",
        "time_column": "at",
    },
}
DESTINATIONS = {
    "duckdb": {"type": "duckdb", "table": "t"},
    "postgres": {"type": "postgres", "host": "db", "dbname": "d", "user": "u", "table": "t"},
    "bigquery": {"type": "bigquery", "project": "my-project", "dataset": "d", "table": "t"},
}


def _types(union) -> set[str]:
    members = typing.get_args(typing.get_args(union)[0])
    return {typing.get_args(m.model_fields["type"].annotation)[0] for m in members}


def test_every_configurable_type_has_exactly_one_registered_class():
    assert _types(config.Source) == set(registry.SOURCES) >= set(SOURCES)
    assert _types(config.Destination) == set(registry.DESTINATIONS) >= set(DESTINATIONS)
    # and what its connection is, said without loading it
    assert set(registry.SOURCE_CONNECTIONS) == set(registry.SOURCES)
    assert set(registry.DESTINATION_CONNECTIONS) == set(registry.DESTINATIONS)
    for table in (registry.SOURCES, registry.DESTINATIONS):
        for kind, where in table.items():
            module = where.split(":")[0]
            assert module.endswith(f".{kind}"), f"{kind}: its module is named after its type"


def test_sources_describe_themselves_as_the_audit_log_names_them():
    adapter = TypeAdapter(config.PipelineConfig.model_fields["source"].annotation)
    described = {}
    for kind, data in SOURCES.items():
        source_config = adapter.validate_python(data)
        connection = registry.source_connection(source_config)
        described[kind] = (
            registry.source(source_config).describe(),
            connection.networked,
            connection.verifies_peer,
        )
    assert described == {
        "demo": ("demo(seed=3)", False, False),
        "postgres": ("postgres://db:5432/d/t", True, True),
        "https_api": ("https://api.example.com/v1", True, True),
        "mariadb": ("mariadb://db:3306/d/t", True, True),
    }


def test_destinations_say_whether_they_verify_and_need_a_bigquery_client(tmp_path):
    adapter = TypeAdapter(config.PipelineConfig.model_fields["destination"].annotation)
    seen = {}
    for kind, data in DESTINATIONS.items():
        target_config = adapter.validate_python(data)
        target = registry.destination(target_config, Runtime(tmp_path))
        connection = registry.destination_connection(target_config)
        seen[kind] = (target.describe(), connection.verifies_peer, target.needs_bigquery_client)
    assert seen == {
        "duckdb": (f"{tmp_path / 'warehouse.duckdb'}:t", False, False),
        "postgres": ("postgres db:5432/d public.t", True, False),
        "bigquery": ("bigquery my-project.d.t", True, True),
    }
    weak = adapter.validate_python(
        {**DESTINATIONS["postgres"], "sslmode": "require", "allow_insecure_sslmode": True}
    )
    assert registry.destination_connection(weak).verifies_peer is False


def test_a_source_without_the_client_certificate_says_so():
    source = registry.source(config.PostgresSource.model_validate(SOURCES["postgres"]))
    with pytest.raises(ValueError, match="needs the pipeline's client certificate"):
        next(source.chunks("2026-03-01-10:00"))
    assert Runtime(tls=ClientTls("c", "k", "ca")).client_tls("x").fullchain_path == "c"


def test_an_unknown_type_names_the_known_ones():
    class Fake:
        type = "mysql"

    with pytest.raises(ValueError, match="no source of type 'mysql' \\(known: demo, https_api"):
        registry.source(Fake())


def test_the_config_loads_and_checks_columns_without_the_etl_package():
    # config.py sits below etl/: validating the demo's columns must not import it.
    code = (
        "import sys\n"
        "from secure_etl.config import load_config\n"
        "load_config()\n"
        "print(sorted(m for m in sys.modules if m.startswith('secure_etl.etl')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
