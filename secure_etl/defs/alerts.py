"""Alerts: a sensor that tells people about failed and recovered asset checks, and one
for failed runs, through the configured channels (Slack, JSON webhook, email).

Dagster's open-source edition sends no alert for a failed check; this does. Each check
evaluation is announced at most once (the cursor keeps the newest evaluation seen per
check); a check that was announced failing gets one recovery message when it passes
again. A delivery that fails after its retries waits in the cursor for the next tick.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict

from dagster import (
    AssetCheckKey,
    DefaultSensorStatus,
    RunFailureSensorContext,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from secure_etl.config import PlatformConfig
from secure_etl.defs.check_state import CheckEvaluation, latest_check_evaluations
from secure_etl.monitor.notify import SEVERITY_RANK, Notification, channels_for, deliver

MAX_PENDING = 200  # undelivered notifications kept for later ticks; the oldest go first
# Deliveries start only in the first 30 s of a tick (Dagster stops a sensor at 60 s); the
# rest wait in the cursor for the next tick.
TICK_BUDGET_S = 30.0


def _run_line(run_id: str, dagster_url: str | None) -> str:
    if not run_id:  # evaluated in a sensor's tick (certificate_check_interval_s)
        return "evaluated by the certificate_checks_interval sensor (no run)"
    return f"run {dagster_url.rstrip('/')}/runs/{run_id}" if dagster_url else f"run {run_id}"


def _check_notification(
    evaluation: CheckEvaluation, recovered: bool, dagster_url: str | None
) -> Notification:
    key = evaluation.key
    asset = key.asset_key.to_user_string()
    if recovered:
        title = f"recovered: {asset} check {key.name} passes again"
    else:
        title = f"failed: {asset} check {key.name} ({evaluation.severity})"
    return Notification(
        kind="check_recovered" if recovered else "check_failed",
        title=title,
        text=f"{evaluation.description or '(no description)'}\n"
        + _run_line(evaluation.run_id, dagster_url),
        severity=evaluation.severity,
        dedupe_key=f"check:{asset}:{key.name}:{evaluation.storage_id}",
        fields={"asset": asset, "check": key.name, "run_id": evaluation.run_id},
    )


def check_alerts_sensor(platform: PlatformConfig, check_keys: Sequence[AssetCheckKey]):
    config = platform.alerts
    channels = channels_for(config)
    keys = list(check_keys)

    @sensor(
        name="check_alerts",
        minimum_interval_seconds=config.interval_s,
        default_status=DefaultSensorStatus.RUNNING if channels else DefaultSensorStatus.STOPPED,
        description="Notifies the configured channels of each new failed asset check "
        "evaluation (and of its recovery), once per evaluation.",
    )
    def _sensor(context: SensorEvaluationContext):
        state = json.loads(context.cursor) if context.cursor else {}
        seen: dict[str, int] = state.get("seen", {})
        failing: set[str] = set(state.get("failing", []))
        pending: list[dict] = state.get("pending", [])

        fresh: list[Notification] = []
        latest = latest_check_evaluations(context.instance, keys)
        for key, evaluation in sorted(latest.items(), key=lambda kv: kv[1].storage_id):
            name = key.to_user_string()
            if evaluation.storage_id <= seen.get(name, 0):
                continue
            seen[name] = evaluation.storage_id
            if not evaluation.passed:
                if SEVERITY_RANK.get(evaluation.severity, 2) >= SEVERITY_RANK[config.min_severity]:
                    fresh.append(_check_notification(evaluation, False, config.dagster_url))
                    failing.add(name)
            elif name in failing:
                fresh.append(_check_notification(evaluation, True, config.dagster_url))
                failing.discard(name)

        sent, still_pending = 0, []
        queue = [(Notification(**p["notification"]), p["channels"]) for p in pending]
        queue += [(n, [c.name for c in channels]) for n in fresh]
        deadline = time.monotonic() + TICK_BUDGET_S
        down: set[str] = set()  # failed after its retries this tick: not tried again now,
        # so an outage costs one retry sequence per tick, well inside the sensor's timeout
        for notification, targets in queue:
            chosen = [c for c in channels if c.name in targets and c.name not in down]
            results = deliver(
                notification,
                chosen,
                config.attempts,
                config.backoff_s,
                context.log.warning,
                deadline=deadline,
            )
            down.update(r.channel for r in results if not r.ok)
            failed = [r.channel for r in results if not r.ok]
            failed += [name for name in targets if name in down and name not in failed]
            sent += sum(r.ok for r in results)
            for result in results:
                if result.ok:
                    context.log.info(f"{result.channel}: sent {notification.title}")
            if failed:
                context.log.warning(
                    f"{notification.title}: not delivered to {', '.join(failed)}; "
                    "trying again next tick"
                )
                still_pending.append({"notification": asdict(notification), "channels": failed})
        if len(still_pending) > MAX_PENDING:
            dropped = len(still_pending) - MAX_PENDING
            context.log.error(f"dropping the {dropped} oldest undelivered notifications")
            still_pending = still_pending[dropped:]
        context.update_cursor(
            json.dumps(
                {"seen": seen, "failing": sorted(failing), "pending": still_pending},
                sort_keys=True,
            )
        )
        if not queue:
            return SkipReason("no new failed or recovered check evaluation")
        return SkipReason(
            f"{len(fresh)} new notifications, {sent} deliveries, "
            f"{len(still_pending)} waiting for a channel"
        )

    return _sensor


def run_failure_alerts(platform: PlatformConfig):
    config = platform.alerts
    channels = channels_for(config)

    @run_failure_sensor(
        name="run_failure_alerts",
        minimum_interval_seconds=config.interval_s,
        default_status=DefaultSensorStatus.RUNNING if channels else DefaultSensorStatus.STOPPED,
        description="Notifies the configured channels of every failed run.",
    )
    def _sensor(context: RunFailureSensorContext):
        run = context.dagster_run
        notification = Notification(
            kind="run_failed",
            title=f"failed: run of {run.job_name}",
            # Dagster's own summary (job and steps), not the exception text: an error
            # message can quote a data value.
            text=f"{context.failure_event.message}\n{_run_line(run.run_id, config.dagster_url)}",
            severity="ERROR",
            dedupe_key=f"run:{run.run_id}",
            fields={"job": run.job_name, "run_id": run.run_id},
        )
        for result in deliver(
            notification, channels, config.attempts, config.backoff_s, context.log.warning
        ):
            if result.ok:
                context.log.info(f"{result.channel}: sent {notification.title}")
            else:
                context.log.error(f"{result.channel}: not delivered: {result.error}")

    return _sensor
