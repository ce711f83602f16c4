"""Where each stage of a pipeline keeps a partition: one Parquet file, written atomically
and owner-only (raw and quarantined rows hold PII), read back in bounded batches."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from secure_etl.security.files import SECRET_MODE, private_dir, write_secret
from secure_etl.security.key_provider import KeyProvider
from secure_etl.security.kms import provider_for

if TYPE_CHECKING:
    from secure_etl.config import PlatformConfig

STAGES = ("raw", "quarantine", "hashed")
# The column that tells, in a destination table, which partition (or incremental run)
# a row belongs to.
PARTITION_COLUMN = "_partition"


def partition_file(state_dir: Path, stage: str, pipeline: str, partition: str) -> Path:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    safe = partition.replace(":", "-")
    return Path(state_dir) / "data" / stage / pipeline / f"{safe}.parquet"


def partition_of(path: Path) -> str:
    """The partition key a stage file holds (the inverse of ``partition_file``)."""
    stem = Path(path).stem
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}-\d{2}-\d{2}", stem):
        return stem[:-3] + ":" + stem[-2:]  # an hourly key: YYYY-MM-DD-HH:MM
    return stem


class ParquetCrypto:
    """Parquet modular encryption for files that hold PII (raw, quarantine): uniform
    encryption with AES-GCM, footer included, each file's data keys wrapped by a
    ``KeyProvider``. Reading without the provider fails; a changed byte fails to
    authenticate."""

    MASTER_KEY_ID = "secure_etl-raw"

    def __init__(self, provider: KeyProvider) -> None:
        import pyarrow.parquet.encryption as pe

        class _Kms(pe.KmsClient):
            def __init__(self, _config) -> None:
                super().__init__()

            def wrap_key(self, key_bytes, master_key_identifier):
                return provider.wrap(bytes(key_bytes), master_key_identifier)

            def unwrap_key(self, wrapped_key, master_key_identifier):
                return provider.unwrap(wrapped_key, master_key_identifier)

        self._factory = pe.CryptoFactory(_Kms)
        self._connection = pe.KmsConnectionConfig()
        self._encryption = pe.EncryptionConfiguration(
            footer_key=self.MASTER_KEY_ID,
            uniform_encryption=True,
            encryption_algorithm="AES_GCM_V1",
            plaintext_footer=False,
            double_wrapping=False,
            cache_lifetime=dt.timedelta(minutes=10),
        )
        self._decryption = pe.DecryptionConfiguration(cache_lifetime=dt.timedelta(minutes=10))

    def write_properties(self):
        return self._factory.file_encryption_properties(self._connection, self._encryption)

    def read_properties(self):
        return self._factory.file_decryption_properties(self._connection, self._decryption)


def raw_crypto(platform: PlatformConfig) -> ParquetCrypto | None:
    """How raw and quarantined files are encrypted (None: they are not)."""
    if not platform.encrypt_raw:
        return None
    return ParquetCrypto(provider_for(platform))


class PartitionWriter:
    """Writes a partition table by table; the file appears complete on ``commit`` or not
    at all. Every table must have the first one's schema (a later one is cast to it)."""

    def __init__(self, path: Path, crypto: ParquetCrypto | None = None) -> None:
        self.path = Path(path)
        self._crypto = crypto
        private_dir(self.path.parent)
        self._tmp = self.path.with_name(
            f".{self.path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        )
        self._handle = os.fdopen(
            os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, SECRET_MODE), "wb"
        )
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0

    @property
    def schema(self) -> pa.Schema | None:
        return self._writer.schema if self._writer else None

    def write(self, table: pa.Table | pa.RecordBatch | pd.DataFrame) -> None:
        if isinstance(table, pd.DataFrame):
            table = pa.Table.from_pandas(table, preserve_index=False)
        elif isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if self._writer is None:
            # lz4 without dictionaries: hashed columns are unique values, where trying a
            # dictionary costs more time than it saves space.
            self._writer = pq.ParquetWriter(
                self._handle,
                table.schema,
                compression="lz4",
                use_dictionary=False,
                encryption_properties=self._crypto.write_properties() if self._crypto else None,
            )
        elif table.schema != self._writer.schema:
            try:
                table = table.cast(self._writer.schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as err:
                raise ValueError(
                    f"{self.path}: a chunk's columns differ from the first chunk's: {err}"
                ) from None
        self._writer.write_table(table)
        self.rows += table.num_rows

    def commit(self) -> tuple[int, int]:
        """Close, sync and move into place; returns (rows, bytes)."""
        if self._writer is None:
            self.abort()
            raise ValueError(f"{self.path}: the source returned no rows and no schema")
        self._writer.close()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self._tmp, self.path)
        return self.rows, self.path.stat().st_size

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._handle.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> PartitionWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None and not self._handle.closed:
            self.abort()


