"""Issue or renew one certificate: decide, issue, install, deploy — under its lock."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from secure_etl.config import AcmeIssuer as AcmeIssuerConfig
from secure_etl.config import (
    CertificateConfig,
    InternalCAIssuer,
    PlatformConfig,
    PostgresReloadDeploy,
)
from secure_etl.pki.endpoints import stale_endpoints
from secure_etl.pki.inspect import (
    CheckResult,
    inspect_chain,
    load_chain_file,
    load_pem_chain,
    load_roots_file,
)
from secure_etl.pki.internal_ca import InternalCA
from secure_etl.pki.issuer import IssuedCertificate, Issuer
from secure_etl.pki.keys import PrivateKey, generate_private_key, key_type_of, load_private_key
from secure_etl.pki.store import CertificatePaths, CertificateStore
from secure_etl.pki.verify import VerificationError, verify_issued
from secure_etl.security.audit_trail import platform_audit_log
from secure_etl.security.files import write_atomic

if TYPE_CHECKING:
    from secure_etl.pki.deploy import DeployContext
    from secure_etl.pki.store_postgres import PostgresCertificateStore

# The ACME issuer (httpx) and the deploy actions (httpx) are imported when an ACME issuer
# is built or a renewal deploys, so `certs list` on an internal-CA platform loads neither.

Outcome = Literal["issued", "renewed", "redeployed", "not_due"]


def build_issuer(config: PlatformConfig, name: str, log=None) -> Issuer:
    issuer = config.issuers[name]
    state = config.resolved_state_dir()
    if isinstance(issuer, InternalCAIssuer):
        store = certificate_store(config)
        return InternalCA(
            name,
            state / "ca" / name,
            common_name=issuer.common_name,
            key_type=issuer.key_type,
            ca_lifetime_days=issuer.ca_lifetime_days,
            lifetime=issuer.lifetime,
            shared=None if isinstance(store, CertificateStore) else store,
        )
    if isinstance(issuer, AcmeIssuerConfig):
        from secure_etl.pki.acme_issuer import AcmeIssuer

        return AcmeIssuer(name, issuer, state / "acme" / name, log=log)
    raise NotImplementedError(f"issuer type {type(issuer).__name__}")


def certificate_store(config: PlatformConfig) -> CertificateStore | PostgresCertificateStore:
    """The configured store: local under state_dir/certs (the default), or PostgreSQL
    (``certificate_store.backend: postgres``), which has the same calls."""
    local = config.resolved_state_dir() / "certs"
    shared = config.certificate_store.postgres
    if shared is None:
        return CertificateStore(local)
    # psycopg loads only for this backend: `certs list` on a local store stays light.
    from secure_etl.pki.store_postgres import postgres_certificate_store
    from secure_etl.security.kms import provider_for

    return postgres_certificate_store(shared, lambda: provider_for(config), local)


@contextmanager
def certificate_files(config: PlatformConfig, name: str) -> Iterator[CertificatePaths]:
    """The current version of ``name`` as files for as long as the block runs: the local
    store's own, or (a shared store) 0600 copies in a temporary directory removed after."""
    with certificate_store(config).materialised(name) as files:
        yield files


def trust_bundle(config: PlatformConfig, name: str) -> Path | None:
    """The roots a certificate must chain to: its own ``ca_bundle``, else its issuer's."""
    cert = config.certificates[name]
    if cert.ca_bundle:
        return Path(cert.ca_bundle)
    return build_issuer(config, cert.issuer).trust_bundle()


def inspect_current(
    config: PlatformConfig, name: str, now: dt.datetime | None = None
) -> list[CheckResult] | None:
    """Every inspection check of the current version against its config; None if none."""
    cert = config.certificates[name]
    chain = current_chain(config, name)
    if chain is None:
        return None
    roots, roots_source = _roots(config, name)
    return inspect_chain(
        chain,
        identifiers=cert.identifiers,
        use=cert.use,
        roots=roots,
        roots_source=roots_source,
        min_days=cert.renewal.min_days_left or 0.0,
        fraction_left=cert.renewal.fraction_left,
        now=now,
        key_floor=(config.security_policy.min_rsa_bits, config.security_policy.min_ec_bits),
    )


