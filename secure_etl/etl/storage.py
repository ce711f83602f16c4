"""Where each stage of a pipeline keeps a partition: one Parquet file, written atomically
and owner-only (raw and quarantined rows hold PII), read back in bounded batches. The
files live in a ``Storage``: a local directory (the default) or a bucket prefix on S3 or
GCS (``storage.url``), the same code either way."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from secure_etl.errors import UserError
from secure_etl.security.audit import file_digest
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
    """Where a partition's file is in the local default storage (``state_dir/data``)."""
    return Path(state_dir) / "data" / _relative(stage, pipeline, partition)


def _relative(stage: str, pipeline: str, partition: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    safe = partition.replace(":", "-")
    return f"{stage}/{pipeline}/{safe}.parquet"


def partition_of(path: Path | StoredFile | str) -> str:
    """The partition key a stage file holds (the inverse of ``partition_file``)."""
    name = path.name if isinstance(path, StoredFile) else Path(path).name
    stem = name.removesuffix(".parquet")
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}-\d{2}-\d{2}", stem):
        return stem[:-3] + ":" + stem[-2:]  # an hourly key: YYYY-MM-DD-HH:MM
    return stem


_DIGESTS: dict[tuple, str] = {}  # StoredFile.digest's memory of local files


def _digest_key(path: str | Path, stat: os.stat_result) -> tuple:
    """A local file's identity for ``_DIGESTS``: its path, inode, size and modification time."""
    return (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _remember_digest(path: str | Path, stat: os.stat_result, digest: str) -> str:
    """Remember a local file's digest while its inode, size and modification time stay."""
    if len(_DIGESTS) >= 64:
        _DIGESTS.pop(next(iter(_DIGESTS)))
    _DIGESTS[_digest_key(path, stat)] = digest
    return digest


class _Digesting:
    """A local file being written that keeps the sha256 of every byte written to it, so
    a step that records the file in the audit log need not read it back (for a
    million-row partition, 0.2-0.4 s of the step after its rows were loaded)."""

    def __init__(self, handle) -> None:
        self._handle = handle
        self.sha256 = hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self._handle.write(data)

    def __getattr__(self, name: str):
        return getattr(self._handle, name)


@dataclass(frozen=True, eq=False)
class StoredFile:
    """One file of a ``Storage``: on local disk (``fs`` is None; ``path`` is the file's
    path, owner-only as every file the platform writes) or an object in a bucket
    (``path`` is ``bucket/key`` in ``fs``, a pyarrow filesystem)."""

    path: str
    fs: pafs.FileSystem | None = None
    scheme: str = ""  # "s3" or "gs" for an object

    @property
    def local_path(self) -> Path | None:
        """The file on this machine's disk (None: an object in a bucket)."""
        return Path(self.path) if self.fs is None else None

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2] if self.fs else Path(self.path).name

    def with_name(self, name: str) -> StoredFile:
        if self.fs is None:
            return StoredFile(str(Path(self.path).with_name(name)))
        return StoredFile(f"{self.path.rpartition('/')[0]}/{name}", self.fs, self.scheme)

    def __str__(self) -> str:
        return self.path if self.fs is None else f"{self.scheme}://{self.path}"

    def __repr__(self) -> str:
        return f"StoredFile({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoredFile) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def exists(self) -> bool:
        if self.fs is None:
            return Path(self.path).exists()
        return self.fs.get_file_info(self.path).type == pafs.FileType.File

    def size(self) -> int:
        if self.fs is None:
            return Path(self.path).stat().st_size
        return self.fs.get_file_info(self.path).size

    def unlink(self, missing_ok: bool = False) -> None:
        """Delete the file (like ``Path.unlink``)."""
        if self.fs is None:
            Path(self.path).unlink(missing_ok=missing_ok)
            return
        if missing_ok and not self.exists():
            return
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def read_bytes(self) -> bytes:
        if self.fs is None:
            return Path(self.path).read_bytes()
        with self.fs.open_input_stream(self.path) as handle:
            return handle.read()

    def write_secret(self, data: bytes) -> None:
        """Replace the file's content at once: locally a 0600 file renamed into place,
        in a bucket one upload (an object appears whole or not at all)."""
        if self.fs is None:
            write_secret(Path(self.path), data)
            return
        with self.fs.open_output_stream(self.path) as handle:
            handle.write(data)

    def digest(self) -> str:
        """sha256 of the content, read in blocks (the audit log's form). A local file's
        is remembered while its inode, size and modification time stay the same: a step
        records the digests of the files it wrote in several audit records."""
        if self.fs is None:
            stat = os.stat(self.path)
            if (key := _digest_key(self.path, stat)) in _DIGESTS:
                return _DIGESTS[key]
            return _remember_digest(self.path, stat, file_digest(Path(self.path)))
        digest = hashlib.sha256()
        with self.fs.open_input_stream(self.path) as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        return "sha256:" + digest.hexdigest()

    def _source(self):
        """What ``pq.ParquetFile`` reads: the local path, or a random-access object."""
        return self.path if self.fs is None else self.fs.open_input_file(self.path)


