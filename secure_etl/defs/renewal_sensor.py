"""The renewal sensor: a failed certificate check evaluation requests one renewal run; and
the sensor that starts the checks job seconds apart when cron is too coarse."""

from __future__ import annotations

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from secure_etl.config import PlatformConfig
from secure_etl.defs.check_state import new_check_evaluations
from secure_etl.defs.names import certificate_check_keys, certificate_key
from secure_etl.pki.renewal import verification_failure

RENEWAL_TAG = "secure_etl/renewal_of"
_UNFINISHED = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


def checks_interval_sensor(platform: PlatformConfig, checks_job):
    """With ``certificate_check_interval_s``: starts the checks job that many seconds
    apart (cron cannot say less than a minute), never while one is still queued or
    running, so slow runs do not pile up."""

    @sensor(
        name="certificate_checks_interval",
        job=checks_job,
        minimum_interval_seconds=platform.certificate_check_interval_s,
        default_status=DefaultSensorStatus.RUNNING,
        description="Starts the certificate checks job every "
        f"{platform.certificate_check_interval_s} s unless one has not finished yet.",
    )
    def _sensor(context: SensorEvaluationContext) -> SensorResult:
        unfinished = context.instance.get_run_records(
            RunsFilter(job_name=checks_job.name, statuses=_UNFINISHED), limit=1
        )
        if unfinished:
            run_id = unfinished[0].dagster_run.run_id
            return SensorResult(skip_reason=f"checks run {run_id} has not finished yet")
        return SensorResult(run_requests=[RunRequest()])

    return _sensor


def renewal_sensor(platform: PlatformConfig, renewal_job):
    names = list(platform.certificates)
    keys_by_name = {name: certificate_check_keys(platform, name) for name in names}
    all_keys = [key for keys in keys_by_name.values() for key in keys]
    names_by_key = {certificate_key(name): name for name in names}

    @sensor(
        name="certificate_renewal",
        job=renewal_job,
        minimum_interval_seconds=platform.renewal_sensor_interval_s,
        default_status=DefaultSensorStatus.RUNNING,
        description="Requests a renewal run for each certificate whose latest check "
        "evaluation failed; once per evaluation; never while a renewal run of it is queued "
        "or running, nor while the last issuance under the same settings failed "
        "verification.",
    )
    def _sensor(context: SensorEvaluationContext) -> SensorResult:
        # Every certificate's checks at once; only the evaluations since the cursor that
        # failed.
        failed_now, cursor = new_check_evaluations(
            context.instance, all_keys, context.cursor, failed_only=True
        )
        failed_by_name: dict[str, list] = {}
        for evaluation in failed_now:
            failed_by_name.setdefault(names_by_key[evaluation.key.asset_key], []).append(evaluation)
        requests, notes = [], []
        runs: dict[str, bool] = {}  # run id -> whether it was a renewal run
        in_flight = _renewals_in_flight(context, renewal_job.name) if failed_by_name else {}
        for name in names:
            failed = failed_by_name.get(name)
            if not failed:
                continue
            if name in in_flight:
                # It renews when it runs (a renewal is due then); another would only wait
                # behind it and find nothing to do. If it fails, the next checks say so.
                notes.append(f"{name}: renewal run {in_flight[name]} has not finished yet")
                continue
            refused = verification_failure(platform, name)
            if refused:
                notes.append(
                    f"{name}: the last issuance under these settings failed verification "
                    f"({refused}); needs a person, not another renewal (fix the config, or "
                    f"`secure-etl certs renew {name} --force`)"
                )
                context.log.warning(notes[-1])
                continue
            if _came_from_renewal(context, failed, runs):
                notes.append(
                    f"{name}: checks still fail right after a renewal "
                    f"({', '.join(e.key.name for e in failed)}); needs a person, not another "
                    "renewal"
                )
                context.log.warning(notes[-1])
                continue
            newest = max(e.storage_id for e in failed)
            reason = "; ".join(f"{e.key.name}: {e.description}" for e in failed)
            context.log.info(f"requesting renewal of {name}: {reason}")
            requests.append(
                RunRequest(
                    run_key=f"renew:{name}:{newest}",
                    asset_selection=[certificate_key(name)],
                    asset_check_keys=keys_by_name[name],
                    tags={
                        RENEWAL_TAG: name,
                        # Ahead of queued pipeline runs: a certificate of minutes cannot wait.
                        "dagster/priority": "10",
                        "secure_etl/failed_checks": ",".join(e.key.name for e in failed),
                    },
                )
            )
        if requests:
            return SensorResult(run_requests=requests, cursor=cursor)
        skip = "; ".join(notes) or "no new failed certificate check evaluation"
        return SensorResult(skip_reason=skip, cursor=cursor)

    return _sensor


def _renewals_in_flight(context: SensorEvaluationContext, job_name: str) -> dict[str, str]:
    """Certificate -> the renewal run queued or running for it (one query)."""
    records = context.instance.get_run_records(RunsFilter(job_name=job_name, statuses=_UNFINISHED))
    return {
        r.dagster_run.tags[RENEWAL_TAG]: r.dagster_run.run_id
        for r in records
        if RENEWAL_TAG in r.dagster_run.tags
    }


def _came_from_renewal(context: SensorEvaluationContext, failed, runs: dict[str, bool]) -> bool:
    """Whether every failure was evaluated by a renewal run (so renewing again won't help).
    ``runs`` remembers each run looked up this tick (one checks run fails many checks)."""
    for evaluation in failed:
        if evaluation.run_id not in runs:
            run = context.instance.get_run_by_id(evaluation.run_id)
            runs[evaluation.run_id] = run is not None and RENEWAL_TAG in run.tags
        if not runs[evaluation.run_id]:
            return False
    return True
