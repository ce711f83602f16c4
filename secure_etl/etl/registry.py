"""``type:`` -> connector class: the one place that knows which connectors exist.

A connector is a class in its own module, built from its config model (and a
``Runtime`` when it will reach its system); its module is imported only when a
pipeline uses it, so a driver nobody configured is never loaded. What a connection is
(whether it leaves the process, whether it verifies the peer) is a fact of the config
alone, said here, so the health report reads it without loading any connector.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import BaseModel

    from secure_etl.etl.connector import Destination, Runtime, Source

SOURCES = {
    "demo": "secure_etl.etl.sources.demo:DemoReader",
    "postgres": "secure_etl.etl.sources.postgres:PostgresReader",
    "https_api": "secure_etl.etl.sources.https_api:HttpsApiReader",
    "mariadb": "secure_etl.etl.sources.mariadb:MariaDBReader",
}
DESTINATIONS = {
    "duckdb": "secure_etl.etl.destinations.duckdb:DuckDBTable",
    "postgres": "secure_etl.etl.destinations.postgres:PostgresTable",
    "bigquery": "secure_etl.etl.destinations.bigquery:BigQueryTable",
}


def _class(table: dict[str, str], kind: str, what: str) -> type:
    if kind not in table:
        raise ValueError(f"no {what} of type {kind!r} (known: {', '.join(sorted(table))})")
    module, name = table[kind].split(":")
    return getattr(importlib.import_module(module), name)


def source(config: BaseModel, runtime: Runtime | None = None) -> Source:
    """The source for a pipeline's ``source:`` config."""
    from secure_etl.etl.connector import Runtime

    return _class(SOURCES, config.type, "source")(config, runtime or Runtime())


def destination(config: BaseModel, runtime: Runtime | None = None) -> Destination:
    """The destination for a pipeline's ``destination:`` config."""
    from secure_etl.etl.connector import Runtime

    return _class(DESTINATIONS, config.type, "destination")(config, runtime or Runtime())


@dataclass(frozen=True)
class Connection:
    """What a source's or a destination's connection is."""

    networked: bool  # False: nothing leaves the process (nothing to verify)
    verifies_peer: bool  # TLS with the server's certificate and name checked


def _local(config: BaseModel) -> Connection:
    return Connection(networked=False, verifies_peer=False)


def _verified(config: BaseModel) -> Connection:
    return Connection(networked=True, verifies_peer=True)


def _postgres(config: BaseModel) -> Connection:
    return Connection(networked=True, verifies_peer=config.sslmode == "verify-full")


def _bigquery(config: BaseModel) -> Connection:
    endpoint = config.api_endpoint or ""
    return Connection(
        networked=True, verifies_peer=not config.anonymous and not endpoint.startswith("http:")
    )


SOURCE_CONNECTIONS: dict[str, Callable[[BaseModel], Connection]] = {
    "demo": _local,
    "postgres": _postgres,
    "https_api": _verified,  # always verified: there is no setting that turns it off
    "mariadb": _verified,  # likewise
}
DESTINATION_CONNECTIONS: dict[str, Callable[[BaseModel], Connection]] = {
    "duckdb": _local,
    "postgres": _postgres,
    "bigquery": _bigquery,
}


def source_connection(config: BaseModel) -> Connection:
    """What the connection of a pipeline's ``source:`` is."""
    return SOURCE_CONNECTIONS[config.type](config)


def destination_connection(config: BaseModel) -> Connection:
    """What the connection of a pipeline's ``destination:`` is."""
    return DESTINATION_CONNECTIONS[config.type](config)
