"""The security policy as code: each point of it checked against a platform config.

``evaluate`` walks a validated ``PlatformConfig`` (its ``security_policy`` section holds
the policy; its defaults are the seed's) and says, per point, where it is enforced,
where an ``exemption`` (with its reason) sets it aside, and where the config breaks it.
``config.py`` refuses a config whose report has a violation; the health report,
``secure-etl status`` and ``secure-etl policy check`` print the report. Plain Python on
the config's models (no pydantic, Dagster or pandas here): it is read at every load.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

# A leaf: it reads the config's models by their attributes and imports nothing of
# secure_etl (config.py imports it), so the type of a config is spelt ``PlatformConfig``
# in the docstrings only.
PlatformConfig = Any

# Each point: what it asks, as the report says it.
POINTS = {
    "min_tls_sources": "sources are reached over TLS of at least the policy's version",
    "min_tls_destinations": "destinations are reached over TLS of at least the policy's version",
    "min_tls_alerts": "alert channels are reached over TLS of at least the policy's version",
    "min_tls_acme": "ACME directories are reached over TLS of at least the policy's version",
    "mtls_sources": "every networked source is read over mutual TLS (our client certificate)",
    "key_strength": "keys we issue and accept: RSA >= min_rsa_bits, EC >= min_ec_bits",
    "encrypt_at_rest": "raw and quarantined partitions are encrypted at rest (AES-256-GCM)",
    "key_sources": "the key that wraps data keys comes from an allowed KMS type",
    "raw_retention": "raw partitions (they hold PII) are deleted within max_raw_grace_hours",
    "audit_trail": "the audit log is hash-chained with signed checkpoints kept apart from it",
    "pii_transformed": "every declared PII column is pseudonymised, encrypted, masked or dropped",
    "api_key_sources": "https_api sources send an API key besides their client certificate",
    "proxy_outbound": "outbound HTTPS (API sources, alert channels, ACME) goes through a proxy",
}
# Where an exemption may be written, and which points it may set aside there.
EXEMPTIBLE = {
    "pipeline": {
        "min_tls_sources",
        "min_tls_destinations",
        "mtls_sources",
        "raw_retention",
        "pii_transformed",
        "api_key_sources",
        "proxy_outbound",
    },
    "certificate": {"key_strength"},
    "issuer": {"key_strength", "min_tls_acme", "proxy_outbound"},
    "alert channel": {"min_tls_alerts", "proxy_outbound"},
    "platform": {"encrypt_at_rest", "key_sources", "audit_trail"},
}
PROTECTING = ("pseudonymise", "encrypt", "mask", "drop")
_KEY_BITS = {"ec256": ("ec", 256), "ec384": ("ec", 384)}
_KEY_BITS |= {f"rsa{n}": ("rsa", n) for n in (2048, 3072, 4096)}
_VERSIONS = ("1.2", "1.3")


@dataclass(frozen=True)
class Violation:
    """Where the config breaks a point (a key path) and what to change there."""

    point: str
    loc: tuple
    message: str

    def line(self) -> str:
        return f"policy point {self.point}: {self.message}"


@dataclass(frozen=True)
class Exemption:
    point: str
    where: str
    reason: str


@dataclass
class PointReport:
    point: str
    required: bool  # False: the policy itself turns the point off
    setting: str  # the policy's value, as the report shows it
    enforced_at: list[str] = field(default_factory=list)
    not_enforced_at: list[str] = field(default_factory=list)  # beyond our reach, said why
    exemptions: list[Exemption] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.violations:
            return "violated"
        if not self.required:
            return "not required"
        return "exempted" if self.exemptions else "enforced"

    def as_dict(self) -> dict[str, Any]:
        return {
            "point": self.point,
            "asks": POINTS[self.point],
            "status": self.status,
            "required": self.required,
            "setting": self.setting,
            "enforced_at": self.enforced_at,
            "not_enforced_at": self.not_enforced_at,
            "exemptions": [{"where": e.where, "reason": e.reason} for e in self.exemptions],
            "violations": [
                {"where": _key_path(v.loc), "problem": v.message} for v in self.violations
            ],
        }


@dataclass
class PolicyReport:
    points: dict[str, PointReport]

    @property
    def violations(self) -> list[Violation]:
        return [v for p in self.points.values() for v in p.violations]

    def as_dict(self) -> dict[str, Any]:
        return {"points": [p.as_dict() for p in self.points.values()]}


def at_least(version: str, minimum: str) -> bool:
    """Whether TLS ``version`` ("1.2", "1.3") is ``minimum`` or newer."""
    return _VERSIONS.index(version) >= _VERSIONS.index(minimum)


class _Walk:
    """One pass over the config, filling the report point by point."""

    def __init__(self, config: PlatformConfig) -> None:
        self.config = config
        self.policy = config.security_policy
        pol = self.policy
        settings = {
            "min_tls_sources": f"TLS >= {pol.min_tls.sources}",
            "min_tls_destinations": f"TLS >= {pol.min_tls.destinations}",
            "min_tls_alerts": f"TLS >= {pol.min_tls.alerts}",
            "min_tls_acme": f"TLS >= {pol.min_tls.acme}",
            "mtls_sources": str(pol.mtls_sources).lower(),
            "key_strength": f"RSA >= {pol.min_rsa_bits}, EC >= P-{pol.min_ec_bits}",
            "encrypt_at_rest": f"{pol.at_rest}" if pol.encrypt_raw else "false",
            "key_sources": ", ".join(pol.kms_types),
            "raw_retention": f"<= {pol.max_raw_grace_hours:g} h",
            "audit_trail": str(pol.audit_trail).lower(),
            "pii_transformed": str(pol.pii_transformed).lower(),
            "api_key_sources": str(pol.api_key_sources).lower(),
            "proxy_outbound": str(pol.proxy_outbound).lower(),
        }
        required = {
            "mtls_sources": pol.mtls_sources,
            "encrypt_at_rest": pol.encrypt_raw,
            "audit_trail": pol.audit_trail,
            "pii_transformed": pol.pii_transformed,
            "api_key_sources": pol.api_key_sources,
            "proxy_outbound": pol.proxy_outbound,
        }
        self.report = PolicyReport(
            {p: PointReport(p, required.get(p, True), settings[p]) for p in POINTS}
        )

    def check(
        self, point: str, where: str, loc: tuple, exemption: dict, problem: str | None
    ) -> None:
        """Record ``where`` under ``point``: enforced, or broken (``problem``: what to
        change) unless its ``exemption`` sets the point aside."""
        entry = self.report.points[point]
        if not entry.required:
            return
        reason = exemption.get(point)
        if reason is not None:
            return  # recorded once per place by _exemptions
        if problem:
            entry.violations.append(Violation(point, loc, problem))
        else:
            entry.enforced_at.append(where)

    def exemptions(self, kind: str, where: str, loc: tuple, exemption: dict) -> None:
        for point, reason in exemption.items():
            if point not in EXEMPTIBLE[kind]:
                places = [k for k, points in EXEMPTIBLE.items() if point in points]
                self.report.points[point].violations.append(
                    Violation(
                        point,
                        (*loc, "exemption", point),
                        f"cannot be exempted on a {kind} (only on a {' or '.join(places)}); "
                        "move the exemption there",
                    )
                )
            else:
                self.report.points[point].exemptions.append(Exemption(point, where, reason))


def evaluate(config: PlatformConfig) -> PolicyReport:
    """The policy's report for ``config``: every point, where it holds, its exemptions
    and its violations (``config.py`` refuses the config on the first of those)."""
    walk = _Walk(config)
    _platform(walk)
    for name, cert in config.certificates.items():
        _certificate(walk, name, cert)
    for name, issuer in config.issuers.items():
        _issuer(walk, name, issuer)
    for i, channel in enumerate(config.alerts.channels):
        _channel(walk, i, channel)
    for name, pipeline in config.pipelines.items():
        _pipeline(walk, name, pipeline)
    return walk.report


def _platform(walk: _Walk) -> None:
    config, pol = walk.config, walk.policy
    ex, loc = pol.exemption, ("security_policy",)
    walk.exemptions("platform", "security_policy", loc, ex)
    walk.check(
        "encrypt_at_rest",
        f"encrypt_raw (Parquet modular encryption, {pol.at_rest})",
        ("encrypt_raw",),
        ex,
        None
        if config.encrypt_raw
        else "encrypt_raw is false, so raw partitions (they hold PII) are written in the "
        "clear; set encrypt_raw: true",
    )
    kms = config.kms.type
    walk.check(
        "key_sources",
        f"kms ({kms})",
        ("kms", "type"),
        ex,
        None
        if kms in pol.kms_types
        else f"kms type {kms} is not among security_policy.kms_types "
        f"({', '.join(pol.kms_types)}); use one of those",
    )
    audit = config.audit
    log_dir = PurePosixPath(os.path.normpath(os.path.dirname(audit.path) or "."))
    checkpoints = PurePosixPath(os.path.normpath(audit.checkpoint_dir))
    apart = checkpoints != log_dir and (
        log_dir == PurePosixPath(".") or not checkpoints.is_relative_to(log_dir)
    )
    walk.check(
        "audit_trail",
        f"audit ({audit.path}, checkpoints in {audit.checkpoint_dir})",
        ("audit", "checkpoint_dir"),
        ex,
        None
        if apart
        else f"checkpoint_dir {audit.checkpoint_dir} is in the audit log's own directory; "
        "whoever rewrites the log could rewrite the checkpoints: put them elsewhere",
    )


def _key_problem(walk: _Walk, key_type: str, what: str) -> str | None:
    family, bits = _KEY_BITS[key_type]
    floor = walk.policy.min_rsa_bits if family == "rsa" else walk.policy.min_ec_bits
    if bits >= floor:
        return None
    stronger = [k for k, (f, b) in _KEY_BITS.items() if b >= walk.policy.min_ec_bits and f == "ec"]
    stronger += [
        k for k, (f, b) in _KEY_BITS.items() if b >= walk.policy.min_rsa_bits and f == "rsa"
    ]
    return (
        f"{what} {key_type} is below the policy's {family.upper()} >= {floor}; "
        f"use {' or '.join(stronger)}"
    )


def _certificate(walk: _Walk, name: str, cert) -> None:
    loc, where = ("certificates", name), f"certificates.{name}"
    walk.exemptions("certificate", where, loc, cert.exemption)
    problem = _key_problem(walk, cert.key_type, "key_type")
    walk.check(
        "key_strength", f"{where} ({cert.key_type})", (*loc, "key_type"), cert.exemption, problem
    )


def _issuer(walk: _Walk, name: str, issuer) -> None:
    loc, where = ("issuers", name), f"issuers.{name}"
    ex = issuer.exemption
    walk.exemptions("issuer", where, loc, ex)
    if issuer.type == "internal_ca":
        problem = _key_problem(walk, issuer.key_type, "key_type")
        walk.check(
            "key_strength", f"{where} (root {issuer.key_type})", (*loc, "key_type"), ex, problem
        )
        return
    problem = _key_problem(walk, issuer.account_key_type, "account_key_type")
    walk.check(
        "key_strength",
        f"{where} (account {issuer.account_key_type})",
        (*loc, "account_key_type"),
        ex,
        problem,
    )
    _min_tls(walk, "min_tls_acme", walk.policy.min_tls.acme, where, loc, ex, issuer)
    _proxy(walk, where, loc, ex, issuer)


def _channel(walk: _Walk, i: int, channel) -> None:
    loc, where = ("alerts", "channels", i), f"alerts.channels[{i}] ({channel.type})"
    ex = channel.exemption
    walk.exemptions("alert channel", where, loc, ex)
    if channel.type == "email" and channel.tls == "none":
        walk.check(
            "min_tls_alerts",
            where,
            (*loc, "tls"),
            ex,
            "tls: none sends mail in the clear; use starttls or implicit",
        )
    else:
        _min_tls(walk, "min_tls_alerts", walk.policy.min_tls.alerts, where, loc, ex, channel)
    _proxy(walk, where, loc, ex, channel)


def _pipeline(walk: _Walk, name: str, p) -> None:
    loc, where = ("pipelines", name), f"pipelines.{name}"
    ex = p.exemption
    walk.exemptions("pipeline", where, loc, ex)
    pol = walk.policy
    source, destination = p.source, p.destination
    src_where, src_loc = f"{where}.source ({source.type})", (*loc, "source")
    if source.type == "demo":
        for point in ("min_tls_sources", "mtls_sources"):
            walk.report.points[point].not_enforced_at.append(
                f"{src_where}: generated in the process, no connection"
            )
    elif getattr(source, "sslmode", None) == "disable":
        message = "sslmode disable reads the source without TLS; use verify-full"
        walk.check("min_tls_sources", src_where, (*src_loc, "sslmode"), ex, message)
        walk.check("mtls_sources", src_where, (*src_loc, "sslmode"), ex, message)
    else:
        _min_tls(walk, "min_tls_sources", pol.min_tls.sources, src_where, src_loc, ex, source)
        # Every networked source presents the pipeline's client certificate.
        walk.check(
            "mtls_sources",
            f"{src_where}, client_certificate {p.client_certificate}",
            src_loc,
            ex,
            None,
        )
    if source.type == "https_api":
        has_key = getattr(source, "api_key", None) is not None
        walk.check(
            "api_key_sources",
            src_where,
            src_loc,
            ex,
            None if has_key else "the https_api source sends no API key; add api_key: {env: VAR}",
        )
        _proxy(walk, src_where, src_loc, ex, source)
    dst_where, dst_loc = f"{where}.destination ({destination.type})", (*loc, "destination")
    if destination.type == "postgres":
        if destination.sslmode == "disable":
            walk.check(
                "min_tls_destinations",
                dst_where,
                (*dst_loc, "sslmode"),
                ex,
                "sslmode disable loads without TLS; use verify-full",
            )
        else:
            _min_tls(
                walk,
                "min_tls_destinations",
                pol.min_tls.destinations,
                dst_where,
                dst_loc,
                ex,
                destination,
            )
    elif destination.type == "bigquery":
        walk.report.points["min_tls_destinations"].not_enforced_at.append(
            f"{dst_where}: TLS is chosen by Google's client library (not settable here)"
        )
    else:
        walk.report.points["min_tls_destinations"].not_enforced_at.append(
            f"{dst_where}: a local file, no connection"
        )
    grace = p.retention.raw_grace_hours
    walk.check(
        "raw_retention",
        f"{where}.retention (raw after {grace:g} h)",
        (*loc, "retention", "raw_grace_hours"),
        ex,
        None
        if grace <= pol.max_raw_grace_hours
        else f"raw_grace_hours {grace:g} keeps raw PII longer than the policy's "
        f"{pol.max_raw_grace_hours:g} h; lower it",
    )
    declared = p.declared_pii()
    protected = {c for t in p.transforms if t.type in PROTECTING for c in t.columns}
    raw = [c for c in declared if c not in protected]
    walk.check(
        "pii_transformed",
        f"{where} (PII: {', '.join(declared) or 'none declared'})",
        (*loc, "pii"),
        ex,
        None
        if not raw
        else f"PII column {', '.join(raw)} would be loaded as it is; pseudonymise, "
        "encrypt, mask or drop it in transforms",
    )


def _min_tls(
    walk: _Walk, point: str, minimum: str, where: str, loc: tuple, ex: dict, model
) -> None:
    """Check a connection's own ``min_tls`` against the policy, and give the policy's
    version to a connection that sets none (its connector reads ``min_tls``)."""
    explicit = model.min_tls
    if explicit is None:
        object.__setattr__(model, "min_tls", minimum)  # frozen models, as _anchor_paths
        walk.check(point, f"{where}: TLS >= {minimum}", loc, ex, None)
        return
    problem = (
        None
        if at_least(explicit, minimum)
        else f"min_tls {explicit} is below the policy's {minimum}; raise it or leave min_tls out"
    )
    walk.check(point, f"{where}: TLS >= {explicit}", (*loc, "min_tls"), ex, problem)


def _proxy(walk: _Walk, where: str, loc: tuple, ex: dict, model) -> None:
    has_proxy = getattr(model, "proxy", None) is not None  # the field arrives with issue 18.4
    walk.check(
        "proxy_outbound",
        where,
        loc,
        ex,
        None if has_proxy else "no proxy: set proxy: {url: http://host:port}",
    )


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def render_text(report: PolicyReport) -> Iterator[str]:
    """The report as lines: one per point, then its places, exemptions and violations."""
    for entry in report.points.values():
        yield f"  {entry.point:<22} {entry.status:<13} {entry.setting}"
        for place in entry.enforced_at:
            yield f"      enforced: {place}"
        for place in entry.not_enforced_at:
            yield f"      not enforced: {place}"
        for e in entry.exemptions:
            yield f"      exempted: {e.where}: {e.reason}"
        for v in entry.violations:
            yield f"      VIOLATED: {_key_path(v.loc)}: {v.message}"
