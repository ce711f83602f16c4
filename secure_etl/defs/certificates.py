"""Certificate assets (materialize = issue or renew) and their inspection checks."""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetsDefinition,
    AssetSelection,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    define_asset_job,
    multi_asset_check,
)

from secure_etl.acme.challenges import SolverError
from secure_etl.acme.errors import AcmeError, AcmeProblem, RateLimited
from secure_etl.config import PlatformConfig
from secure_etl.defs.names import ENDPOINT_CHECK, GROUP, certificate_check_names, certificate_key
from secure_etl.defs.resources import DEMO_API_KEY
from secure_etl.pki.endpoints import stale_endpoints
from secure_etl.pki.inspect import CheckResult, PemError, facts
from secure_etl.pki.renewal import (
    certificate_store,
    current_chain,
    current_leaf,
    ensure_certificate,
    inspect_current,
)
from secure_etl.pki.solvers import AcmeConfigError
from secure_etl.pki.store import PRIVATE_KEY_CHECK
from secure_etl.pki.verify import VerificationError

CHECKS_JOB = "certificate_checks"
RENEWAL_JOB = "certificate_renewal"


class CertificateRunConfig(Config):
    force: bool = False
    """Renew even when the certificate is not due and passes every check."""


def certificate_asset(platform: PlatformConfig, name: str) -> AssetsDefinition:
    cert = platform.certificates[name]

    @asset(
        key=certificate_key(name),
        group_name=GROUP,
        kinds={"pki"},
        description=(
            f"{cert.use.capitalize()} certificate for {', '.join(cert.identifiers)} from "
            f"issuer {cert.issuer!r}. Materializing issues it, or renews it when due or "
            "failing a check, then runs its deploy actions."
        ),
        tags={"secure_etl/use": cert.use},
    )
    def _certificate(context, config: CertificateRunConfig) -> MaterializeResult:
        try:
            result = ensure_certificate(platform, name, force=config.force, log=context.log.info)
        except (AcmeError, SolverError, AcmeConfigError, VerificationError) as err:
            # The previous version (if any) stays current; say what happened, in the UI too.
            outcome = "rate_limited" if isinstance(err, RateLimited) else "failed"
            metadata = {"outcome": outcome, "error": str(err), "issuer": cert.issuer}
            if isinstance(err, AcmeProblem) and err.retry_after is not None:
                metadata["retry_after_s"] = MetadataValue.float(err.retry_after)
            raise Failure(f"{name}: {outcome}: {err}", metadata=metadata) from err
        context.log.info(f"{name}: {result.outcome} ({result.reason}) in {result.seconds:.2f} s")
        leaf = current_leaf(platform, name)
        info = facts(leaf)
        return MaterializeResult(
            metadata={
                "outcome": result.outcome,
                "reason": result.reason,
                "version": result.version or "",
                "serial": info.serial,
                "not_after": MetadataValue.timestamp(info.not_after),
                "days_remaining": MetadataValue.float(info.days_remaining),
                "issuer": info.issuer,
                "sans": ", ".join(info.sans),
                "key_type": info.key_type,
                "fingerprint_sha256": info.fingerprint_sha256,
                "duration_s": MetadataValue.float(round(result.seconds, 3)),
                "issuer_name": result.issuer,
                "order_url": result.order_url or "",
                "deployed": "\n".join(result.deployed) or "no deploy actions",
            }
        )

    return _certificate


def certificate_checks(platform: PlatformConfig, name: str):
    """The inspection checks of certificate `name`, each executable on its own.

    One op inspects the current version once; it is subsettable (`can_subset`), so the UI's
    "Execute" runs any one check, or several, without materializing (renewing) the asset.
    """
    key = certificate_key(name)

    @multi_asset_check(
        name=f"{name.replace('-', '_')}_inspection",
        specs=[
            AssetCheckSpec(check, asset=key, description=text)
            for check, text in certificate_check_names(platform, name).items()
        ],
        can_subset=True,
        description=f"Inspects the current version of certificate {name!r}.",
        # The demo API serves this certificate: it runs while the checks do, so
        # served_by_endpoint handshakes with a real server (under `dagster dev` too).
        required_resource_keys=(
            {DEMO_API_KEY} if platform.demo_api and platform.demo_api.certificate == name else set()
        ),
    )
    def _checks(context):
        selected = {check.name for check in context.selected_asset_check_keys}
        for result in _inspect(platform, name):
            if result.name not in selected:
                continue
            yield AssetCheckResult(
                asset_key=key,
                check_name=result.name,
                passed=result.passed,
                severity=AssetCheckSeverity[result.severity],
                description=result.reason,
                metadata={"reason": result.reason},
            )

    return _checks


def _inspect(platform: PlatformConfig, name: str) -> list[CheckResult]:
    """The inspection results, or every check failed with the reason it could not run."""
    try:
        results = inspect_current(platform, name)
        reason = "no certificate has been issued yet" if results is None else ""
    except (PemError, ValueError, OSError) as err:
        results, reason = None, f"cannot read the current certificate: {err}"
    if results is None:
        checks = certificate_check_names(platform, name)
        return [CheckResult(check, False, "ERROR", reason) for check in checks]
    results = [*results, _key_protected(platform, name)]
    if platform.certificates[name].endpoints:
        results.append(_served(platform, name))
    return results


def _key_protected(platform: PlatformConfig, name: str) -> CheckResult:
    problem = certificate_store(platform).private_key_problem(name)
    if problem:
        return CheckResult(PRIVATE_KEY_CHECK, False, "ERROR", problem)
    return CheckResult(PRIVATE_KEY_CHECK, True, "ERROR", "owner-only, ours, not a link")


def _served(platform: PlatformConfig, name: str) -> CheckResult:
    endpoints = platform.certificates[name].endpoints
    stale = stale_endpoints(endpoints, current_chain(platform, name))
    if stale:
        return CheckResult(ENDPOINT_CHECK, False, "ERROR", "; ".join(stale))
    where = ", ".join(f"{e.host}:{e.port}" for e in endpoints)
    return CheckResult(ENDPOINT_CHECK, True, "ERROR", f"served by {where}")


def certificate_jobs(platform: PlatformConfig):
    keys = [certificate_key(name) for name in platform.certificates]
    checks_job = define_asset_job(
        CHECKS_JOB,
        selection=AssetSelection.checks_for_assets(*keys),
        description="Evaluates every certificate check without renewing anything.",
    )
    renewal_job = define_asset_job(
        RENEWAL_JOB,
        selection=AssetSelection.assets(*keys),
        description="Issues or renews certificates, then re-evaluates their checks.",
    )
    return checks_job, renewal_job
