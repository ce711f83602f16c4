"""A PostgreSQL that holds what every worker shares (the audit trail, the certificate
store): how to reach it, its advisory-lock keys, and its tables created when missing.
Loaded only when a shared backend is configured (it imports psycopg)."""

from __future__ import annotations

import hashlib

import psycopg
from psycopg import sql

from secure_etl.config import SharedPostgres
from secure_etl.security.postgres_tls import PgEndpoint


def endpoint_of(config: SharedPostgres) -> PgEndpoint:
    """The verify-full endpoint, with the worker's own client certificate files."""
    return PgEndpoint(
        host=config.host,
        port=config.port,
        dbname=config.dbname,
        user=config.user,
        sslrootcert=config.ca_bundle,
        sslcert=config.client_certificate,
        sslkey=config.client_key,
        connect_timeout_s=config.connect_timeout_s,
    )


def advisory_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for ``name``, the same on every machine."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def ensure_tables(conn: psycopg.Connection, lock: int, schema: str, tables: dict[str, str]) -> None:
    """Create the schema and each missing table (``{name: column definitions}``) under
    the advisory lock ``lock``, so writers starting at once do not race. Nothing is
    created when they exist: the role then needs no CREATE privilege."""
    with conn.transaction():
        missing = [
            name
            for name in tables
            if conn.execute(
                "SELECT to_regclass(%s)", (sql.Identifier(schema, name).as_string(conn),)
            ).fetchone()[0]
            is None
        ]
        if not missing:
            return
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        for name in missing:
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                    sql.Identifier(schema, name), sql.SQL(tables[name])
                )
            )
