"""Materialize the whole graph in-process and summarise it (``secure-etl demo``)."""

import datetime as dt
import os
from dataclasses import dataclass, field

from dagster import DagsterInstance

from secure_etl.config import PlatformConfig
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import RENEWAL_JOB
from secure_etl.defs.health import HEALTH_JOB
from secure_etl.defs.names import pipeline_job_name
from secure_etl.defs.retention import RETENTION_JOB

# Dagster's console logger at INFO: our progress lines, without every engine event.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


@dataclass
class DemoSummary:
    certificates: dict[str, dict] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)  # what the retention job removed

    @property
    def all_checks_passed(self) -> bool:
        return all(passed for passed, _ in self.checks.values())


def latest_complete_partitions(start: str, count: int, now: dt.datetime | None = None) -> list[str]:
    """The ``count`` most recent hourly partition keys that have fully ended."""
    now = now or dt.datetime.now(dt.UTC)
    first = dt.datetime.strptime(start, "%Y-%m-%d-%H:%M").replace(tzinfo=dt.UTC)
    last = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)
    keys = []
    for i in range(count):
        hour = last - dt.timedelta(hours=i)
        if hour >= first:
            keys.append(hour.strftime("%Y-%m-%d-%H:%M"))
    return sorted(keys)


def run_demo(platform: PlatformConfig, partitions: int = 1, log=print) -> DemoSummary:
    """Run the renewal job (issue or renew every certificate, then check them) and each
    pipeline's job for the latest complete partitions, on ``$DAGSTER_HOME`` if set."""
    defs = build_definitions(platform)
    # One instance for every job, so the health report sees the runs before it.
    instance = (
        DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    )
    summary = DemoSummary()

    log(f"certificates: issuing or renewing {len(platform.certificates)}, then checking them")
    result = defs.resolve_job_def(RENEWAL_JOB).execute_in_process(
        run_config=QUIET, instance=instance
    )
    _collect(result, summary)
    for event in result.get_asset_materialization_events():
        meta = event.materialization.metadata
        summary.certificates[event.asset_key.path[-1]] = {
            "outcome": meta["outcome"].value,
            "days_remaining": meta["days_remaining"].value,
            "serial": meta["serial"].value,
        }

    for pipeline, p in platform.pipelines.items():
        job = defs.resolve_job_def(pipeline_job_name(pipeline))
        for partition in latest_complete_partitions(p.partitions.start, partitions):
            log(f"pipeline {pipeline}: materializing partition {partition}")
            result = job.execute_in_process(
                run_config=QUIET, partition_key=partition, instance=instance
            )
            _collect(result, summary, suffix=f"[{partition}]")
            for event in result.get_asset_materialization_events():
                label = f"{event.asset_key.to_user_string()}[{partition}]"
                summary.rows[label] = int(event.materialization.metadata["rows"].value)

    log("retention: deleting what the policies let go (raw files after their load and grace)")
    result = defs.resolve_job_def(RETENTION_JOB).execute_in_process(
        run_config=QUIET, instance=instance
    )
    summary.deleted = _retention_files(result)

    log("health: the report of what is true now (also a Prometheus textfile)")
    result = defs.resolve_job_def(HEALTH_JOB).execute_in_process(
        run_config=QUIET, instance=instance
    )
    _collect(result, summary)
    return summary


def _retention_files(result) -> list[str]:
    for event in result.all_events:
        if event.event_type_value == "STEP_OUTPUT":
            metadata = event.event_specific_data.metadata
            if "files" in metadata:
                return [line for line in str(metadata["files"].value).splitlines() if line]
    return []


def _collect(result, summary: DemoSummary, suffix: str = "") -> None:
    for evaluation in result.get_asset_check_evaluations():
        key = evaluation.asset_check_key
        label = f"{key.asset_key.to_user_string()}:{key.name}{suffix}"
        summary.checks[label] = (evaluation.passed, evaluation.description or "")
