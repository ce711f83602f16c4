"""The certificate store in PostgreSQL, for workers on many machines
(``certificate_store.backend: postgres``): the local store's guarantees without a shared
disk.

- Versions are rows (``table``); which one is current is one row per certificate
  (``current_table``), changed in the transaction that inserts the version and prunes
  the old ones: a reader sees the old version or the new one, never a mix, and reads a
  version together with its ``current`` row in one statement.
- One renewal at a time per certificate across machines: ``lock`` holds a session-level
  advisory lock (``pg_advisory_lock``) named after the certificate; a worker that dies
  loses its session and with it the lock.
- Private keys are stored encrypted (AES-256-GCM, the certificate and version as
  associated data) under a fresh data key per version, which the KMS wraps (the
  wrapped key beside the ciphertext): the database alone cannot open them.
- A key leaves the store only into memory (``current_key``) or into a 0600 file in a
  0700 temporary directory that ``materialised`` removes when the step is done.

Markers (a failed verification) stay in the local ``<state_dir>/certs/<name>``; no key
is ever written there.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg import sql

from secure_etl.config import CertificateStorePostgres
from secure_etl.pki.issuer import IssuedCertificate
from secure_etl.pki.store import VERSION_FORMAT, CertificatePaths, StoreLocked, version_time
from secure_etl.security.files import private_dir, write_secret
from secure_etl.security.key_provider import KeyProvider
from secure_etl.security.postgres_tls import PgEndpoint
from secure_etl.security.shared_postgres import advisory_key, endpoint_of, ensure_tables

_FILES = ("cert_pem", "chain_pem", "fullchain_pem")


class PostgresCertificateStore:
    def __init__(
        self,
        endpoint: PgEndpoint,
        schema: str,
        table: str,
        current_table: str,
        kms: Callable[[], KeyProvider],
        local_root: Path,
    ) -> None:
        self.endpoint = endpoint
        self.schema = schema
        self.table = table
        self.current_table = current_table
        self._kms_factory = kms  # built on first use: listing versions needs no KMS
        self._kms: KeyProvider | None = None
        self.root = Path(local_root)  # markers only
        self._created = False

    @property
    def kms(self) -> KeyProvider:
        if self._kms is None:
            self._kms = self._kms_factory()
        return self._kms

    @property
    def where(self) -> str:
        e = self.endpoint
        return (
            f"postgresql://{e.user}@{e.host}:{e.port}/{e.dbname} table {self.schema}.{self.table}"
        )

    # What the local store offers, read from the tables.

    def paths(self, name: str) -> CertificatePaths:
        """The local directory of markers; its ``current`` is empty (use ``materialised``)."""
        return CertificatePaths(self.root / name)

    def certificate_dir(self, name: str) -> Path:
        private_dir(self.root)
        return private_dir(self.root / name, holds_keys=True)

    def current_version(self, name: str) -> str | None:
        row = self._one(
            sql.SQL("SELECT version FROM {} WHERE name = %s").format(self._current), name
        )
        return row[0] if row else None

    def installed_at(self, name: str) -> dt.datetime | None:
        return version_time(self.current_version(name))

    def has_current(self, name: str) -> bool:
        return self.current_version(name) is not None

    def versions(self, name: str) -> list[str]:
        """Kept versions, oldest first."""
        with self._connect() as conn:
            rows = conn.execute(
                sql.SQL("SELECT version FROM {} WHERE name = %s ORDER BY version").format(
                    self._versions
                ),
                (name,),
            ).fetchall()
        return [version for (version,) in rows]

    def private_key_problem(self, name: str) -> str | None:
        """Keys are at rest only encrypted, so the only problem is having none."""
        return None if self.has_current(name) else f"{self.where}: {name}: no current version"

    def current_fullchain(self, name: str) -> bytes | None:
        current = self._current_row(name, with_key=False)
        return current["fullchain_pem"] if current else None

    def current_key(self, name: str) -> bytes | None:
        """The current private key (PEM), decrypted in memory only."""
        current = self._current_row(name, with_key=True)
        return current["key_pem"] if current else None

    @contextmanager
    def materialised(self, name: str) -> Iterator[CertificatePaths]:
        """The current version as files for ssl / libpq, for as long as the block runs:
        ``<tmp>/current/{cert,chain,fullchain,privkey}.pem``, all 0600 in 0700
        directories, removed afterwards (also when the block fails)."""
        current = self._current_row(name, with_key=True)
        if current is None:
            raise FileNotFoundError(f"{self.where}: certificate {name!r} has no current version")
        directory = Path(tempfile.mkdtemp(prefix=f"secure-etl-{name}-"))  # 0700
        try:
            files = CertificatePaths(directory)
            private_dir(files.current)
            write_secret(files.cert, current["cert_pem"])
            write_secret(files.chain, current["chain_pem"])
            write_secret(files.fullchain, current["fullchain_pem"])
            write_secret(files.privkey, current["key_pem"])
            yield files
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    @contextmanager
    def lock(self, name: str, timeout_s: float = 300.0) -> Iterator[None]:
        """Hold the certificate's advisory lock, on every machine at once."""
        key = advisory_key(f"secure_etl.certificate:{self.schema}.{self.table}:{name}")
        deadline = time.monotonic() + timeout_s
        with self._connect() as conn:
            conn.autocommit = True  # a session lock: no transaction is held open
            while not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                if time.monotonic() >= deadline:
                    raise StoreLocked(
                        f"certificate {name!r} is locked by another renewal "
                        f"(waited {timeout_s:.0f} s on {self.where})"
                    )
                time.sleep(0.05)
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def install(self, name: str, issued: IssuedCertificate, keep: int = 5) -> str:
        """Insert a new version, make it current and prune to ``keep`` versions, in one
        transaction; returns its id. Call with ``lock(name)`` held."""
        version = dt.datetime.now(dt.UTC).strftime(VERSION_FORMAT)
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(12)
        sealed = nonce + AESGCM(data_key).encrypt(nonce, issued.key_pem, _bound(name, version))
        wrapped = self.kms.wrap(data_key, _key_id(name, version))
        with self._connect() as conn, conn.transaction():
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (name, version, cert_pem, chain_pem, fullchain_pem, "
                    "key_sealed, key_wrapped) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                ).format(self._versions),
                (
                    name,
                    version,
                    issued.cert_pem,
                    issued.chain_pem,
                    issued.fullchain_pem,
                    sealed,
                    wrapped,
                ),
            )
            self._point_current_at(conn, name, version)
            conn.execute(
                sql.SQL(
                    "DELETE FROM {} WHERE name = %s AND version <> %s AND version NOT IN "
                    "(SELECT version FROM {} WHERE name = %s AND version <> %s "
                    "ORDER BY version DESC LIMIT %s)"
                ).format(self._versions, self._versions),
                (name, version, name, version, max(0, keep - 1)),
            )
        return version

    def rollback(self, name: str, version: str) -> None:
        """Make an older, still kept version current again."""
        if version not in self.versions(name):
            raise KeyError(f"certificate {name!r} has no version {version!r}")
        with self._connect() as conn, conn.transaction():
            self._point_current_at(conn, name, version)

    # The tables.

    @property
    def _versions(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    @property
    def _current(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.current_table)

    def _connect(self) -> psycopg.Connection:
        conn = self.endpoint.connect()
        if not self._created:
            ensure_tables(
                conn,
                advisory_key(f"secure_etl.certificates:{self.schema}.{self.table}"),
                self.schema,
                {
                    self.table: (
                        "name text NOT NULL, version text NOT NULL, cert_pem bytea NOT NULL, "
                        "chain_pem bytea NOT NULL, fullchain_pem bytea NOT NULL, "
                        "key_sealed bytea NOT NULL, key_wrapped text NOT NULL, "
                        "PRIMARY KEY (name, version)"
                    ),
                    self.current_table: "name text PRIMARY KEY, version text NOT NULL",
                },
            )
            self._created = True
        return conn

    def _one(self, query: sql.Composed, *params) -> tuple | None:
        with self._connect() as conn:
            return conn.execute(query, params).fetchone()

    def _point_current_at(self, conn: psycopg.Connection, name: str, version: str) -> None:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (name, version) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version"
            ).format(self._current),
            (name, version),
        )

    def _current_row(self, name: str, with_key: bool) -> dict | None:
        """The current version's files (and key, decrypted), read in one statement."""
        row = self._one(
            sql.SQL(
                "SELECT v.version, v.cert_pem, v.chain_pem, v.fullchain_pem, v.key_sealed, "
                "v.key_wrapped FROM {} c JOIN {} v USING (name, version) WHERE c.name = %s"
            ).format(self._current, self._versions),
            name,
        )
        if row is None:
            return None
        version, *files, sealed, wrapped = row
        current = {"version": version, **dict(zip(_FILES, map(bytes, files), strict=True))}
        if with_key:
            current["key_pem"] = open_key(self.kms, name, version, bytes(sealed), wrapped)
        return current


def open_key(kms: KeyProvider, name: str, version: str, sealed: bytes, wrapped: str) -> bytes:
    """A stored private key decrypted: its data key unwrapped by the KMS (KeyUnwrapError
    without the right master key), then AES-GCM bound to the certificate and version."""
    data_key = kms.unwrap(wrapped, _key_id(name, version))
    return AESGCM(data_key).decrypt(sealed[:12], sealed[12:], _bound(name, version))


def _key_id(name: str, version: str) -> str:
    return f"certificate/{name}/{version}"


def _bound(name: str, version: str) -> bytes:
    return _key_id(name, version).encode()


def postgres_certificate_store(
    config: CertificateStorePostgres, kms: Callable[[], KeyProvider], local_root: Path
) -> PostgresCertificateStore:
    return PostgresCertificateStore(
        endpoint_of(config),
        config.db_schema,
        config.table,
        config.current_table,
        kms,
        local_root,
    )