def as_file(path: Path | str | StoredFile) -> StoredFile:
    """A local path as a ``StoredFile`` (a ``StoredFile`` as it is)."""
    return path if isinstance(path, StoredFile) else StoredFile(str(path))


@contextmanager
def local_copy(file: StoredFile) -> Iterator[Path]:
    """The file as a local path for a reader that needs one: a local file itself, an
    object copied into a 0600 temporary file that is removed afterwards."""
    if file.local_path is not None:
        yield file.local_path
        return
    with tempfile.TemporaryDirectory(prefix="secure-etl-") as directory:  # 0700
        path = Path(directory) / file.name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE)
        with file.fs.open_input_stream(file.path) as source, os.fdopen(fd, "wb") as out:
            while block := source.read(1 << 20):
                out.write(block)
        yield path


class Storage:
    """Where the stage files are kept: a local directory (the default, ``state_dir/data``)
    or a prefix in an S3 or GCS bucket, reached through pyarrow's filesystems with
    credentials from the environment. Layout under the root:
    ``<stage>/<pipeline>/<partition>.parquet`` and the small files beside them."""

    def __init__(self, root: str | Path, fs: pafs.FileSystem | None = None, scheme: str = ""):
        self.fs = fs
        self.scheme = scheme
        self.root = str(root).rstrip("/") if fs else str(Path(root))

    @classmethod
    def local(cls, state_dir: Path) -> Storage:
        """The default: files under ``state_dir/data``, owner-only."""
        return cls(Path(state_dir) / "data")

    @property
    def is_local(self) -> bool:
        return self.fs is None

    def __str__(self) -> str:
        return self.root if self.fs is None else f"{self.scheme}://{self.root}"

    def file(self, stage: str, pipeline: str, partition: str) -> StoredFile:
        relative = _relative(stage, pipeline, partition)
        if self.fs is None:
            return StoredFile(str(Path(self.root) / relative))
        return StoredFile(f"{self.root}/{relative}", self.fs, self.scheme)

    def partitions(self, stage: str, pipeline: str) -> list[StoredFile]:
        """The stage's partition files of ``pipeline``, sorted by name (temporary files of
        unfinished writes and the small files beside each partition are left out)."""
        directory = self.file(stage, pipeline, "x").path.rpartition("/")[0]
        if self.fs is None:
            here = Path(directory)
            names = [p.name for p in here.glob("*.parquet")] if here.is_dir() else []
            return [StoredFile(str(here / n)) for n in sorted(names)]
        found = self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        names = sorted(
            info.base_name
            for info in found
            if info.type == pafs.FileType.File
            and info.base_name.endswith(".parquet")
            and not info.base_name.startswith(".")
        )
        return [StoredFile(f"{directory}/{n}", self.fs, self.scheme) for n in names]


STORAGE_SCHEMES = ("s3", "gs")


def storage_for(platform: PlatformConfig) -> Storage:
    """The platform's ``storage.url`` as a ``Storage``: left out, ``state_dir/data``; a
    local path (relative to ``state_dir``); ``s3://bucket/prefix`` (region, endpoint, its
    CA bundle and credentials from the standard AWS variables: AWS_REGION,
    AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, AWS_CA_BUNDLE, AWS_ACCESS_KEY_ID...); or
    ``gs://bucket/prefix`` (Google's application default credentials;
    STORAGE_EMULATOR_HOST for an emulator)."""
    state = platform.resolved_state_dir()
    url = platform.storage.url
    if url is None:
        return Storage.local(state)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return Storage(state / url)  # an absolute path stays as it is
    return Storage(rest.strip("/"), _object_store(scheme), scheme)


