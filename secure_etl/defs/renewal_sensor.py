"""The renewal sensor: a failed certificate check evaluation requests one renewal run; and
the sensor that evaluates the certificate checks seconds apart when cron is too coarse."""

from __future__ import annotations

import json
import time

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
from secure_etl.defs.certificates import certificate_evaluations
from secure_etl.defs.check_state import latest_materializations, new_check_evaluations
from secure_etl.defs.names import certificate_check_keys, certificate_key
from secure_etl.pki.renewal import verification_failure

RENEWAL_TAG = "secure_etl/renewal_of"
_UNFINISHED = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


# How often the interval sensor reports a certificate's passing checks again (seconds).
REPORT_ALL_S = 600


def checks_interval_sensor(platform: PlatformConfig):
    """With ``certificate_check_interval_s``: evaluates every certificate's checks that
    many seconds apart in the tick itself, reported as those checks' evaluations (the UI
    shows them as each check's latest result; the renewal sensor reads them as it reads a
    checks run's). No run: a run's process start (the code location loaded again) took
    10 to 25 s on a busy 2-core machine, more than a certificate of 90 seconds can spare
    between its checks and its renewal. The demo API's certificate, served only while a
    step runs, is left to the checks job."""
    demo = platform.demo_api.certificate if platform.demo_api else None
    names = [name for name in platform.certificates if name != demo]

    @sensor(
        name="certificate_checks_interval",
        minimum_interval_seconds=platform.certificate_check_interval_s,
        default_status=DefaultSensorStatus.RUNNING,
        description="Evaluates every certificate check every "
        f"{platform.certificate_check_interval_s} s, in the sensor's tick.",
    )
    def _sensor(context: SensorEvaluationContext) -> SensorResult:
        evaluations = list(certificate_evaluations(context.instance, platform, names))
        # The daemon stores each reported evaluation in transactions of its own (about
        # 0.15 s each on PostgreSQL), so not all of them every tick: a failing check at
        # every tick (what the renewal sensor acts on), a passing one when it passes
        # again, every check at the first tick, and after that each certificate's
        # checks again every REPORT_ALL_S, one certificate a tick (so the health
        # report's "checks last ran" stays true without a slow tick). The cursor: the
        # failing checks, and when each certificate's were all last reported.
        state = json.loads(context.cursor) if context.cursor else {}
        now = time.time()
        reported = state.get("reported", {})
        before = set(state.get("failing", []))
        due = [name for name in names if now - reported.get(name, 0) >= REPORT_ALL_S]
        refresh = set(due) if not state else set(due[:1])
        report = [
            e
            for e in evaluations
            if not e.passed or _check_id(e) in before or e.asset_key.path[-1] in refresh
        ]
        reported.update(dict.fromkeys(refresh, now))
        failing = sorted(_check_id(e) for e in evaluations if not e.passed)
        cursor = {"failing": failing, "reported": reported}
        failed = sorted({e.asset_key.path[-1] for e in evaluations if not e.passed})
        summary = (
            f"{len(evaluations)} checks of {len(names)} certificates evaluated, "
            f"{len(report)} reported"
        )
        if failed:
            summary += f"; failing: {', '.join(failed)}"
        return SensorResult(asset_events=report, skip_reason=summary, cursor=json.dumps(cursor))

    return _sensor


def _check_id(evaluation) -> str:
    return f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"


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
        renewed = latest_materializations(
            context.instance, [certificate_key(name) for name in failed_by_name]
        )
        for name in names:
            failed = failed_by_name.get(name)
            if not failed:
                continue
            if name in in_flight:
                # It renews when it runs (a renewal is due then); another would only wait
                # behind it and find nothing to do. If it fails, the next checks say so.
                notes.append(f"{name}: renewal run {in_flight[name]} has not finished yet")
                continue
            latest = renewed.get(certificate_key(name))
            if latest is not None and all(
                e.target_storage_id is not None and e.target_storage_id < latest.storage_id
                for e in failed
            ):
                # They judged the version before the one a renewal run has since
                # installed (evaluated just before it, stored just after).
                notes.append(f"{name}: its failed checks judged an earlier materialization")
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
