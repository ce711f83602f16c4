"""Definitions = f(platform config)."""

from __future__ import annotations

from pathlib import Path

from dagster import DefaultScheduleStatus as Status
from dagster import Definitions, ScheduleDefinition

from secure_etl.config import PlatformConfig
from secure_etl.defs.alerts import check_alerts_sensor, run_failure_alerts
from secure_etl.defs.certificates import certificate_asset, certificate_checks, certificate_jobs
from secure_etl.defs.engine import executor_for
from secure_etl.defs.health import health_definitions
from secure_etl.defs.pipelines import (
    one_pass_assets,
    pipeline_assets,
    pipeline_job_and_schedule,
)
from secure_etl.defs.renewal_sensor import checks_interval_sensor, renewal_sensor
from secure_etl.defs.resources import (
    bigquery_resources,
    certificate_resources,
    demo_api_resources,
    used_certificates,
)
from secure_etl.defs.retention import retention_job_and_schedule
from secure_etl.errors import UserError
from secure_etl.security.hmac_keys import insecure_key_files


def build_definitions(platform: PlatformConfig) -> Definitions:
    state = platform.resolved_state_dir()
    extra = [Path(platform.audit.signing_key)]
    if platform.kms.type == "local_file":
        extra.append(Path(platform.kms.path))
    problems = insecure_key_files(platform.keys, extra, state)
    if problems:
        raise UserError("refusing to start: " + "; ".join(problems))
    certificates = [certificate_asset(platform, name) for name in platform.certificates]
    checks = certificate_checks(platform)
    checks_job, renewal_job = certificate_jobs(platform)
    check_schedules = [
        ScheduleDefinition(
            name="certificate_checks_schedule",
            job=checks_job,
            cron_schedule=platform.certificate_check_schedule,
            default_status=Status.RUNNING,
        )
    ]
    check_sensors = []
    if platform.certificate_check_interval_s:  # seconds apart, by a sensor
        check_sensors = [checks_interval_sensor(platform)]
        if not platform.demo_api or platform.demo_api.certificate not in platform.certificates:
            check_schedules = []  # the sensor checks every certificate

    data_assets, data_jobs, data_schedules = [], [], []
    for name in platform.pipelines:
        if platform.pipelines[name].one_pass:
            assets = one_pass_assets(platform, name)
        else:
            assets = pipeline_assets(platform, name)
        job, schedule = pipeline_job_and_schedule(platform, name, assets)
        data_assets += assets
        data_jobs.append(job)
        data_schedules.append(schedule)

    retention_job, retention_schedule = retention_job_and_schedule(platform)
    health_report, health_job, health_schedule = health_definitions(platform)
    check_keys = [
        key for d in [*certificates, *checks, *data_assets, health_report] for key in d.check_keys
    ]
    return Definitions(
        executor=executor_for(platform.executor),
        assets=[*certificates, *data_assets, health_report],
        asset_checks=checks,
        jobs=[checks_job, renewal_job, retention_job, health_job, *data_jobs],
        schedules=[*check_schedules, retention_schedule, health_schedule, *data_schedules],
        sensors=[
            *check_sensors,
            renewal_sensor(platform, renewal_job),
            check_alerts_sensor(platform, check_keys),
            run_failure_alerts(platform),
        ],
        resources={
            **certificate_resources(platform, used_certificates(platform)),
            **bigquery_resources(platform),
            **demo_api_resources(platform),
        },
    )
