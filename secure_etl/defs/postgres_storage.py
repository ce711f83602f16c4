"""The storages of the production instance (``deploy/dagster.yaml``): dagster-postgres's
run, event-log and schedule storages, each with a small connection pool, and the event
log with one race closed.

**A pool instead of a connection per statement.** dagster-postgres opens a new
connection for every storage call outside the web server (SQLAlchemy's ``NullPool``, so
that many instances in one process hold none). Ours reach PostgreSQL over verify-full
TLS with a client certificate: every call paid a TLS handshake and a new server
backend (``benchmarks/instance_storage.py``, 2-core machine: an event stored 29 ms, a
read 102 ms; pooled 5.6 and 10.6 ms), and a sensor tick that creates one run makes
dozens of calls. Each storage keeps one connection (and opens up to
``POOL_OVERFLOW`` more while threads need them, closed when returned), checks it before
use (a server restarted meanwhile costs a reconnect, not an error) and replaces it after
``POOL_RECYCLE_S``. A process that forks drops the parent's connections in the child.
Connections already open keep working when a certificate rotates: the certificate is
checked when a connection is opened, so each new one gets the current files.

**The event log's race.** The first step of a run to claim a slot in a concurrency pool
nobody has used yet (our loads' ``load/<type>/<database>`` pools) creates the pool's row
with the instance's default limit: an INSERT, and on a unique violation an UPDATE in the
same transaction. On PostgreSQL a failed statement aborts its transaction, so when two
runs claim a new pool at the same moment (both pipelines of a minute loading into one
database) the second's UPDATE fails with "current transaction is aborted" and its run
fails (seen in the soak, a pipeline run's first minute). Here that case is finished in a
transaction of its own: the row the other run created gets this instance's default
limit and its slots, as Dagster's UPDATE would have done.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping
from typing import Any

import sqlalchemy as db
from dagster._core.storage.event_log.schema import ConcurrencyLimitsTable
from dagster._serdes import ConfigurableClassData
from dagster_postgres.event_log import PostgresEventLogStorage as _DagsterPostgresEventLog
from dagster_postgres.run_storage import PostgresRunStorage as _DagsterPostgresRunStorage
from dagster_postgres.schedule_storage import (
    PostgresScheduleStorage as _DagsterPostgresScheduleStorage,
)
from dagster_postgres.utils import (
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)
from sqlalchemy import exc as db_exc

# PostgreSQL's SQLSTATE for a statement sent in a transaction that an error has aborted.
IN_FAILED_SQL_TRANSACTION = "25P02"


# Connections a storage keeps, opens beyond that while threads need them, and the age
# after which one is replaced. The daemon's sensor, schedule and queue threads share a
# storage; a run worker uses one at a time. With three storages a process keeps three.
POOL_SIZE = 1
POOL_OVERFLOW = 4
POOL_RECYCLE_S = 3600


class _Pooled:
    """Swaps dagster-postgres's connection-per-call engine for a pooled one (the module's
    docstring says why). Before the parent's methods, so ``from_config_value`` builds this
    class (the parent's builds its own) and the engine is swapped once it is made."""

    postgres_url: str
    _token_provider: Any
    _engine: db.engine.Engine

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._engine.dispose()  # the parent's engine: it has checked the tables
        self._engine = pooled_engine(self.postgres_url, self._token_provider)

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ):
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )

    def dispose(self) -> None:
        super().dispose()  # type: ignore[misc]
        self._engine.dispose()


def pooled_engine(postgres_url: str, token_provider: Any = None) -> db.engine.Engine:
    """An engine keeping ``POOL_SIZE`` checked connections, dropped (not closed: they
    are the parent's) in a child process after a fork."""
    engine = create_pg_engine(
        postgres_url,
        token_provider,
        isolation_level="AUTOCOMMIT",
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
        pool_pre_ping=True,
        pool_recycle=POOL_RECYCLE_S,
    )
    ref = weakref.ref(engine)

    def _in_child() -> None:
        child = ref()
        if child is not None:
            child.dispose(close=False)

    os.register_at_fork(after_in_child=_in_child)
    return engine


class PostgresRunStorage(_Pooled, _DagsterPostgresRunStorage):
    """dagster-postgres's run storage on a pooled connection."""


class PostgresScheduleStorage(_Pooled, _DagsterPostgresScheduleStorage):
    """dagster-postgres's schedule storage on a pooled connection."""


class PostgresEventLogStorage(_Pooled, _DagsterPostgresEventLog):
    """dagster-postgres's event log on a pooled connection; a concurrency pool created by
    two runs at once no longer fails the second (see the module's docstring)."""

    def initialize_concurrency_limit_to_default(self, concurrency_key: str) -> bool:
        try:
            return super().initialize_concurrency_limit_to_default(concurrency_key)
        except db_exc.DBAPIError as err:
            if getattr(err.orig, "pgcode", None) != IN_FAILED_SQL_TRANSACTION:
                raise
        # The INSERT met the row another run had just committed; Dagster's UPDATE after it
        # was refused in the aborted transaction. Do what it would have done.
        limit = self._instance.global_op_concurrency_default_limit
        with self.index_transaction() as conn:
            conn.execute(
                ConcurrencyLimitsTable.update()
                .values(limit=limit)
                .where(
                    db.and_(
                        ConcurrencyLimitsTable.c.concurrency_key == concurrency_key,
                        ConcurrencyLimitsTable.c.limit != limit,
                    )
                )
            )
            self._allocate_concurrency_slots(conn, concurrency_key, limit)
        return True
