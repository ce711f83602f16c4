"""The health report: what is true now about pipelines, certificates, data quality and
security, as typed rows (``HealthReport``; ``as_dict`` for JSON), rendered as Markdown
(the UI), text (the terminal) and Prometheus text format (node_exporter's textfile
collector).

The Dagster side (runs, materializations, check evaluations) is collected in
``defs/health.py``; this module reads the certificate store, the config and the audit
log, and renders. Certificate gauges are named like cert-manager's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

from secure_etl.config import PlatformConfig
from secure_etl.etl import registry
from secure_etl.pki.inspect import facts, renewal_threshold_days
from secure_etl.pki.renewal import certificate_store, current_leaf, inspect_current
from secure_etl.pki.store import PRIVATE_KEY_CHECK
from secure_etl.security.audit_trail import platform_audit_log, read_records, verify_log
from secure_etl.security.files import write_atomic

PREFIX = "secure_etl"
# Step failures whose error is one of these count as a refused TLS handshake or login.
AUTH_FAILURE = re.compile(
    r"certificate verify failed|certificate required|unknown ca|bad certificate|"
    r"tlsv1 alert|sslv3 alert|ssl error|hostname mismatch|"
    r"password authentication failed|no pg_hba\.conf entry|authentication failed|"
    r"permission denied|\b401\b|\b403\b",
    re.IGNORECASE,
)


@dataclass
class PipelineHealth:
    """One pipeline: its last run, its last load and its data checks (None: unknown,
    e.g. without a Dagster instance)."""

    name: str
    last_run_id: str | None = None
    last_run_status: str | None = None  # a DagsterRunStatus value: SUCCESS, FAILURE...
    last_run_ended_at: str | None = None
    last_run_duration_s: float | None = None
    rows_loaded: int | None = None
    last_partition: str | None = None
    loaded_at: str | None = None
    age_hours: float | None = None
    fresh: bool | None = None
    quarantine_rate: float | None = None
    filtered_rows: int | None = None
    duplicate_rate: float | None = None
    null_rate: float | None = None
    failing_checks: list[str] | None = None


@dataclass
class CertificateHealth:
    """One configured certificate as the store holds it now."""

    name: str
    issuer: str
    use: str
    serial: str | None = None
    not_after: str | None = None
    days_left: float | None = None
    issued_at: str | None = None
    next_renewal_due: str | None = None
    ready: bool = False
    failing_checks: list[str] = field(default_factory=list)
    checks_age_hours: float | None = None  # since the newest check evaluation
    checks_fresh: bool = False


@dataclass(frozen=True)
class AuditHealth:
    audit_chain_ok: bool
    audit_records: int
    audit_checkpoints: int
    audit_problem: str
    audit_key_pinned: bool  # else checked with the key beside it
    renewals_30d: int


@dataclass(frozen=True)
class SecurityHealth:
    connections: int
    connections_verified: int
    audit_chain_ok: bool
    audit_records: int
    audit_checkpoints: int
    audit_problem: str
    audit_key_pinned: bool
    renewals_30d: int
    failed_authentications_30d: int = 0

    @classmethod
    def of(
        cls, connections: dict, audit: AuditHealth, failed_authentications_30d: int
    ) -> SecurityHealth:
        """From ``connection_security``'s counts, the audit status and the failed logins."""
        return cls(
            **connections,
            **dataclasses.asdict(audit),
            failed_authentications_30d=failed_authentications_30d,
        )


@dataclass
class HealthReport:
    generated_at: str
    instance: str  # "dagster", or why there is none
    pipelines: list[PipelineHealth]
    certificates: list[CertificateHealth]
    security: SecurityHealth
    # The security policy, point by point (``PointReport.as_dict``: status, where it is
    # enforced, exemptions with their reasons, violations).
    policy: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """The JSON form (``secure-etl status --json``)."""
        return dataclasses.asdict(self)


def certificate_status(platform: PlatformConfig, now: dt.datetime) -> list[CertificateHealth]:
    """Per certificate: issuer, serial, days left, when it was issued, when renewal is due,
    and whether every check passes now (inspected from the store, as the checks do)."""
    out = []
    for name, cert in platform.certificates.items():
        leaf = current_leaf(platform, name)
        if leaf is None:
            out.append(
                CertificateHealth(name, cert.issuer, cert.use, failing_checks=["not issued"])
            )
            continue
        info = facts(leaf, now)
        threshold = renewal_threshold_days(
            info.lifetime_days, cert.renewal.fraction_left, cert.renewal.min_days_left
        )
        failing = [r.name for r in inspect_current(platform, name) or [] if not r.passed]
        store = certificate_store(platform)
        # Not not_before: CAs backdate it (ours by CLOCK_SKEW) against clock skew.
        installed = store.installed_at(name)
        if store.private_key_problem(name):
            failing.append(PRIVATE_KEY_CHECK)
        row = CertificateHealth(
            name,
            cert.issuer,
            cert.use,
            serial=info.serial,
            not_after=info.not_after.isoformat(),
            days_left=round(info.days_remaining, 2),
            issued_at=(installed or info.not_before).isoformat(),
            next_renewal_due=(info.not_after - dt.timedelta(days=threshold)).isoformat(),
            ready=not failing,
            failing_checks=failing,
        )
        out.append(row)
    return out


