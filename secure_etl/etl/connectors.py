"""From pipeline config to a source of chunks and a destination table, one place."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pandas as pd
import pyarrow as pa

from secure_etl.config import (
    BigQueryDestination,
    DemoSource,
    DuckDBDestination,
    HttpsApiSource,
    PlatformConfig,
    PostgresDestination,
    PostgresSource,
    _PostgresConnection,
)
from secure_etl.etl import https_api, postgres, storage
from secure_etl.etl.demo_source import generate_partition, partition_start

PARTITION_COLUMN = storage.PARTITION_COLUMN

if TYPE_CHECKING:
    from secure_etl.etl.bigquery_dest import ClientFactory


class ClientCertificate(Protocol):
    """The pipeline's client certificate files and the roots that verify servers: in
    production defs' CertificateResource, elsewhere (tests, benchmarks) a ClientTls."""

    @property
    def fullchain_path(self) -> str | Path: ...
    @property
    def privkey_path(self) -> str | Path: ...
    @property
    def ca_bundle(self) -> str: ...


@dataclass(frozen=True)
class ClientTls:
    """A ClientCertificate from plain paths, for callers without Dagster."""

    fullchain_path: str | Path
    privkey_path: str | Path
    ca_bundle: str


def pg_endpoint(config: _PostgresConnection, tls: ClientCertificate) -> postgres.PgEndpoint:
    return postgres.PgEndpoint(
        host=config.host,
        port=config.port,
        dbname=config.dbname,
        user=config.user,
        sslmode=config.sslmode,
        sslrootcert=config.ca_bundle or tls.ca_bundle,
        sslcert=str(tls.fullchain_path),
        sslkey=str(tls.privkey_path),
    )


def raw_crypto(platform: PlatformConfig) -> storage.ParquetCrypto | None:
    """How raw and quarantined files are encrypted (None: they are not)."""
    if not platform.encrypt_raw:
        return None
    from secure_etl.security.kms import provider_for

    return storage.ParquetCrypto(provider_for(platform))


def incremental_chunks(
    source: PostgresSource, since: dt.datetime | None, tls: ClientCertificate
) -> Iterator[pa.Table]:
    """The rows whose cursor column is at or past ``since`` (all rows if None), in chunks."""
    if source.incremental is None:
        raise ValueError("the source is not incremental")
    yield from postgres.extract_since(
        pg_endpoint(source, tls),
        source.db_schema,
        source.table,
        source.incremental.cursor_column,
        since,
        source.columns,
        source.chunk_rows,
    )


def source_chunks(
    source: DemoSource | PostgresSource | HttpsApiSource, partition: str, tls: ClientCertificate
) -> Iterator[pd.DataFrame | pa.Table]:
    """The partition's rows, in chunks."""
    if isinstance(source, DemoSource):
        yield generate_partition(
            partition, source.rows_per_partition, source.seed, source.bad_row_rate
        )
        return
    start = partition_start(partition)
    if isinstance(source, HttpsApiSource):
        params = dict(source.params)
        if source.start_param:
            params[source.start_param] = start.isoformat()
        if source.end_param:
            params[source.end_param] = (start + dt.timedelta(hours=1)).isoformat()
        api = https_api.ApiSource(
            url=source.url,
            records_key=source.records_key,
            next_key=source.next_key,
            cursor_param=source.cursor_param,
            params=tuple(params.items()),
            timeout_s=source.timeout_s,
            max_retries=source.max_retries,
            allowed_origins=tuple(source.allowed_origins),
            max_pages=source.max_pages,
            max_response_bytes=source.max_response_bytes,
            deadline_s=source.deadline_s,
        )
        context = https_api.client_context(
            str(tls.fullchain_path), str(tls.privkey_path), source.ca_bundle or tls.ca_bundle
        )
        yield from https_api.fetch_pages(api, context)
        return
    yield from postgres.extract_range(
        pg_endpoint(source, tls),
        source.db_schema,
        source.table,
        source.time_column,
        start,
        start + dt.timedelta(hours=1),
        source.columns,
        source.chunk_rows,
    )


