"""How the platform connects to PostgreSQL: TLS with the server verified (verify-full by
default) and a client certificate, the certificate files read at connect time. Used by
the pipelines and by the ``postgres_reload`` deploy action alike."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlencode

import psycopg

from secure_etl.security.tls import libpq_minimum


class PostgresError(Exception):
    """A refused or failed PostgreSQL connection or statement; says where."""


@dataclass(frozen=True)
class PgEndpoint:
    host: str
    port: int
    dbname: str
    user: str
    sslmode: str = "verify-full"
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    connect_timeout_s: int = 10
    min_tls: str | None = None  # None: the policy's default (libpq ssl_min_protocol_version)

    def connect(self) -> psycopg.Connection:
        """Certificate files are read now, at connect time: a rotation needs no restart."""
        try:
            return psycopg.connect(
                host=self.host,
                port=self.port,
                dbname=self.dbname,
                user=self.user,
                sslmode=self.sslmode,
                sslrootcert=self.sslrootcert,
                sslcert=self.sslcert,
                sslkey=self.sslkey,
                ssl_min_protocol_version=libpq_minimum(self.min_tls),
                connect_timeout=self.connect_timeout_s,
            )
        except psycopg.OperationalError as err:
            raise PostgresError(
                f"postgres {self.user}@{self.host}:{self.port}/{self.dbname}: "
                f"{str(err).strip().splitlines()[-1]}"
            ) from None

    def adbc(self):
        """An ADBC connection (libpq underneath: the same TLS parameters, files read now)."""
        params = {
            "sslmode": self.sslmode,
            "sslrootcert": self.sslrootcert,
            "sslcert": self.sslcert,
            "sslkey": self.sslkey,
            "ssl_min_protocol_version": libpq_minimum(self.min_tls),
            "connect_timeout": str(self.connect_timeout_s),
        }
        query = urlencode({k: v for k, v in params.items() if v is not None}, quote_via=quote)
        uri = (
            f"postgresql://{quote(self.user, safe='')}@{self.host}:{self.port}/"
            f"{quote(self.dbname, safe='')}?{query}"
        )
        import adbc_driver_postgresql.dbapi as adbc_dbapi  # bulk rows: the ETL only

        try:
            return adbc_dbapi.connect(uri)
        except adbc_dbapi.Error as err:
            raise PostgresError(
                f"postgres {self.user}@{self.host}:{self.port}/{self.dbname}: "
                f"{str(err).strip().splitlines()[0]}"
            ) from None