def connection_security(platform: PlatformConfig) -> dict:
    """Of the network connections the pipelines make, how many verify the peer (TLS with
    certificate and host name checks)."""
    total = verified = 0
    for pipeline in platform.pipelines.values():
        for end in (
            registry.source_connection(pipeline.source),
            registry.destination_connection(pipeline.destination),
        ):
            if end.networked:
                total += 1
                verified += end.verifies_peer
    return {"connections": total, "connections_verified": verified}


def audit_status(platform: PlatformConfig, now: dt.datetime) -> AuditHealth:
    """Whether the audit log verifies, and how many certificates it says were issued or
    renewed in the last 30 days."""
    log = platform_audit_log(platform)
    verdict = verify_log(log)
    since = now - dt.timedelta(days=30)
    renewals = sum(
        record.get("action") in ("certificate.issued", "certificate.renewed")
        and dt.datetime.fromisoformat(record["time"]) >= since
        for record in read_records(log)
    )
    return AuditHealth(
        audit_chain_ok=verdict.ok,
        audit_records=verdict.records,
        audit_checkpoints=verdict.checkpoints,
        audit_problem=verdict.problem or "",
        audit_key_pinned=log.public_key is not None,
        renewals_30d=renewals,
    )


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return str(value).replace("|", "/")


def _table(rows: list, columns: list[tuple[str, str]]) -> list[str]:
    lines = ["| " + " | ".join(title for _, title in columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        lines.append("| " + " | ".join(_cell(getattr(row, key)) for key, _ in columns) + " |")
    return lines


PIPELINE_COLUMNS = [
    ("name", "pipeline"),
    ("last_run_status", "last run"),
    ("last_run_ended_at", "ended"),
    ("last_run_duration_s", "duration s"),
    ("rows_loaded", "rows loaded"),
    ("last_partition", "partition"),
    ("age_hours", "age h"),
    ("fresh", "fresh"),
]
QUALITY_COLUMNS = [
    ("name", "pipeline"),
    ("null_rate", "max null rate"),
    ("duplicate_rate", "duplicate rate"),
    ("quarantine_rate", "schema violations (quarantined)"),
    ("filtered_rows", "filtered"),
    ("failing_checks", "failing checks"),
]
CERT_COLUMNS = [
    ("name", "certificate"),
    ("issuer", "issuer"),
    ("days_left", "days left"),
    ("issued_at", "last issued"),
    ("next_renewal_due", "renewal due"),
    ("ready", "ready"),
    ("failing_checks", "failing checks"),
    ("checks_age_hours", "checked h ago"),
]


def render_markdown(report: HealthReport) -> str:
    s = report.security
    lines = [f"## secure_etl health, {report.generated_at}", ""]
    if report.instance != "dagster":
        lines += [
            "No Dagster instance (set DAGSTER_HOME): runs and check results are left out.",
            "",
        ]
    lines += ["### Pipelines", ""]
    lines += _table(report.pipelines, PIPELINE_COLUMNS)
    lines += ["", "### Data quality", ""] + _table(report.pipelines, QUALITY_COLUMNS)
    lines += ["", "### Certificates", ""] + _table(report.certificates, CERT_COLUMNS)
    share = (
        f"{s.connections_verified / s.connections:.0%}"
        if s.connections
        else "no network connections"
    )
    lines += [
        "",
        "### Security",
        "",
        f"- connections verified: {s.connections_verified}/{s.connections} ({share})",
        f"- failed authentications (30 days): {s.failed_authentications_30d}",
        f"- certificate issuances and renewals (30 days): {s.renewals_30d}",
        f"- audit chain: {'verifies' if s.audit_chain_ok else 'BROKEN: ' + s.audit_problem}"
        f" ({s.audit_records} records, {s.audit_checkpoints} signed checkpoints"
        + ("" if s.audit_key_pinned else "; key NOT pinned: set audit.public_key")
        + ")",
    ]
    lines += ["", "### Security policy", ""] + policy_lines(report.policy)
    if report.problems:
        lines += ["", "### Needs attention", ""] + [f"- {p}" for p in report.problems]
    return "\n".join(lines) + "\n"


def policy_status(platform: PlatformConfig) -> list[dict]:
    """Each point of the security policy as the report shows it."""
    return platform.policy_report().as_dict()["points"]


def policy_lines(points: list[dict]) -> list[str]:
    """One line per point (status, setting, where), then its exemptions and violations."""
    lines = []
    for p in points:
        where = "; ".join(p["enforced_at"]) or "-"
        lines.append(f"- {p['point']}: {p['status']} ({p['setting']}) at {where}")
        lines += [f"  - not enforced: {place}" for place in p["not_enforced_at"]]
        lines += [f"  - exempted: {e['where']}: {e['reason']}" for e in p["exemptions"]]
        lines += [f"  - VIOLATED: {v['where']}: {v['problem']}" for v in p["violations"]]
    return lines


def render_text(report: HealthReport) -> str:
    """The terminal form: the Markdown without its table rules."""
    return (
        "\n".join(
            line.replace("### ", "").replace("## ", "")
            for line in render_markdown(report).splitlines()
            if not line.startswith("|---")
        )
        + "\n"
    )


def _labels(**labels: str) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape(str(v))}"' for k, v in labels.items()) + "}"


