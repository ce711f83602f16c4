"""Materialize the whole graph in-process and summarise it (``secure-etl demo``)."""

import contextlib
import datetime as dt
import os
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes
from dagster import DagsterInstance

from secure_etl.config import PlatformConfig
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import RENEWAL_JOB
from secure_etl.defs.health import HEALTH_JOB
from secure_etl.defs.pipelines import pipeline_job_name
from secure_etl.defs.resources import demo_api_settings, reads_demo_api
from secure_etl.defs.retention import RETENTION_JOB
from secure_etl.etl import demo_api
from secure_etl.monitor.health import connection_security
from secure_etl.pki.renewal import current_leaf

NO_CLIENT_CERTIFICATE = "peer did not return a certificate"  # OpenSSL's reason

# Dagster's console logger at INFO: our progress lines, without every engine event.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


@dataclass
class DemoSummary:
    certificates: dict[str, dict] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)  # what the retention job removed
    connections: int = 0  # the pipelines' network connections
    connections_verified: int = 0  # of those, how many verify the peer (TLS)
    # What the demo API saw, one line per pipeline reading it: the client certificate it
    # accepted (named when it is the pipeline's), requests, handshakes refused.
    served: list[str] = field(default_factory=list)

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
    pipeline's job for the latest complete partitions, on ``$DAGSTER_HOME`` if set.
    With ``demo_api`` in the config, its HTTPS API serves for the whole run."""
    with contextlib.ExitStack() as stack:
        server = None
        if platform.demo_api is not None:
            server = stack.enter_context(
                demo_api.serving(demo_api_settings(platform), fallback=True, log=log)
            )
            platform = on_port(platform, server.port)
            log(f"demo API: serving {server.origin}{demo_api.PATH} over mutual TLS")
        summary = _run(platform, partitions, log)
        if server is not None:
            summary.served = _served(platform, server.seen)
    return summary


def _run(platform: PlatformConfig, partitions: int, log) -> DemoSummary:
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
    counts = connection_security(platform)
    summary.connections = counts["connections"]
    summary.connections_verified = counts["connections_verified"]
    return summary


def on_port(platform: PlatformConfig, port: int) -> PlatformConfig:
    """``platform`` with the demo API on ``port``: its ``demo_api``, the sources that read
    it and its certificate's endpoint moved there (in memory, for this run only)."""
    api = platform.demo_api
    if api is None or api.port == port:
        return platform
    pipelines = {}
    for name, p in platform.pipelines.items():
        if reads_demo_api(platform, p):
            url = urlsplit(p.source.url)._replace(netloc=f"{demo_api.HOST}:{port}").geturl()
            p = p.model_copy(update={"source": p.source.model_copy(update={"url": url})})
        pipelines[name] = p
    cert = platform.certificates[api.certificate]
    endpoints = [
        e.model_copy(update={"port": port}) if (e.host, e.port) == (demo_api.HOST, api.port) else e
        for e in cert.endpoints
    ]
    certificates = {
        **platform.certificates,
        api.certificate: cert.model_copy(update={"endpoints": endpoints}),
    }
    return platform.model_copy(
        update={
            "demo_api": api.model_copy(update={"port": port}),
            "pipelines": pipelines,
            "certificates": certificates,
        }
    )


def _served(platform: PlatformConfig, seen: demo_api.Seen) -> list[str]:
    """What the demo API saw, for the summary: per pipeline reading it, whether its
    client certificate (by SHA-256 of the current version) was the one presented."""
    lines = []
    protocols = "/".join(sorted(seen.protocols)) or "no TLS handshake"
    for name, p in platform.pipelines.items():
        if not reads_demo_api(platform, p):
            continue
        leaf = current_leaf(platform, p.client_certificate)
        ours = leaf.fingerprint(hashes.SHA256()).hex() if leaf else ""
        connections = seen.clients.get(ours, 0)
        who = (
            f"client certificate {p.client_certificate} sha256:{ours[:16]}, "
            f"{connections} connection{'s' * (connections != 1)}"
            if connections
            else f"NOT seen with client certificate {p.client_certificate}"
        )
        lines.append(f"raw/{name} <- {p.source.url} ({protocols}): {who}")
    lines.append(f"the demo API answered {seen.requests} requests")
    for why, count in sorted(Counter(seen.refused).items()):
        if why == NO_CLIENT_CERTIFICATE:
            why = (
                "no client certificate (served_by_endpoint's probe presents none: it only "
                "reads the chain the server sends)"
            )
        lines.append(f"the demo API refused {count} handshake{'s' * (count != 1)}: {why}")
    return lines


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