class Destination(Protocol):
    description: str

    def load(self, partition: str, hashed: Path) -> int:
        """Replace ``partition`` by the rows of the Parquet file ``hashed``."""

    def stats(self, partition: str, key_column: str) -> dict:
        """``{"rows", "duplicate_keys", "nulls": {column: count}}`` of the partition."""

    def chunks(self, partition: str, columns: Sequence[str]) -> Iterator[pa.Table]:
        """The partition's ``columns``, in bounded tables."""

    def merge(self, batch_id: str, hashed: Path, key_column: str) -> int:
        """Upsert the rows of ``hashed`` by key; they get ``batch_id`` as partition."""


class StreamingDestination(Destination, Protocol):
    def load_batches(self, partition: str, batches: Iterator[pa.Table], schema: pa.Schema) -> int:
        """Replace ``partition`` by ``batches``, taken as they come (one transaction)."""


def _duckdb():
    from secure_etl.etl import duckdb_dest  # DuckDB: only for pipelines that use it

    return duckdb_dest


@dataclass(frozen=True)
class DuckDBTable:
    path: Path
    table: str

    @property
    def description(self) -> str:
        return f"{self.path}:{self.table}"

    def load(self, partition: str, hashed: Path) -> int:
        return _duckdb().load_partition(self.path, self.table, partition, hashed)

    def load_batches(self, partition: str, batches: Iterator[pa.Table], schema: pa.Schema) -> int:
        return _duckdb().load_partition_stream(self.path, self.table, partition, batches, schema)

    def stats(self, partition: str, key_column: str) -> dict:
        return _duckdb().partition_stats(self.path, self.table, partition, key_column)

    def chunks(self, partition: str, columns: Sequence[str]) -> Iterator[pa.Table]:
        return _duckdb().partition_chunks(self.path, self.table, partition, columns)

    def merge(self, batch_id: str, hashed: Path, key_column: str) -> int:
        return _duckdb().merge_batch(self.path, self.table, batch_id, key_column, hashed)


@dataclass(frozen=True)
class PostgresTable:
    endpoint: postgres.PgEndpoint
    schema: str
    table: str

    @property
    def description(self) -> str:
        e = self.endpoint
        return f"postgres {e.host}:{e.port}/{e.dbname} {self.schema}.{self.table}"

    def load(self, partition: str, hashed: Path) -> int:
        return postgres.load_partition(
            self.endpoint,
            self.schema,
            self.table,
            PARTITION_COLUMN,
            partition,
            storage.iter_partition(hashed),
            storage.partition_schema(hashed),
        )

    def load_batches(self, partition: str, batches: Iterator[pa.Table], schema: pa.Schema) -> int:
        return postgres.load_partition(
            self.endpoint, self.schema, self.table, PARTITION_COLUMN, partition, batches, schema
        )

    def stats(self, partition: str, key_column: str) -> dict:
        return postgres.partition_stats(
            self.endpoint, self.schema, self.table, PARTITION_COLUMN, partition, key_column
        )

    def chunks(self, partition: str, columns: Sequence[str]) -> Iterator[pa.Table]:
        return postgres.partition_chunks(
            self.endpoint, self.schema, self.table, PARTITION_COLUMN, partition, columns
        )

    def merge(self, batch_id: str, hashed: Path, key_column: str) -> int:
        return postgres.merge_batch(
            self.endpoint,
            self.schema,
            self.table,
            PARTITION_COLUMN,
            batch_id,
            key_column,
            storage.iter_partition(hashed),
            storage.partition_schema(hashed),
        )


def destination_for(
    destination: DuckDBDestination | PostgresDestination | BigQueryDestination,
    state_dir: Path,
    tls: ClientCertificate,
    bigquery_clients: ClientFactory | None = None,
) -> Destination:
    if isinstance(destination, DuckDBDestination):
        path = Path(destination.path)
        return DuckDBTable(path if path.is_absolute() else state_dir / path, destination.table)
    if isinstance(destination, BigQueryDestination):
        from secure_etl.etl import bigquery_dest  # google-cloud-bigquery: only when used

        if bigquery_clients is None:
            raise ValueError("a bigquery destination needs a client factory")
        return bigquery_dest.BigQueryTable(
            bigquery_clients,
            destination.project,
            destination.dataset,
            destination.table,
            destination.timeout_s,
        )
    return PostgresTable(pg_endpoint(destination, tls), destination.db_schema, destination.table)