def _timestamp(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


# (metric, help, attribute of a report row, how to turn it into a number)
CERTIFICATE_GAUGES = [
    (
        "certificate_expiration_timestamp_seconds",
        "The date after which the certificate expires, in Unix seconds.",
        "not_after",
        _timestamp,
    ),
    (
        "certificate_renewal_timestamp_seconds",
        "When the renewal policy makes the certificate due, in Unix seconds.",
        "next_renewal_due",
        _timestamp,
    ),
]
PIPELINE_GAUGES = [
    (
        "pipeline_last_run_duration_seconds",
        "Duration of the pipeline's last finished run.",
        "last_run_duration_s",
        float,
    ),
    ("pipeline_rows_loaded", "Rows in the last loaded partition.", "rows_loaded", float),
    (
        "pipeline_last_load_timestamp_seconds",
        "When the pipeline last loaded a partition, in Unix seconds.",
        "loaded_at",
        _timestamp,
    ),
    (
        "pipeline_null_rate",
        "Highest null rate of a loaded column in the last partition.",
        "null_rate",
        float,
    ),
]
SECURITY_GAUGES = [
    ("connections", "Pipeline connections over the network.", "connections", float),
    (
        "connections_verified",
        "Pipeline connections that verify their peer.",
        "connections_verified",
        float,
    ),
    (
        "failed_authentications_30d",
        "Step failures that were TLS or login refusals.",
        "failed_authentications_30d",
        float,
    ),
    (
        "certificate_renewals_30d",
        "Certificate issuances and renewals in 30 days.",
        "renewals_30d",
        float,
    ),
    (
        "audit_chain_ok",
        "1 if the audit log's chain and checkpoints verify.",
        "audit_chain_ok",
        float,
    ),
]


def render_prometheus(report: HealthReport) -> str:
    """Prometheus text exposition format. Certificate gauges follow cert-manager's names
    (``…_certificate_expiration_timestamp_seconds``, ``…_certificate_ready_status``)."""
    out: list[str] = []

    def gauge(name: str, help_text: str, samples) -> None:
        out.append(f"# HELP {PREFIX}_{name} {help_text}")
        out.append(f"# TYPE {PREFIX}_{name} gauge")
        out.extend(
            f"{PREFIX}_{name}{_labels(**labels)} {float(value)!r}" for labels, value in samples
        )

    def each(rows, labels, name, number):
        values = ((r, getattr(r, name)) for r in rows)
        return [(labels(r), number(value)) for r, value in values if value is not None]

    certs, pipelines = report.certificates, report.pipelines
    cert_labels = lambda c: {"name": c.name, "issuer": c.issuer}  # noqa: E731
    for name, text, attribute, number in CERTIFICATE_GAUGES:
        gauge(name, text, each(certs, cert_labels, attribute, number))
    ready = [
        ({**cert_labels(c), "condition": cond}, c.ready == (cond == "True"))
        for c in certs
        for cond in ("True", "False")
    ]
    gauge(
        "certificate_ready_status",
        "1 for the certificate's current condition (True: every check passes).",
        ready,
    )
    gauge(
        "pipeline_last_run_success",
        "1 if the pipeline's last run succeeded, 0 if it failed or none finished.",
        [({"pipeline": p.name}, p.last_run_status == "SUCCESS") for p in pipelines],
    )
    for name, text, attribute, number in PIPELINE_GAUGES:
        gauge(name, text, each(pipelines, lambda p: {"pipeline": p.name}, attribute, number))
    for name, text, attribute, number in SECURITY_GAUGES:
        gauge(name, text, each([report.security], lambda _: {}, attribute, number))
    points = report.policy
    gauge(
        "policy_point_enforced",
        "1 if the security policy requires the point and the config keeps it everywhere.",
        [({"point": p["point"]}, p["status"] in ("enforced", "exempted")) for p in points],
    )
    gauge(
        "policy_point_exemptions",
        "Places where an exemption (with its reason) sets the point aside.",
        [({"point": p["point"]}, len(p["exemptions"])) for p in points],
    )
    gauge(
        "policy_point_violations",
        "Places where the config breaks the point.",
        [({"point": p["point"]}, len(p["violations"])) for p in points],
    )
    gauge(
        "health_report_timestamp_seconds",
        "When this report was made: alert if it gets old (the scheduler stalled).",
        [({}, _timestamp(report.generated_at))],
    )
    return "\n".join(out) + "\n"


def write_prometheus(report: HealthReport, path: Path) -> None:
    """Atomically (the collector must never read half a file), world-readable."""
    write_atomic(Path(path), render_prometheus(report).encode(), mode=0o644)