def _roots(config: PlatformConfig, name: str) -> tuple[list[x509.Certificate] | None, str]:
    """The roots the certificate must chain to (None: no bundle at all) and their file."""
    bundle = trust_bundle(config, name)
    if not bundle:
        return None, ""
    try:
        info = os.stat(bundle)
    except FileNotFoundError:
        return [], str(bundle)
    # One bundle serves many certificates: read it again only when its file changed.
    seen = (info.st_ino, info.st_dev, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    cached = _BUNDLES.get(bundle)
    if cached is None or cached[0] != seen:
        cached = _BUNDLES[bundle] = (seen, load_roots_file(bundle))
    return list(cached[1]), str(bundle)


_BUNDLES: dict[Path, tuple[tuple, list[x509.Certificate]]] = {}


@dataclass(frozen=True)
class RenewalResult:
    name: str
    outcome: Outcome
    reason: str
    version: str | None
    seconds: float
    deployed: list[str] = field(default_factory=list)
    issuer: str = ""
    order_url: str | None = None  # ACME issuers: the order that produced the certificate


def ensure_certificate(
    config: PlatformConfig, name: str, *, force: bool = False, log=None
) -> RenewalResult:
    """Issue the certificate if it is missing, renew it if due or failing, else leave it.
    A certificate that is fine but not served by its endpoints is deployed again."""
    started = time.monotonic()
    cert: CertificateConfig = config.certificates[name]
    store = certificate_store(config)
    order_url = None
    with store.lock(name):
        reason = _why_renew(config, name, force)
        if reason is None:
            stale = stale_endpoints(cert.endpoints, current_chain(config, name))
            if not (stale and cert.deploy):
                return RenewalResult(
                    name,
                    "not_due",
                    "all checks pass and renewal is not due",
                    store.current_version(name),
                    time.monotonic() - started,
                    issuer=cert.issuer,
                )
            outcome: Outcome = "redeployed"
            reason = "; ".join(stale)
            version = store.current_version(name)
        else:
            outcome = "renewed" if store.has_current(name) else "issued"
            if log:
                log(f"{name}: {'renewing' if outcome == 'renewed' else 'issuing'} because {reason}")
            issuer = build_issuer(config, cert.issuer, log=log)
            key = _key_for(store, name, cert)
            previous = current_leaf(config, name)
            issued = issuer.issue(cert.identifiers, cert.use, key, previous=previous)
            _verify(config, name, issued)
            _audit_install(config, name, issued.cert_pem, "certificate.installing")  # intent
            version = store.install(name, issued, keep=cert.keep_versions)
            order_url = issued.order_url
            _audit_install(config, name, issued.cert_pem, f"certificate.{outcome}", version=version)
    from secure_etl.pki.deploy import run_deploy_actions

    # Deploy outside the lock: a slow reload must not block the next renewal check.
    deployed = []
    if cert.deploy:
        with ExitStack() as files:
            context = _deploy_context(config, name, version, outcome, files)
            deployed = run_deploy_actions(cert.deploy, context)
    return RenewalResult(
        name,
        outcome,
        reason,
        version,
        time.monotonic() - started,
        deployed,
        issuer=cert.issuer,
        order_url=order_url,
    )


def _audit_install(
    config: PlatformConfig, name: str, cert_pem: bytes, action: str, **outputs: str
) -> None:
    """Record a certificate install: the intent before ``current`` moves, the outcome
    after, so a kill in between still leaves the fingerprint now current in the log."""
    leaf = x509.load_pem_x509_certificate(cert_pem)
    platform_audit_log(config).append(
        actor=f"issuer:{config.certificates[name].issuer}",
        action=action,
        asset=f"certificates/{name}",
        outputs={
            **outputs,
            "serial": format(leaf.serial_number, "x"),
            "certificate": "sha256:" + leaf.fingerprint(hashes.SHA256()).hex(),
        },
    )


def _verify(config: PlatformConfig, name: str, issued: IssuedCertificate) -> None:
    """Verify before install; a failure is remembered so the sensor stops asking."""
    cert = config.certificates[name]
    roots, roots_source = _roots(config, name)
    marker = _verification_marker(config, name)
    try:
        verify_issued(
            issued,
            identifiers=cert.identifiers,
            use=cert.use,
            roots=roots,
            roots_source=roots_source,
            issuer=cert.issuer,
        )
    except VerificationError as err:
        record = {"settings": _settings_digest(config, name), "error": str(err)}
        write_atomic(marker, json.dumps(record).encode())
        raise
    marker.unlink(missing_ok=True)


def verification_failure(config: PlatformConfig, name: str) -> str | None:
    """Why the last issuance under the current settings failed verification, or None.

    Issuing again with the same issuer and settings would fail the same way, so automatic
    renewal waits for a person (a changed config, or a forced renewal)."""
    try:
        record = json.loads(_verification_marker(config, name).read_text())
    except (OSError, ValueError):
        return None
    if record.get("settings") != _settings_digest(config, name):
        return None
    return str(record.get("error") or "verification failed")


def _verification_marker(config: PlatformConfig, name: str) -> Path:
    return certificate_store(config).paths(name).directory / "verification-failed.json"


def _settings_digest(config: PlatformConfig, name: str) -> str:
    cert = config.certificates[name]
    settings = [cert.model_dump(mode="json"), config.issuers[cert.issuer].model_dump(mode="json")]
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _deploy_context(
    config: PlatformConfig, name: str, version: str, event: str, files: ExitStack
) -> DeployContext:
    """What the deploy actions get; the certificate files they read are ``files``'s for
    as long as it is open (a shared store's copies are removed when it closes)."""
    store = certificate_store(config)
    # The client certificates its actions connect with (a postgres_reload's), not every one.
    deploy = config.certificates[name].deploy
    wanted = {a.client_certificate for a in deploy if isinstance(a, PostgresReloadDeploy)}
    clients = {}
    for other in sorted(wanted):
        paths = files.enter_context(store.materialised(other))
        clients[other] = (str(paths.fullchain), str(paths.privkey))
    own = files.enter_context(store.materialised(name))
    from secure_etl.pki.deploy import DeployContext

    leaf = current_leaf(config, name)
    return DeployContext(
        certificate=name,
        version=version,
        directory=str(own.directory),
        event=event,
        serial=leaf.serial_number,
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        ca_bundle=str(trust_bundle(config, name) or ""),
        client_files=clients,
    )


def _key_for(store, name: str, cert: CertificateConfig) -> PrivateKey:
    """The current key when the config says to reuse it (and it is of the configured
    type), else a new one."""
    pem = store.current_key(name) if cert.reuse_key else None
    if pem:
        key = load_private_key(pem)
        if key_type_of(key) == cert.key_type:
            return key
    return generate_private_key(cert.key_type)


def _why_renew(config: PlatformConfig, name: str, force: bool) -> str | None:
    if force:
        return "renewal was forced"
    results = inspect_current(config, name)
    if results is None:
        return "no certificate has been issued yet"
    failed = [r for r in results if not r.passed]
    if failed:
        return "; ".join(f"{r.name}: {r.reason}" for r in failed)
    # The issuer may want it sooner than our policy (a mass revocation, say: ACME's ARI).
    return build_issuer(config, config.certificates[name].issuer).renewal_due(
        current_leaf(config, name)
    )


def current_leaf(config: PlatformConfig, name: str) -> x509.Certificate | None:
    chain = current_chain(config, name)
    return chain[0] if chain else None


def current_chain(config: PlatformConfig, name: str) -> list[x509.Certificate] | None:
    """The current version's certificates, leaf first; None if there is none."""
    store = certificate_store(config)
    if isinstance(store, CertificateStore):
        if not store.has_current(name):
            return None
        return load_chain_file(store.paths(name).fullchain)
    fullchain = store.current_fullchain(name)
    return load_pem_chain(fullchain, f"{store.where}: {name}") if fullchain else None
