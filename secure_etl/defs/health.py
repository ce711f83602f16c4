"""The health report from the Dagster instance: an asset (Markdown in the UI, a
Prometheus textfile on disk, two freshness checks that alert like any other check) and
the collector ``secure-etl status`` uses."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetRecordsFilter,
    DagsterError,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    MaterializeResult,
    MetadataValue,
    RunsFilter,
    ScheduleDefinition,
    asset,
    define_asset_job,
)

from secure_etl.config import PlatformConfig
from secure_etl.defs.check_state import latest_check_evaluations
from secure_etl.defs.names import certificate_check_keys, kind_tags, pipeline_job_name, stage_key
from secure_etl.errors import UserError
from secure_etl.etl.check_names import LOADED_CHECKS
from secure_etl.monitor import health
from secure_etl.monitor.health import HealthReport, PipelineHealth, SecurityHealth

HEALTH_KEY = AssetKey(["operations", "health_report"])
HEALTH_JOB = "health_report"


def collect(platform: PlatformConfig, instance: DagsterInstance | None) -> HealthReport:
    """The whole report; without an instance, the Dagster parts are left empty."""
    now = dt.datetime.now(dt.UTC)
    certificates = health.certificate_status(platform, now)
    pipelines = [
        _pipeline(platform, name, instance, now) if instance else PipelineHealth(name)
        for name in platform.pipelines
    ]
    security = SecurityHealth.of(
        health.connection_security(platform),
        health.audit_status(platform, now),
        _auth_failures(instance, now) if instance else 0,
    )
    limit = platform.monitoring.certificate_checks_max_age_hours
    for row in certificates:
        latest = (
            latest_check_evaluations(instance, certificate_check_keys(platform, row.name))
            if instance
            else {}
        )
        if latest:
            newest = max(e.timestamp for e in latest.values())
            row.checks_age_hours = round((now.timestamp() - newest) / 3600, 2)
            row.checks_fresh = row.checks_age_hours <= limit
    report = HealthReport(
        generated_at=now.isoformat(timespec="seconds"),
        instance="dagster" if instance else "none (set DAGSTER_HOME)",
        pipelines=pipelines,
        certificates=certificates,
        security=security,
        policy=health.policy_status(platform),
    )
    report.problems = _problems(report, platform)
    return report


def report_for(platform: PlatformConfig) -> HealthReport:
    """The report from ``$DAGSTER_HOME``'s instance, else ``./.dagster_home`` (where
    ``make demo`` keeps its runs), else without run history."""
    home = os.environ.get("DAGSTER_HOME")
    if not home and Path(".dagster_home").is_dir():
        home = str(Path(".dagster_home").resolve())
    if not home:
        return collect(platform, None)
    with open_instance(home) as instance:
        return collect(platform, instance)


def open_instance(home: str) -> DagsterInstance:
    """The instance of a Dagster home; a ``UserError`` (one line) when Dagster refuses
    its settings (the CLI has checked the directory and that its YAML parses)."""
    try:
        return DagsterInstance.from_config(home)
    except (DagsterError, OSError, ValueError) as err:
        text = " ".join(str(err).split())
        raise UserError(f"DAGSTER_HOME={home}: Dagster cannot open it: {text[:300]}") from None


def _pipeline(platform: PlatformConfig, name: str, instance, now: dt.datetime) -> PipelineHealth:
    row = PipelineHealth(name)
    runs = instance.get_run_records(RunsFilter(job_name=pipeline_job_name(name)), limit=1)
    if runs:
        run = runs[0]
        row.last_run_id = run.dagster_run.run_id
        row.last_run_status = run.dagster_run.status.value
        row.last_run_ended_at = run.end_time and dt.datetime.fromtimestamp(
            run.end_time, dt.UTC
        ).isoformat(timespec="seconds")
        if run.end_time and run.start_time:
            row.last_run_duration_s = round(run.end_time - run.start_time, 2)
    loaded = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=stage_key("loaded", name)), limit=1
    ).records
    if loaded:
        record = loaded[0]
        metadata = record.asset_materialization.metadata
        at = dt.datetime.fromtimestamp(record.timestamp, dt.UTC)
        age = (now - at).total_seconds() / 3600
        row.rows_loaded = int(metadata["rows"].value) if "rows" in metadata else None
        row.last_partition = record.partition_key or record.run_id
        row.loaded_at = at.isoformat(timespec="seconds")
        row.age_hours = round(age, 2)
        row.fresh = age <= platform.monitoring.loaded_max_lag_hours
    else:
        row.fresh = False
    checks = latest_check_evaluations(
        instance, [_loaded_check(name, check) for check in LOADED_CHECKS]
    )
    by_name = {key.name: e for key, e in checks.items()}
    reconcile = by_name.get("rows_reconcile")
    if reconcile:
        m = reconcile.metadata
        raw, loaded_rows = m.get("raw", 0) or 0, m.get("loaded", 0) or 0
        row.quarantine_rate = round(m.get("quarantined", 0) / raw, 4) if raw else 0.0
        row.filtered_rows = m.get("filtered")
        dup = by_name.get("unique_keys")
        if dup and loaded_rows:
            row.duplicate_rate = round(dup.metadata.get("duplicate_rows", 0) / loaded_rows, 4)
    if "null_rate" in by_name:
        row.null_rate = by_name["null_rate"].metadata.get("max_null_rate")
    row.failing_checks = sorted(n for n, e in by_name.items() if not e.passed) or None
    return row


def _loaded_check(pipeline: str, check: str) -> AssetCheckKey:
    return AssetCheckKey(stage_key("loaded", pipeline), check)


def _auth_failures(instance: DagsterInstance, now: dt.datetime) -> int:
    """Steps of the last 30 days' failed runs whose error is a TLS or login refusal."""
    since = now - dt.timedelta(days=30)
    runs = instance.get_run_records(
        RunsFilter(statuses=[DagsterRunStatus.FAILURE], created_after=since), limit=1000
    )
    count = 0
    for run in runs:
        for entry in instance.all_logs(
            run.dagster_run.run_id, of_type=DagsterEventType.STEP_FAILURE
        ):
            error, text = entry.dagster_event.event_specific_data.error, ""
            while error is not None:  # the user's exception is the wrapper's cause
                text += f"{error.cls_name}: {error.message}\n"
                error = error.cause
            count += bool(health.AUTH_FAILURE.search(text))
    return count


