"""BigQuery as a destination: the table is partitioned by hour on ``_partition_start``,
and one load job per partition replaces exactly that partition (WRITE_TRUNCATE on the
``table$YYYYMMDDHH`` decorator), so a re-run leaves the table identical.

The client comes from the caller (the Dagster layer builds it with dagster-gcp's
BigQueryResource); credentials never pass through here.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from google.cloud import bigquery

from secure_etl.config import BigQueryDestination
from secure_etl.etl import storage
from secure_etl.etl.connector import Runtime, partition_start
from secure_etl.etl.storage import PARTITION_COLUMN
from secure_etl.etl.transforms import SeenKeys

PARTITION_START = "_partition_start"


class BigQueryError(Exception):
    """A load job or a read that BigQuery refused; says which table and why."""


class BigQueryTable:
    """An hour-partitioned BigQuery table; the client comes from the Dagster layer."""

    needs_bigquery_client = True

    def __init__(self, config: BigQueryDestination, runtime: Runtime | None = None) -> None:
        self.config = config
        self.project, self.dataset, self.table = config.project, config.dataset, config.table
        self.timeout_s = config.timeout_s
        self._clients = (runtime or Runtime()).bigquery_clients

    @property
    def description(self) -> str:
        return f"bigquery {self.project}.{self.dataset}.{self.table}"

    def describe(self) -> str:
        return self.description

    def known_columns(self) -> set[str] | None:
        return None

    def clients(self):
        if self._clients is None:
            raise ValueError(f"{self.description} needs a BigQuery client factory")
        return self._clients()

    def _partition_id(self, partition: str) -> str:
        start = partition_start(partition)
        return f"{self.project}.{self.dataset}.{self.table}${start:%Y%m%d%H}"

    def load(self, partition: str, hashed: Path) -> int:
        """One load job (Parquet) that replaces the partition's hour and nothing else."""
        return self.load_batches(
            partition, storage.iter_partition(hashed), storage.partition_schema(hashed)
        )

    def load_batches(self, partition: str, batches: Iterable[pa.Table], schema: pa.Schema) -> int:
        """The batches written to a load file as they come, then one load job."""
        start = partition_start(partition)
        job_config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET,
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
            time_partitioning=bigquery.TimePartitioning(
                type_=bigquery.TimePartitioningType.HOUR, field=PARTITION_START
            ),
        )
        # The load file: the hashed rows plus the two partition columns, written batch
        # by batch to an owner-only temporary file (memory stays bounded).
        fd, name = tempfile.mkstemp(prefix="secure-etl-bq-", suffix=".parquet")
        os.close(fd)
        path = Path(name)
        try:
            _with_partition_columns(batches, schema, path, partition, start)
            with self.clients() as client, path.open("rb") as handle:
                job = client.load_table_from_file(
                    handle,
                    self._partition_id(partition),
                    job_config=job_config,
                    size=path.stat().st_size,
                )
                try:
                    job.result(timeout=self.timeout_s)
                except Exception as err:  # the API's errors carry the reason
                    raise BigQueryError(
                        f"{self.description}: load job {job.job_id} for {partition} failed: {err}"
                    ) from None
                return int(job.output_rows or 0)
        finally:
            path.unlink(missing_ok=True)

    def _rows(self, partition: str, columns: Sequence[str] | None = None):
        with self.clients() as client:
            table = client.get_table(self._partition_id(partition))
            fields = (
                [f for f in table.schema if f.name in set(columns)] if columns else table.schema
            )
            rows = client.list_rows(table, selected_fields=fields, page_size=50_000)
            yield from rows.to_arrow_iterable(bqstorage_client=None)

    def chunks(self, partition: str, columns: Sequence[str]) -> Iterator[pa.Table]:
        for batch in self._rows(partition, columns):
            yield pa.Table.from_batches([batch])

    def stats(self, partition: str, key_column: str) -> dict:
        """Counted here, page by page (the REST API has no aggregate without a query job)."""
        total, nulls, duplicates, seen = 0, {}, 0, SeenKeys()
        for batch in self._rows(partition):
            table = pa.Table.from_batches([batch]).drop_columns(
                [c for c in (PARTITION_COLUMN, PARTITION_START) if c in batch.schema.names]
            )
            total += table.num_rows
            for name in table.column_names:
                nulls[name] = nulls.get(name, 0) + table[name].null_count
            keys = table[key_column].drop_null()
            duplicates += int(seen.repeated(keys).sum())
        return {"rows": total, "duplicate_keys": duplicates, "nulls": nulls}

    def merge(self, batch_id: str, hashed: Path, key_column: str) -> int:
        raise BigQueryError(f"{self.description}: incremental merges are not supported")


def _with_partition_columns(
    batches: Iterable[pa.Table], schema: pa.Schema, target: Path, partition: str, start: dt.datetime
) -> None:
    schema = schema.append(pa.field(PARTITION_COLUMN, pa.string())).append(
        pa.field(PARTITION_START, pa.timestamp("us", "UTC"))
    )
    with pq.ParquetWriter(target, schema, compression="lz4") as writer:
        for table in batches:
            n = table.num_rows
            writer.write_table(
                table.append_column(PARTITION_COLUMN, pa.array([partition] * n, pa.string()))
                .append_column(PARTITION_START, pa.array([start] * n, pa.timestamp("us", "UTC")))
                .cast(schema)
            )
