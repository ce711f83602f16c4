"""What a source and a destination are: the two small interfaces every connector module
fills (one class per ``type:``, built from its config model), and what they are given
to reach their systems. ``secure_etl.etl.registry`` maps a ``type:`` to the class."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa

Chunk = pd.DataFrame | pa.Table
# Opens a BigQuery client (the Dagster layer builds it with dagster-gcp's resource).
ClientFactory = Callable[[], AbstractContextManager[Any]]


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


def partition_start(partition_key: str) -> dt.datetime:
    """'2026-11-28-13:00' -> 2026-11-28 13:00 UTC (Dagster's hourly key format)."""
    return dt.datetime.strptime(partition_key, "%Y-%m-%d-%H:%M").replace(tzinfo=dt.UTC)


def partition_hour(partition_key: str) -> tuple[dt.datetime, dt.datetime]:
    """The hour ``[start, end)`` an hourly partition key stands for."""
    start = partition_start(partition_key)
    return start, start + dt.timedelta(hours=1)


@dataclass(frozen=True)
class Runtime:
    """What a connector needs to reach its system: the state directory (relative
    paths), the pipeline's client certificate, and a BigQuery client factory where one
    is needed. Describing a connector needs none of them."""

    state_dir: Path | None = None
    tls: ClientCertificate | None = None
    bigquery_clients: ClientFactory | None = None
    # A partition key's [start, end) (the Dagster layer gives its partitions' own).
    partition_window: Callable[[str], tuple[dt.datetime, dt.datetime]] = partition_hour

    def client_tls(self, who: str) -> ClientCertificate:
        if self.tls is None:
            raise ValueError(f"{who} needs the pipeline's client certificate")
        return self.tls


class Source(Protocol):
    """Where a pipeline's rows come from."""

    def describe(self) -> str:
        """Where the rows come from, for logs, the audit log and the health report."""

    def known_columns(self) -> set[str] | None:
        """The columns the rows will have (None: known only when they arrive)."""

    @property
    def pii_columns(self) -> tuple[str, ...]:
        """Columns known to hold PII whatever the transforms say (checked for leaks)."""

    def chunks(self, partition: str) -> Iterator[Chunk]:
        """The partition's rows (its runtime's ``partition_window``), in bounded chunks."""

    def chunks_since(self, since: dt.datetime | None) -> Iterator[Chunk]:
        """The rows whose cursor is at or past ``since`` (all if None), in chunks."""


class Destination(Protocol):
    """Where a pipeline's hashed rows go, and the statistics the checks read back."""

    needs_bigquery_client: bool  # the Dagster layer then provides a BigQuery resource

    @property
    def description(self) -> str:
        """The table, for logs, the audit log and retention marks."""

    def describe(self) -> str:
        """Same as ``description``."""

    def known_columns(self) -> set[str] | None:
        """The columns the table has, when the config says (None: not known)."""

    def load(self, partition: str, hashed: Path) -> int:
        """Replace ``partition`` by the rows of the Parquet file ``hashed``."""

    def load_batches(self, partition: str, batches: Iterator[pa.Table], schema: pa.Schema) -> int:
        """Replace ``partition`` by ``batches``, taken as they come (one transaction)."""

    def stats(self, partition: str, key_column: str) -> dict:
        """``{"rows", "duplicate_keys", "nulls": {column: count}}`` of the partition."""

    def chunks(self, partition: str, columns: Sequence[str]) -> Iterator[pa.Table]:
        """The partition's ``columns``, in bounded tables."""

    def merge(self, batch_id: str, hashed: Path, key_column: str) -> int:
        """Upsert the rows of ``hashed`` by key; they get ``batch_id`` as partition."""
