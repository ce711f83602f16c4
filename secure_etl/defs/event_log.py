"""The event log of the SQLite instance (the repository's ``dagster.yaml``): Dagster's
run-sharded SQLite event log, with one pooled SQLAlchemy engine per database file.

Dagster's own class opens a new engine, a new connection, a transaction and a close for
every statement group it writes (``NullPool``): three of each for an asset check's
evaluation, and the close of the last connection to a WAL database checkpoints it (an
fsync of the database besides the WAL's). Here each shard (a run's file, the index) keeps
its engine and one open connection, so a write is a transaction on a connection that is
already open, with its statements compiled once per engine. A run's check evaluation,
most of what a checks run writes, is serialised once for its three rows (Dagster
serialises it for each) with statements built once (Dagster builds one per row), and its
two writes to the index are one transaction.

What stays as it was: the same files under ``<instance home>/history/runs`` (Dagster's
layout, so an existing home reads the same), the same tables and rows (each event
committed before ``store_event`` returns), SQLite's locking between processes (the
daemon, the web server, run workers and code servers each have their own engines; an
idle pooled connection holds no lock and no snapshot), and the web server's live run
view (its file watcher is told after each write: see ``store_event``).

``synchronous`` (``FULL``, SQLite's default, or ``NORMAL``) is set on each connection to
a WAL database. With ``NORMAL`` a commit is not fsynced (the WAL is, at each checkpoint):
a crashed process loses nothing it committed, and the database stays consistent, but a
power loss or an operating system crash may roll back the last commits.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as db
from dagster import DagsterEventType, Field, StringSource
from dagster._config import Enum, EnumValue
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    SqlEventLogStorageTable,
)
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

SYNCHRONOUS_MODES = ("FULL", "NORMAL")

# Run shards whose engines a process keeps besides the index's (the least recently used
# beyond it are closed): a run worker writes one run, the web server and the daemon read
# many, each engine holding a connection (three open files: the database, -wal, -shm).
MAX_OPEN_RUN_SHARDS = 8

# The statements of a check evaluation's writes, built once: each execution binds a row's
# values, and SQLAlchemy finds the compiled statement in the engine's cache.
_INSERT_EVENT = SqlEventLogStorageTable.insert()
_INSERT_EXECUTION = AssetCheckExecutionsTable.insert()
# The execution its check's planned event made (Dagster's update, with its where clause:
# the partition is None, or equal).
_CHECK = AssetCheckExecutionsTable.c
_UPDATE_PLANNED_EXECUTION = AssetCheckExecutionsTable.update().where(
    _CHECK.asset_key == db.bindparam("planned_asset_key"),
    _CHECK.check_name == db.bindparam("planned_check_name"),
    _CHECK.run_id == db.bindparam("planned_run_id"),
    _CHECK.partition.is_not_distinct_from(db.bindparam("planned_partition")),
)


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class _Shard:
    __slots__ = ("engine", "identity")

    def __init__(self, engine: Engine, identity: tuple[int, int] | None) -> None:
        self.engine = engine
        self.identity = identity


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's SQLite event log with one pooled engine per shard (module docstring).

    Config: ``base_dir`` (optional: the directory of the shards; by default the
    instance's ``history/runs``, where Dagster keeps them) and ``synchronous``."""

    def __init__(
        self,
        base_dir: str | None = None,
        synchronous: str = "FULL",
        inst_data: ConfigurableClassData | None = None,
    ) -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous: expected one of {SYNCHRONOUS_MODES}, not {synchronous}")
        self._synchronous = synchronous
        self._shards: OrderedDict[str, _Shard] = OrderedDict()
        self._shards_pid = os.getpid()
        self._tables_found: set[str] = set()
        self._inst_data = inst_data
        self._started = False
        if base_dir is not None:
            self._start(base_dir)

    def _start(self, base_dir: str) -> None:
        self._started = True  # Dagster's set-up below already reads and writes the index
        super().__init__(base_dir, inst_data=self._inst_data)

    def register_instance(self, instance: Any) -> None:
        if not self._started:  # the shards live where Dagster's default puts them
            self._start(os.path.join(instance.root_directory, "history", "runs"))
        super().register_instance(instance)

    @classmethod
    def config_type(cls) -> dict:
        return {
            "base_dir": Field(StringSource, is_required=False),
            "synchronous": Field(
                Enum("SqliteSynchronous", [EnumValue(m) for m in SYNCHRONOUS_MODES]),
                is_required=False,
                default_value="FULL",
            ),
        }

    @classmethod
    def from_config_value(  # ty: ignore[invalid-method-override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict
    ) -> PooledSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    # -- engines ---------------------------------------------------------------------

    def _new_engine(self, shard: str) -> Engine:
        engine = db.create_engine(
            self.conn_string_for_shard(shard),
            poolclass=QueuePool,
            pool_size=1,  # the storage's lock lets one connection at a time be used
            max_overflow=4,  # Dagster's schema set-up inspects on a second one
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        )
        synchronous = self._synchronous

        @sqlalchemy_event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                (mode,) = cursor.execute("PRAGMA journal_mode").fetchone()
                if str(mode).lower() == "wal":  # NORMAL is only safe with a WAL
                    cursor.execute(f"PRAGMA synchronous={synchronous}")
            finally:
                cursor.close()

        return engine

    def _engine_for(self, shard: str) -> Engine:
        """The shard's pooled engine: made (and the database set up) on first use, made
        again when the file was removed or replaced since (``wipe``, another process).
        Called under the storage's lock."""
        if os.getpid() != self._shards_pid:  # a forked child: the connections are the parent's
            for held in self._shards.values():
                held.engine.dispose(close=False)
            self._shards.clear()
            self._initialized_dbs = set()
            self._shards_pid = os.getpid()
        identity = _file_identity(self.path_for_shard(shard))
        held = self._shards.get(shard)
        if held is not None and identity is not None and held.identity == identity:
            self._shards.move_to_end(shard)
            return held.engine
        if held is not None:
            del self._shards[shard]
            held.engine.dispose()
        if held is not None or identity is None:
            self._initialized_dbs.discard(shard)
        engine = self._new_engine(shard)
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
            engine.dispose()  # connections opened before the WAL was set read it again
        self._shards[shard] = _Shard(engine, _file_identity(self.path_for_shard(shard)))
        self._close_beyond(MAX_OPEN_RUN_SHARDS)
        return engine

    def _close_beyond(self, keep: int) -> None:
        runs = [name for name in self._shards if name != INDEX_SHARD_NAME]
        for name in runs[: max(len(runs) - keep, 0)]:
            self._shards.pop(name).engine.dispose()

    def _close_all(self) -> None:
        if not self._started:
            return
        with self._db_lock:  # none of them is in use meanwhile
            for held in self._shards.values():
                held.engine.dispose()
            self._shards.clear()

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        if not self._started:
            raise DagsterInvariantViolationError(
                "PooledSqliteEventLogStorage without base_dir is used before an instance "
                "registered it"
            )
        with self._db_lock:
            engine = self._engine_for(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def has_table(self, table_name: str) -> bool:
        """Dagster asks before every check evaluation it stores whether the index has the
        asset check table, each time on an engine of its own. A table found stays found
        (a migration adds tables, nothing drops them); one not found is asked again."""
        if table_name in self._tables_found:
            return True
        found = super().has_table(table_name)
        if found:
            self._tables_found.add(table_name)
        return found

    # -- writes, watchers, removal ---------------------------------------------------

    def store_event(self, event: EventLogEntry) -> None:
        if (
            event.dagster_event_type == DagsterEventType.ASSET_CHECK_EVALUATION
            and event.run_id
            and self.supports_asset_checks  # or Dagster's own write says to migrate
        ):
            self._store_check_evaluation(event)
        else:
            super().store_event(event)
        # The web server follows a run's log by watching its database file for changes.
        # Dagster's engine per write modified it at every close (the checkpoint); a pooled
        # connection writes only the WAL, so the file's times are set once the event is
        # committed and readable.
        try:
            os.utime(self.path_for_shard(event.run_id))
        except FileNotFoundError:
            pass

    def _store_check_evaluation(self, event: EventLogEntry) -> None:
        """A run's check evaluation, written as Dagster's ``store_event`` writes it: the
        event in the run's database and in the index, then the check's execution (the
        row the check's planned event made, else a new one). Dagster serialises the event
        for each of the three and builds each statement for its row; here the event is
        serialised once and the statements are built once. The index's two writes are
        one transaction (Dagster's were two). It copies Dagster's writes (with its
        private ``_event_to_row``): the tests compare every table with what Dagster's
        own class stores, so a write a later Dagster changes or adds shows there."""
        row = self._event_to_row(event)
        evaluation = event.get_dagster_event().asset_check_evaluation_data
        target = evaluation.target_materialization_data
        status = (
            AssetCheckExecutionRecordStatus.SUCCEEDED
            if evaluation.passed
            else AssetCheckExecutionRecordStatus.FAILED
        )
        execution = {
            "asset_key": evaluation.asset_key.to_string(),
            "check_name": evaluation.check_name,
            "run_id": event.run_id,
            "partition": evaluation.partition,
            "execution_status": status.value,
            "evaluation_event": row["event"],
            "evaluation_event_timestamp": row["timestamp"],
            "materialization_event_storage_id": target.storage_id if target else None,
        }
        planned = {
            f"planned_{key}": execution[key]
            for key in ("asset_key", "check_name", "run_id", "partition")
        }
        with self.run_connection(event.run_id) as conn:
            conn.execute(_INSERT_EVENT, row)
        with self.index_connection() as conn:
            inserted = conn.execute(_INSERT_EVENT, row)
            execution["evaluation_event_storage_id"] = inserted.inserted_primary_key[0]
            updated = conn.execute(_UPDATE_PLANNED_EXECUTION, {**execution, **planned}).rowcount
            if updated == 0:  # no planned event (an op job's check): a new row
                conn.execute(_INSERT_EXECUTION, execution)
        if updated > 1:
            raise DagsterInvariantViolationError(
                f"Updated {updated} rows for asset check evaluation "
                f"{evaluation.asset_check_key} as a result of duplicate AssetCheckPlanned events."
            )

    def wipe(self) -> None:
        self._close_all()  # before the files are removed under open connections
        super().wipe()

    def dispose(self) -> None:
        if self._started:
            self._close_all()
            super().dispose()