def _object_store(scheme: str) -> pafs.FileSystem:
    env = os.environ
    if scheme == "s3":
        options = {}
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint_override"] = endpoint
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if region:
            options["region"] = region
        if env.get("AWS_CA_BUNDLE"):  # the roots that verify the endpoint (else the system's)
            options["tls_ca_file_path"] = env["AWS_CA_BUNDLE"]
        try:
            return pafs.S3FileSystem(**options)
        except TypeError:  # tls_ca_file_path came with pyarrow 21
            raise UserError(f"AWS_CA_BUNDLE needs pyarrow 21 or later ({pa.__version__})") from None
    if scheme == "gs":
        emulator = env.get("STORAGE_EMULATOR_HOST")
        if emulator:
            host = emulator.removeprefix("http://").removeprefix("https://")
            http = emulator.startswith("http://")
            return pafs.GcsFileSystem(
                anonymous=True, endpoint_override=host, scheme="http" if http else "https"
            )
        return pafs.GcsFileSystem()
    raise ValueError(f"unknown storage scheme {scheme!r} (one of: {', '.join(STORAGE_SCHEMES)})")


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
            data_key_length_bits=256,  # AES-256-GCM, as security_policy.at_rest says
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
    at all (written under a temporary name, then renamed: on local disk a 0600 file in
    an owner-only directory, synced first; in a bucket a server-side move). Every table
    must have the first one's schema (a later one is cast to it)."""

    def __init__(
        self,
        path: Path | StoredFile,
        crypto: ParquetCrypto | None = None,
        incompressible: Iterable[str] = (),
    ) -> None:
        self.file = as_file(path)
        self._crypto = crypto
        self._incompressible = set(incompressible)
        self._tmp = self.file.with_name(
            f".{self.file.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        )
        local = self.file.local_path
        if local is not None:
            private_dir(local.parent)
            self._handle = _Digesting(
                os.fdopen(
                    os.open(self._tmp.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, SECRET_MODE),
                    "wb",
                )
            )
        else:
            self._handle = self.file.fs.open_output_stream(self._tmp.path)
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0

    @property
    def path(self) -> Path | StoredFile:
        """The local path (the file in a bucket)."""
        return self.file.local_path or self.file

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
            # dictionary costs more time than it saves space; ``incompressible`` columns
            # (hex pseudonyms: lz4 saves a few percent at twice the write time) as they are.
            # No min/max statistics: nothing reads them (every reader takes whole row
            # groups), and for text they cost about a third of the write.
            self._writer = pq.ParquetWriter(
                self._handle,
                table.schema,
                compression={
                    n: "none" if n in self._incompressible else "lz4" for n in table.schema.names
                }
                if self._incompressible
                else "lz4",
                use_dictionary=False,
                write_statistics=False,
                encryption_properties=self._crypto.write_properties() if self._crypto else None,
            )
        elif table.schema != self._writer.schema:
            try:
                table = table.cast(self._writer.schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as err:
                raise ValueError(
                    f"{self.file}: a chunk's columns differ from the first chunk's: {err}"
                ) from None
        self._writer.write_table(table)
        self.rows += table.num_rows

    def commit(self) -> tuple[int, int]:
        """Close, sync and move into place; returns (rows, bytes)."""
        if self._writer is None:
            self.abort()
            raise ValueError(f"{self.file}: the source returned no rows and no schema")
        self._writer.close()
        if self.file.fs is None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            os.replace(self._tmp.path, self.file.path)
            digest = "sha256:" + self._handle.sha256.hexdigest()
            _remember_digest(self.file.path, os.stat(self.file.path), digest)
        else:
            self._handle.close()  # the upload completes
            self.file.fs.move(self._tmp.path, self.file.path)
        return self.rows, self.file.size()

    def abort(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
            self._handle.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> PartitionWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None and not self._handle.closed:
            self.abort()


def write_partition(
    path: Path | StoredFile, frame: pd.DataFrame | pa.Table, crypto: ParquetCrypto | None = None
) -> int:
    """Write a whole partition at once; returns bytes."""
    with PartitionWriter(path, crypto) as writer:
        writer.write(frame)
        return writer.commit()[1]


def write_partition_chunks(
    path: Path | StoredFile,
    chunks: Iterable[pa.Table | pd.DataFrame],
    crypto: ParquetCrypto | None = None,
) -> tuple[int, int]:
    """Write a partition chunk by chunk (memory stays bounded by one chunk); returns
    (rows, bytes)."""
    with PartitionWriter(path, crypto) as writer:
        for chunk in chunks:
            writer.write(chunk)
        return writer.commit()


def _existing(path: Path | StoredFile, crypto: ParquetCrypto | None = None) -> pq.ParquetFile:
    file = as_file(path)
    if not file.exists():
        raise FileNotFoundError(f"{file}: partition not materialized yet")
    try:
        return pq.ParquetFile(
            file._source(), decryption_properties=crypto.read_properties() if crypto else None
        )
    except OSError as err:
        raise OSError(f"{file}: cannot read ({err})") from None


def iter_partition(
    path: Path | StoredFile,
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


def partition_rows(path: Path | StoredFile, crypto: ParquetCrypto | None = None) -> int:
    """Rows in a partition file, from its footer (no data is read)."""
    return _existing(path, crypto).metadata.num_rows


def counts_file(path: Path | StoredFile) -> Path | StoredFile:
    if isinstance(path, StoredFile):
        return path.with_name(path.name + ".counts.json")
    return Path(path).with_name(Path(path).name + ".counts.json")


def write_counts(path: Path | StoredFile, counts: dict[str, int]) -> None:
    """Row counts that belong with a partition file (quarantined, filtered), beside it."""
    as_file(counts_file(path)).write_secret(json.dumps(counts, sort_keys=True).encode())


def read_counts(path: Path | StoredFile) -> dict[str, int]:
    file = as_file(counts_file(path))
    return json.loads(file.read_bytes()) if file.exists() else {}


def column_max(path: Path | StoredFile, column: str, crypto: ParquetCrypto | None = None):
    """The largest value of ``column`` in the partition (None if it has no values), read
    one batch of that column at a time."""
    best = None
    for table in iter_partition(path, columns=[column], crypto=crypto):
        value = pc.max(table[column]).as_py()
        if value is not None and (best is None or value > best):
            best = value
    return best


def partition_schema(path: Path | StoredFile, crypto: ParquetCrypto | None = None) -> pa.Schema:
    return _existing(path, crypto).schema_arrow


def read_partition(path: Path | StoredFile, crypto: ParquetCrypto | None = None) -> pd.DataFrame:
    return _existing(path, crypto).read().to_pandas()