def write_partition(
    path: Path, frame: pd.DataFrame | pa.Table, crypto: ParquetCrypto | None = None
) -> int:
    """Write a whole partition at once; returns bytes."""
    with PartitionWriter(path, crypto) as writer:
        writer.write(frame)
        return writer.commit()[1]


def write_partition_chunks(
    path: Path, chunks: Iterable[pa.Table | pd.DataFrame], crypto: ParquetCrypto | None = None
) -> tuple[int, int]:
    """Write a partition chunk by chunk (memory stays bounded by one chunk); returns
    (rows, bytes)."""
    with PartitionWriter(path, crypto) as writer:
        for chunk in chunks:
            writer.write(chunk)
        return writer.commit()


def _existing(path: Path, crypto: ParquetCrypto | None = None) -> pq.ParquetFile:
    if not path.exists():
        raise FileNotFoundError(f"{path}: partition not materialized yet")
    try:
        return pq.ParquetFile(
            path, decryption_properties=crypto.read_properties() if crypto else None
        )
    except OSError as err:
        raise OSError(f"{path}: cannot read ({err})") from None


def iter_partition(
    path: Path,
    columns: list[str] | None = None,
    batch_rows: int = 100_000,
    crypto: ParquetCrypto | None = None,
) -> Iterator[pa.Table]:
    """The partition in tables of at most ``batch_rows`` rows, read one row group at a
    time (``ParquetFile.iter_batches`` reads ahead without bound: 1 GiB at 5M rows)."""
    file = _existing(path, crypto)
    for group in range(file.num_row_groups):
        table = file.read_row_group(group, columns=columns)
        for offset in range(0, table.num_rows, batch_rows):
            yield table.slice(offset, batch_rows)


def partition_rows(path: Path, crypto: ParquetCrypto | None = None) -> int:
    """Rows in a partition file, from its footer (no data is read)."""
    return _existing(path, crypto).metadata.num_rows


def counts_file(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".counts.json")


def write_counts(path: Path, counts: dict[str, int]) -> None:
    """Row counts that belong with a partition file (quarantined, filtered), beside it."""
    write_secret(counts_file(path), json.dumps(counts, sort_keys=True).encode())


def read_counts(path: Path) -> dict[str, int]:
    file = counts_file(path)
    return json.loads(file.read_bytes()) if file.exists() else {}


def column_max(path: Path, column: str, crypto: ParquetCrypto | None = None):
    """The largest value of ``column`` in the partition (None if it has no values), read
    one batch of that column at a time."""
    best = None
    for table in iter_partition(path, columns=[column], crypto=crypto):
        value = pc.max(table[column]).as_py()
        if value is not None and (best is None or value > best):
            best = value
    return best


def partition_schema(path: Path, crypto: ParquetCrypto | None = None) -> pa.Schema:
    return _existing(path, crypto).schema_arrow


def read_partition(path: Path, crypto: ParquetCrypto | None = None) -> pd.DataFrame:
    return _existing(path, crypto).read().to_pandas()