def _problems(report: HealthReport, platform: PlatformConfig) -> list[str]:
    problems = []
    for p in report.pipelines:
        if p.last_run_status == "FAILURE":
            problems.append(f"pipeline {p.name}: the last run failed ({p.last_run_id})")
        if p.fresh is False:
            problems.append(
                f"pipeline {p.name}: nothing loaded for {p.age_hours} h "
                f"(limit {platform.monitoring.loaded_max_lag_hours} h)"
                if p.age_hours is not None
                else f"pipeline {p.name}: never loaded"
            )
        if p.failing_checks:
            problems.append(f"pipeline {p.name}: failing {', '.join(p.failing_checks)}")
    for c in report.certificates:
        if not c.ready:
            problems.append(f"certificate {c.name}: failing {', '.join(c.failing_checks)}")
        limit = platform.monitoring.certificate_checks_max_age_hours
        if c.checks_age_hours is None:
            problems.append(f"certificate {c.name}: no check evaluation found")
        elif not c.checks_fresh:
            problems.append(
                f"certificate {c.name}: checks last ran {c.checks_age_hours} h ago "
                f"(limit {limit} h)"
            )
    for point in report.policy:
        problems += [
            f"security policy {point['point']}: {v['where']}: {v['problem']}"
            for v in point["violations"]
        ]
    s = report.security
    if not s.audit_chain_ok:
        problems.append(f"audit log: {s.audit_problem}")
    if s.connections_verified < s.connections:
        problems.append(
            f"{s.connections - s.connections_verified} connections do not verify their peer"
        )
    return problems


def _freshness_result(check: str, late: list[str], ok: str, late_label: str):
    """A WARN check: passes when nothing is ``late``, else names what is."""
    return AssetCheckResult(
        check_name=check,
        passed=not late,
        severity=AssetCheckSeverity.WARN,
        description=ok if not late else f"{late_label}: {', '.join(late)}",
    )


def health_definitions(platform: PlatformConfig):
    state = platform.resolved_state_dir()
    prom = state / platform.monitoring.prometheus_textfile
    monitoring = platform.monitoring

    @asset(
        key=HEALTH_KEY,
        group_name="operations",
        kinds={"markdown"},
        check_specs=[
            AssetCheckSpec(
                "loaded_fresh",
                asset=HEALTH_KEY,
                description="every loaded/ asset was materialized within "
                f"{monitoring.loaded_max_lag_hours} h (a stalled schedule fails it)",
            ),
            AssetCheckSpec(
                "certificate_checks_recent",
                asset=HEALTH_KEY,
                description="every certificate's checks ran within "
                f"{monitoring.certificate_checks_max_age_hours} h (a dead schedule or daemon "
                "fails it)",
            ),
        ],
        description="Pipelines, certificates, data quality and security, computed from the "
        "Dagster instance, the certificate store and the audit log; also written as a "
        "Prometheus textfile.",
    )
    def health_report(context) -> MaterializeResult:
        report = collect(platform, context.instance)
        health.write_prometheus(report, prom)
        context.log.info(f"health: {len(report.problems)} problems; metrics in {prom}")
        stale = [p.name for p in report.pipelines if not p.fresh]
        unchecked = [c.name for c in report.certificates if not c.checks_fresh]
        s = report.security
        return MaterializeResult(
            metadata={
                "report": MetadataValue.md(health.render_markdown(report)),
                "problems": len(report.problems),
                "certificates_ready": sum(c.ready for c in report.certificates),
                "certificates": len(report.certificates),
                "connections_verified": f"{s.connections_verified}/{s.connections}",
                "audit_chain_ok": s.audit_chain_ok,
                "prometheus_textfile": str(prom),
            },
            check_results=[
                _freshness_result("loaded_fresh", stale, "every pipeline loaded recently", "stale"),
                _freshness_result(
                    "certificate_checks_recent",
                    unchecked,
                    "every certificate was checked recently",
                    "not checked recently",
                ),
            ],
        )

    job = define_asset_job(HEALTH_JOB, selection=[HEALTH_KEY], tags=kind_tags("maintenance"))
    schedule = ScheduleDefinition(
        name="health_report_schedule",
        job=job,
        cron_schedule=monitoring.schedule,
        default_status=DefaultScheduleStatus.RUNNING,
    )
    return health_report, job, schedule
