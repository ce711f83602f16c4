"""The one adapter to Dagster's asset check storage: it reads the latest evaluations
from the instance, and builds the evaluations our checks report.

Dagster has no public API for "the latest result of this check"; the event log storage
does. Nor does it export the record of which materialization an evaluation judged.
Keeping both here means a Dagster upgrade that moves them touches one file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    DagsterInstance,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData as TargetMaterialization,
)
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecord,
    AssetCheckExecutionRecordStatus,
)
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._core.storage.sqlalchemy_compat import db_fetch_mappings, db_select


@dataclass(frozen=True)
class CheckEvaluation:
    key: AssetCheckKey
    storage_id: int
    run_id: str
    passed: bool
    severity: str
    description: str
    timestamp: float  # when it was evaluated (Unix seconds)
    metadata: dict  # the numbers and text the check reported
    # The storage id of the materialization it judged (None: none, or not recorded).
    target_storage_id: int | None = None


def latest_check_evaluations(
    instance: DagsterInstance, keys: Sequence[AssetCheckKey]
) -> dict[AssetCheckKey, CheckEvaluation]:
    """The newest completed evaluation of each check; checks never evaluated are absent."""
    records = _latest_records(instance, keys)
    out = {}
    for key, record in records.items():
        evaluation = _evaluation(key, record)
        if evaluation is not None:
            out[key] = evaluation
    return out


# Dagster's query binds two parameters per check; SQLite allows 32,766 in a statement.
KEYS_PER_QUERY = 5000


def _latest_records(instance: DagsterInstance, keys: Sequence[AssetCheckKey]) -> dict:
    """The latest execution record of each check: one query per KEYS_PER_QUERY checks."""
    keys = list(keys)
    records = {}
    for i in range(0, len(keys), KEYS_PER_QUERY):
        chunk = keys[i : i + KEYS_PER_QUERY]
        records.update(instance.event_log_storage.get_latest_asset_check_execution_by_key(chunk))
    return records


_TOP = "top"  # in what _records_since returns: the highest execution id it read


def _records_since(
    instance: DagsterInstance,
    cursor: EvaluationCursor,
    wanted: set[AssetCheckKey],
    failed_only: bool = False,
) -> dict | None:
    """The latest execution record of each of ``wanted`` that changed since ``cursor``
    (None: the storage is not SQL); with ``failed_only``, only those that failed or are
    still planned. It reads the executions numbered from the oldest one still waiting at
    the cursor, by primary key (what changed, not history): first their ids and states,
    then the whole record of only the ones returned (a checks run of a thousand
    certificates adds eight thousand; one failed is one record to decode)."""
    storage = instance.event_log_storage
    if not isinstance(storage, SqlEventLogStorage):
        return None
    table = AssetCheckExecutionsTable
    low = min([cursor.after + 1, *(lo for lo, _ in cursor.waiting)])
    by_name = {(key.asset_key.to_string(), key.name): key for key in wanted}
    states = (
        db_select([table.c.id, table.c.asset_key, table.c.check_name, table.c.execution_status])
        .where(table.c.id >= low)
        .order_by(table.c.id)
    )
    with storage.index_connection() as conn:
        rows = db_fetch_mappings(conn, states)
    top, latest = 0, {}
    for row in rows:  # oldest first: the last record of a check is its latest
        top = row["id"]
        key = by_name.get((row["asset_key"], row["check_name"]))
        if key is not None:
            latest[key] = row
    skip = {AssetCheckExecutionRecordStatus.SUCCEEDED.value} if failed_only else set()
    ids = {row["id"]: key for key, row in latest.items() if row["execution_status"] not in skip}
    records: dict = {_TOP: top}
    columns = [
        table.c.id,
        table.c.asset_key,
        table.c.check_name,
        table.c.run_id,
        table.c.execution_status,
        table.c.evaluation_event,
        table.c.create_timestamp,
        table.c.partition,
    ]
    chosen = sorted(ids)
    for i in range(0, len(chosen), KEYS_PER_QUERY):
        query = db_select(columns).where(table.c.id.in_(chosen[i : i + KEYS_PER_QUERY]))
        with storage.index_connection() as conn:
            for row in db_fetch_mappings(conn, query):
                key = ids[row["id"]]
                records[key] = AssetCheckExecutionRecord.from_db_row(row, key)
    return records


def _evaluation(key: AssetCheckKey, record) -> CheckEvaluation | None:
    if record.status == AssetCheckExecutionRecordStatus.PLANNED:
        return None  # planned or still running: nothing to act on yet
    evaluation = record.evaluation
    if evaluation is None:
        return None
    return CheckEvaluation(
        key=key,
        storage_id=record.id,
        run_id=record.run_id,
        passed=evaluation.passed,
        severity=evaluation.severity.value,
        description=evaluation.description or "",
        timestamp=record.create_timestamp,
        metadata={k: getattr(v, "value", v) for k, v in evaluation.metadata.items()},
        target_storage_id=target.storage_id
        if (target := evaluation.target_materialization_data)
        else None,
    )


@dataclass(frozen=True)
class EvaluationCursor:
    """Where a reader of check evaluations got to, in a few numbers however many checks.

    Dagster numbers a check's execution when it is planned (at the start of its run) and
    fills in the evaluation later. Every execution numbered above ``after`` is new; so
    are those at or below it that were still waiting for their evaluation at the last
    read (``waiting``, kept as ranges: a run's checks are numbered consecutively).
    """

    after: int = 0
    waiting: tuple[tuple[int, int], ...] = ()

    def is_new(self, storage_id: int) -> bool:
        return storage_id > self.after or any(lo <= storage_id <= hi for lo, hi in self.waiting)

    def to_json(self) -> str:
        return json.dumps({"after": self.after, "waiting": [list(r) for r in self.waiting]})

    @classmethod
    def from_json(cls, text: str | None) -> tuple[EvaluationCursor, dict[str, int] | None]:
        """The cursor, and (from a cursor of the earlier form: check -> the execution
        seen last) that mapping, which decides what is new for one more read."""
        data = json.loads(text) if text else {}
        if "after" not in data:
            return cls(), ({str(k): int(v) for k, v in data.items()} if data else None)
        waiting = tuple((int(lo), int(hi)) for lo, hi in data.get("waiting", []))
        return cls(int(data["after"]), waiting), None


def _ranges(ids: list[int]) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for i in sorted(ids):
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return tuple((lo, hi) for lo, hi in out)


def new_check_evaluations(
    instance: DagsterInstance,
    keys: Sequence[AssetCheckKey],
    cursor: str | None,
    failed_only: bool = False,
) -> tuple[list[CheckEvaluation], str]:
    """The checks' latest evaluations made since ``cursor`` (``failed_only``: those that
    failed), and the cursor after them.

    A few queries for all the checks, whatever their history; the cursor stays a few
    numbers long. An evaluation is returned once: a re-read with the new cursor skips it.
    """
    state, legacy = EvaluationCursor.from_json(cursor)
    records = None
    if cursor and legacy is None:
        records = _records_since(instance, state, set(keys), failed_only)
    if records is None:  # the first read, or a storage that is not SQL
        records = _latest_records(instance, keys)
    fresh, waiting, top = [], [], max(state.after, records.pop(_TOP, 0))
    for key, record in records.items():
        top = max(top, record.id)
        if record.status == AssetCheckExecutionRecordStatus.PLANNED:
            waiting.append(record.id)
            continue
        if legacy is not None:
            if record.id <= legacy.get(key.to_user_string(), 0):
                continue
        elif not state.is_new(record.id):
            continue
        evaluation = _evaluation(key, record)
        if evaluation is not None and not (failed_only and evaluation.passed):
            fresh.append(evaluation)
    fresh.sort(key=lambda e: e.storage_id)
    return fresh, EvaluationCursor(top, _ranges(waiting)).to_json()


def latest_materializations(
    instance: DagsterInstance, keys: Sequence[AssetKey]
) -> dict[AssetKey, TargetMaterialization]:
    """The latest materialization of each asset (one query for all), as the pointer an
    evaluation keeps to what it judged; assets never materialized are absent."""
    out = {}
    for record in instance.get_asset_records(list(keys)) if keys else []:
        latest = record.asset_entry.last_materialization_record
        if latest is not None:
            out[record.asset_entry.asset_key] = TargetMaterialization(
                storage_id=latest.storage_id,
                run_id=latest.run_id,
                timestamp=latest.timestamp,
            )
    return out


def check_evaluation(
    asset: AssetKey,
    check_name: str,
    *,
    passed: bool,
    severity: AssetCheckSeverity,
    description: str,
    target: TargetMaterialization | None,
    metadata: dict[str, str | float] | None = None,
) -> AssetCheckEvaluation:
    """What a check op yields for one check: the evaluation alone.

    Yielding an `AssetCheckResult` makes Dagster write an output event beside each
    evaluation and, in an op with many checks, resolve the result against all of them
    (quadratic in the number of checks); the evaluation is what the UI, the sensors and
    the alerts read. (Dagster then logs, once per op, that the op did not yield its
    optional outputs: one line in the run's log, against an event per check saved.)"""
    return AssetCheckEvaluation(
        asset_key=asset,
        check_name=check_name,
        passed=passed,
        metadata=metadata or {},
        target_materialization_data=target,
        severity=severity,
        description=description,
        blocking=False,
    )
