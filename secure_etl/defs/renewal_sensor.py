"""The renewal sensor: a failed certificate check evaluation requests one renewal run."""

from __future__ import annotations

import json

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from secure_etl.config import PlatformConfig
from secure_etl.defs.check_state import latest_check_evaluations
from secure_etl.defs.names import certificate_check_keys, certificate_key
from secure_etl.pki.renewal import verification_failure

RENEWAL_TAG = "secure_etl/renewal_of"


def renewal_sensor(platform: PlatformConfig, renewal_job):
    names = list(platform.certificates)

    @sensor(
        name="certificate_renewal",
        job=renewal_job,
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description="Requests a renewal run for each certificate whose latest check "
        "evaluation failed; once per evaluation; never while the last issuance under the "
        "same settings failed verification.",
    )
    def _sensor(context: SensorEvaluationContext) -> SensorResult:
        seen: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
        requests, notes = [], []
        for name in names:
            keys = certificate_check_keys(platform, name)
            latest = latest_check_evaluations(context.instance, keys)
            fresh = [
                e for e in latest.values() if e.storage_id > seen.get(e.key.to_user_string(), 0)
            ]
            for evaluation in fresh:
                seen[evaluation.key.to_user_string()] = evaluation.storage_id
            failed = [e for e in fresh if not e.passed]
            if not failed:
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
            if _came_from_renewal(context, failed):
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
                    asset_check_keys=keys,
                    tags={
                        RENEWAL_TAG: name,
                        "secure_etl/failed_checks": ",".join(e.key.name for e in failed),
                    },
                )
            )
        cursor = json.dumps(seen, sort_keys=True)
        if requests:
            return SensorResult(run_requests=requests, cursor=cursor)
        skip = "; ".join(notes) or "no new failed certificate check evaluation"
        return SensorResult(skip_reason=skip, cursor=cursor)

    return _sensor


def _came_from_renewal(context: SensorEvaluationContext, failed) -> bool:
    """Whether every failure was evaluated by a renewal run (so renewing again won't help)."""
    for evaluation in failed:
        run = context.instance.get_run_by_id(evaluation.run_id)
        if run is None or RENEWAL_TAG not in run.tags:
            return False
    return True
