"""The one adapter that reads the latest asset check evaluations from the instance.

Dagster has no public API for "the latest result of this check"; the event log storage
does. Keeping the call here means a Dagster upgrade that moves it touches one file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dagster import AssetCheckKey, DagsterInstance
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus


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


def latest_check_evaluations(
    instance: DagsterInstance, keys: Sequence[AssetCheckKey]
) -> dict[AssetCheckKey, CheckEvaluation]:
    """The newest completed evaluation of each check; checks never evaluated are absent."""
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(list(keys))
    out = {}
    for key, record in records.items():
        if record.status == AssetCheckExecutionRecordStatus.PLANNED:
            continue  # planned or still running: nothing to act on yet
        evaluation = record.evaluation
        if evaluation is None:
            continue
        out[key] = CheckEvaluation(
            key=key,
            storage_id=record.id,
            run_id=record.run_id,
            passed=evaluation.passed,
            severity=evaluation.severity.value,
            description=evaluation.description or "",
            timestamp=record.create_timestamp,
            metadata={k: getattr(v, "value", v) for k, v in evaluation.metadata.items()},
        )
    return out
