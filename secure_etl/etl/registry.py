"""``type:`` -> connector class: the one place that knows which connectors exist.

A connector is a class in its own module, built from its config model (and a
``Runtime`` when it will reach its system); its module is imported only when a
pipeline uses it, so a driver nobody configured is never loaded.
"""

from __future__ import annotations

import importlib

from pydantic import BaseModel

from secure_etl.etl.connector import Destination, Runtime, Source

SOURCES = {
    "demo": "secure_etl.etl.sources.demo:DemoReader",
    "postgres": "secure_etl.etl.sources.postgres:PostgresReader",
    "https_api": "secure_etl.etl.sources.https_api:HttpsApiReader",
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
    return _class(SOURCES, config.type, "source")(config, runtime or Runtime())


def destination(config: BaseModel, runtime: Runtime | None = None) -> Destination:
    """The destination for a pipeline's ``destination:`` config."""
    return _class(DESTINATIONS, config.type, "destination")(config, runtime or Runtime())
