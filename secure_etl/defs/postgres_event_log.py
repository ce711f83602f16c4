"""The event log of the production instance (``deploy/dagster.yaml``): dagster-postgres's
``PostgresEventLogStorage`` with one race closed.

The first step of a run to claim a slot in a concurrency pool nobody has used yet (our
loads' ``load/<type>/<database>`` pools) creates the pool's row with the instance's
default limit: an INSERT, and on a unique violation an UPDATE in the same transaction.
On PostgreSQL a failed statement aborts its transaction, so when two runs claim a new
pool at the same moment (both pipelines of a minute loading into one database) the
second's UPDATE fails with "current transaction is aborted" and its run fails (seen in
the soak, a pipeline run's first minute). Here that case is finished in a transaction
of its own: the row the other run created gets this instance's default limit and its
slots, as Dagster's UPDATE would have done.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as db
from dagster._core.storage.event_log.schema import ConcurrencyLimitsTable
from dagster._serdes import ConfigurableClassData
from dagster_postgres.event_log import PostgresEventLogStorage as _DagsterPostgresEventLog
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config
from sqlalchemy import exc as db_exc

# PostgreSQL's SQLSTATE for a statement sent in a transaction that an error has aborted.
IN_FAILED_SQL_TRANSACTION = "25P02"


class PostgresEventLogStorage(_DagsterPostgresEventLog):
    """dagster-postgres's event log; a concurrency pool created by two runs at once no
    longer fails the second (see the module's docstring)."""

    @classmethod
    def from_config_value(  # the parent builds its own class, not ``cls``
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PostgresEventLogStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )

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
