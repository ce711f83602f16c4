"""The retention job: deletes what each pipeline's retention policy lets go, records
each deletion in the audit log and in the run's metadata."""

from __future__ import annotations

import datetime as dt

from dagster import DefaultScheduleStatus, Output, ScheduleDefinition, job, op

from secure_etl.config import PlatformConfig
from secure_etl.defs.names import kind_tags
from secure_etl.etl.retention import apply_retention
from secure_etl.etl.storage import storage_for
from secure_etl.security.audit_trail import platform_audit_log

RETENTION_JOB = "retention"


def retention_job_and_schedule(platform: PlatformConfig):
    store = storage_for(platform)
    audit = platform_audit_log(platform)

    @op(name="apply_retention")
    def apply(context):
        now = dt.datetime.now(dt.UTC)
        deleted = []
        for name, pipeline in platform.pipelines.items():
            policy = pipeline.retention
            hashed_keep = (
                dt.timedelta(days=policy.hashed_days) if policy.hashed_days is not None else None
            )
            for item in apply_retention(
                store, name, dt.timedelta(hours=policy.raw_grace_hours), hashed_keep, now
            ):
                audit.append(
                    "service:secure_etl",
                    "retention.delete",
                    f"{item.stage}/{name}",
                    item.partition,
                    context.run.run_id,
                    inputs={item.stage: str(item.path)},
                    outputs={"bytes_deleted": str(item.bytes)},
                )
                deleted.append(f"{item.stage}/{name}[{item.partition}] ({item.bytes} bytes)")
        if deleted:
            audit.checkpoint()  # sign the head the deletions left
        context.log.info(
            f"retention deleted {len(deleted)} files" + "".join(f"\n  {line}" for line in deleted)
        )
        return Output(len(deleted), metadata={"deleted": len(deleted), "files": "\n".join(deleted)})

    @job(
        name=RETENTION_JOB,
        description="Delete raw partitions after their load (and a "
        "grace period), and hashed ones by their own policy.",
        tags=kind_tags("maintenance"),
    )
    def retention():
        apply()

    schedule = ScheduleDefinition(
        name="retention_schedule",
        job=retention,
        cron_schedule=platform.retention_schedule,
        default_status=DefaultScheduleStatus.RUNNING,
    )
    return retention, schedule
