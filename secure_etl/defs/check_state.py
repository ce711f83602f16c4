"""The one adapter to Dagster's asset check storage: it reads the latest evaluations
from the instance, and builds the evaluations our checks report.

Dagster has no public API for "the latest result of this check"; the event log storage
does. Nor does it export the record of which materialization an evaluation judged.
Keeping both here means a Dagster upgrade that moves them touches one file.
"""

from __future__ import annotations

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
    metadata: dict[str, str | float],
    target: TargetMaterialization | None,
) -> AssetCheckEvaluation:
    """What a check op yields for one check: the evaluation alone.

    Yielding an `AssetCheckResult` makes Dagster write an output event beside each
    evaluation and, in an op with many checks, resolve the result against all of them
    (quadratic in the number of checks); the evaluation is what the UI, the sensors and
    the alerts read."""
    return AssetCheckEvaluation(
        asset_key=asset,
        check_name=check_name,
        passed=passed,
        metadata=metadata,
        target_materialization_data=target,
        severity=severity,
        description=description,
        blocking=False,
    )
