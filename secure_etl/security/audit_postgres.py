"""The audit log in a PostgreSQL table, for writers on many machines: one hash chain,
the same records, checkpoints and verification as the file log (``audit.py``).

A writer appends in one transaction that first takes a transaction-level advisory lock
(``pg_advisory_xact_lock``) on the table, then reads the last record and inserts the one
that follows it: appends from any number of processes and hosts queue up on the lock,
and a writer that dies mid-append leaves nothing (its transaction rolls back), so no
record is ever torn. Each row keeps the record's canonical bytes, so verification
recomputes exactly what the file log does.

Checkpoints are signed as there. Every writer must see the last one (it verifies from
it, and refuses to sign when checkpoints were announced and it finds none), so they are
kept in a second table, inserted in the transaction that signs; each writer also writes
a copy into its own ``checkpoint_dir``, for the operator to ship to storage nobody can
rewrite (``audit verify --checkpoints`` checks against such a copy).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from psycopg import sql

from secure_etl.config import AuditPostgres
from secure_etl.security.audit import (
    CHECKPOINTS_ON,
    GENESIS,
    AuditChainBroken,
    Verdict,
    canonical,
    check_line,
    checkpoint_files,
    checkpoint_name,
    checkpoints_on,
    next_record,
    record_fields,
    refuse_a_lost_store,
    sign_checkpoint,
    signed_body,
    signing_key,
    verify_chain,
    write_checkpoint,
)
from secure_etl.security.postgres_tls import PgEndpoint, PostgresError
from secure_etl.security.shared_postgres import advisory_key, endpoint_of, ensure_tables


@dataclass
class PostgresAuditLog:
    endpoint: PgEndpoint
    schema: str
    table: str
    checkpoint_table: str
    checkpoint_dir: Path
    signing_key_path: Path
    checkpoint_every: int = 100
    public_key: str | None = None
    _created: bool = field(default=False, repr=False)

    @property
    def path(self) -> str:
        """What the log is, for messages (never a password: there is none)."""
        e = self.endpoint
        return (
            f"postgresql://{e.user}@{e.host}:{e.port}/{e.dbname} table {self.schema}.{self.table}"
        )

    @property
    def checkpoint_store(self) -> str:
        return f"table {self.schema}.{self.checkpoint_table}"

    @property
    def _name(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    @property
    def _points(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.checkpoint_table)

    @property
    def _lock(self) -> int:
        return advisory_key(f"secure_etl.audit:{self.schema}.{self.table}")

    def append(
        self,
        actor: str,
        action: str,
        asset: str = "",
        partition: str = "",
        run_id: str = "",
        inputs: Mapping[str, str] | None = None,
        outputs: Mapping[str, str] | None = None,
        key_ids: list[str] | None = None,
    ) -> dict:
        """Append one record under the table's advisory lock; every ``checkpoint_every``
        records the head is signed. AuditChainBroken (after the record is committed) if
        the chain since the last checkpoint does not verify."""
        fields = record_fields(actor, action, asset, partition, run_id, inputs, outputs, key_ids)
        problem, point = None, None
        with self._connect() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock,))
            record = self._insert(conn, fields)
            if record["seq"] % self.checkpoint_every == 0:
                try:
                    point = self._sign(conn)
                except AuditChainBroken as err:
                    problem = err  # the record stays: raised once it is committed
        if point:
            write_checkpoint(self.checkpoint_dir, point)
        if problem:
            raise problem
        return record

    def checkpoint(self) -> dict | None:
        """Sign the log's current head now; AuditChainBroken if the chain since the last
        checkpoint does not verify."""
        with self._connect() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock,))
            point = self._sign(conn)
        if point:
            write_checkpoint(self.checkpoint_dir, point)
        return point

    def verify(
        self, checkpoint_dir: Path | None = None, public_key: Ed25519PublicKey | Path | None = None
    ) -> Verdict:
        """The file log's ``verify`` over the table: every row in seq order, each
        checkpoint's signature and head; the checkpoints are the checkpoint table's, or
        those in ``checkpoint_dir`` (a copy kept elsewhere) when it is given."""
        try:
            with self._connect() as conn:
                rows = self._rows(conn, 0)
                documents = (
                    checkpoint_files(checkpoint_dir)
                    if checkpoint_dir
                    else [
                        (f"{self.checkpoint_store} records {n}", checkpoint_name(n), text.encode())
                        for n, text in conn.execute(
                            sql.SQL("SELECT records, signed FROM {} ORDER BY records").format(
                                self._points
                            )
                        )
                    ]
                )
        except (PostgresError, psycopg.Error) as err:
            return Verdict(False, 0, 0, f"{self.path}: {str(err).strip()}")
        if not rows:
            return Verdict(False, 0, 0, f"{self.path}: no audit records")
        lines = [(f"{self.path} seq {seq}", i, line) for i, (seq, line) in enumerate(rows, 1)]
        if public_key is None:
            public_key = self.signing_key_path.with_suffix(".pub")
        store = str(checkpoint_dir) if checkpoint_dir else self.checkpoint_store
        return verify_chain(lines, self.path, documents, store, public_key)

    def records(self) -> Iterator[dict]:
        """The records, oldest first, unchecked (``verify`` checks them)."""
        with self._connect() as conn:
            for _seq, line in self._rows(conn, 0):
                yield json.loads(line)

    def _connect(self) -> psycopg.Connection:
        conn = self.endpoint.connect()
        if not self._created:
            ensure_tables(
                conn,
                self._lock,
                self.schema,
                {
                    self.table: "seq bigint PRIMARY KEY, record text NOT NULL",
                    self.checkpoint_table: "records bigint PRIMARY KEY, signed text NOT NULL",
                },
            )
            self._created = True
        return conn

    def _last(self, conn: psycopg.Connection) -> dict | None:
        row = conn.execute(
            sql.SQL("SELECT record FROM {} ORDER BY seq DESC LIMIT 1").format(self._name)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def _insert(self, conn: psycopg.Connection, fields: dict) -> dict:
        record = next_record(self._last(conn), **fields)
        conn.execute(
            sql.SQL("INSERT INTO {} (seq, record) VALUES (%s, %s)").format(self._name),
            (record["seq"], canonical(record).decode()),
        )
        return record

    def _rows(self, conn: psycopg.Connection, since: int) -> list[tuple[int, bytes]]:
        rows = conn.execute(
            sql.SQL("SELECT seq, record FROM {} WHERE seq >= %s ORDER BY seq").format(self._name),
            (since,),
        ).fetchall()
        return [(seq, text.encode() + b"\n") for seq, text in rows]

    def _sign(self, conn: psycopg.Connection) -> dict | None:
        """Under the lock: verify since the last checkpoint (announcing checkpoints with
        the first), sign the head into the checkpoint table; the new checkpoint, or None
        for an empty log or one with nothing new since the last."""
        if self._last(conn) is None:
            return None
        key = signing_key(self)
        point = self._last_point(conn, key.public_key())
        announced = self._verify_since(conn, point)
        if point is None:
            refuse_a_lost_store(self.path, self.checkpoint_store, announced)
            self._insert(conn, checkpoints_on(self.checkpoint_store, key))
        last = self._last(conn)
        if point and point["records"] == last["seq"]:
            return None
        signed = sign_checkpoint(key, last["seq"], last["seq"], last["hash"])
        conn.execute(
            sql.SQL("INSERT INTO {} (records, signed) VALUES (%s, %s)").format(self._points),
            (last["seq"], canonical(signed).decode()),
        )
        return signed

    def _last_point(self, conn: psycopg.Connection, public: Ed25519PublicKey) -> dict | None:
        row = conn.execute(
            sql.SQL("SELECT records, signed FROM {} ORDER BY records DESC LIMIT 1").format(
                self._points
            )
        ).fetchone()
        if row is None:
            return None
        body = signed_body(row[1].encode(), public)
        if body is None or body["records"] != row[0]:
            raise AuditChainBroken(
                f"{self.checkpoint_store} records {row[0]}: not a checkpoint this key signed "
                "for that record"
            )
        return body

    def _verify_since(self, conn: psycopg.Connection, point: dict | None) -> int:
        previous, count, announced = GENESIS, 0, 0
        rows = self._rows(conn, point["records"] if point else 0)
        if point:
            head = json.loads(rows[0][1]) if rows else {}
            if (head.get("seq"), head.get("hash"), point["size"]) != (
                point["records"],
                point["head"],
                point["records"],
            ):
                raise AuditChainBroken(
                    f"{self.path}: record {point['records']} is not the one its last "
                    "checkpoint signed (rewritten or deleted): refusing to sign"
                )
            previous, count, rows = point["head"], point["records"], rows[1:]
        for seq, line in rows:
            record, problem = check_line(line, previous, count)
            if record is None:
                raise AuditChainBroken(
                    f"{self.path}: seq {seq}: {problem}: refusing to sign a broken chain"
                )
            announced = record["seq"] if record["action"] == CHECKPOINTS_ON else announced
            previous, count = record["hash"], count + 1
        return announced


def postgres_audit_log(
    config: AuditPostgres,
    checkpoint_dir: Path,
    signing_key_path: Path,
    checkpoint_every: int,
    public_key: str | None,
) -> PostgresAuditLog:
    return PostgresAuditLog(
        endpoint_of(config),
        config.db_schema,
        config.table,
        config.checkpoint_table,
        checkpoint_dir,
        signing_key_path,
        checkpoint_every,
        public_key,
    )
