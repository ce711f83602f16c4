"""Certificate assets (materialize = issue or renew) and their inspection checks."""

from collections.abc import Iterator

from dagster import (
    AssetCheckEvaluation,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    Backoff,
    Failure,
    Field,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
    define_asset_job,
    in_process_executor,
    job,
    multi_asset_check,
    op,
)

from secure_etl.acme.challenges import SolverError
from secure_etl.acme.errors import AcmeError, AcmeProblem, RateLimited
from secure_etl.config import PlatformConfig
from secure_etl.defs.check_state import check_evaluation, latest_materializations
from secure_etl.defs.names import (
    ENDPOINT_CHECK,
    GROUP,
    certificate_check_names,
    certificate_key,
    kind_tags,
)
from secure_etl.defs.resources import DEMO_API_KEY
from secure_etl.pki.endpoints import stale_endpoints
from secure_etl.pki.inspect import CheckResult, PemError, facts
from secure_etl.pki.issuer import IssuerUnavailable, worth_retrying
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


# The run config of a certificate asset: `force: true` renews it anyway. One schema for
# every certificate, built once (a Config class is analysed again for each asset).
RUN_CONFIG = {
    "force": Field(
        bool,
        default_value=False,
        description="Renew even when the certificate is not due and passes every check.",
    )
}


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
        config_schema=RUN_CONFIG,
        retry_policy=_retry_policy(cert.renewal),
    )
    def _certificate(context) -> MaterializeResult:
        force = bool(context.op_execution_context.op_config["force"])
        try:
            result = ensure_certificate(platform, name, force=force, log=context.log.info)
        except (
            AcmeError,
            SolverError,
            AcmeConfigError,
            VerificationError,
            IssuerUnavailable,
        ) as err:
            # The previous version (if any) stays current; say what happened, in the UI too.
            outcome = "rate_limited" if isinstance(err, RateLimited) else "failed"
            metadata = {"outcome": outcome, "error": str(err), "issuer": cert.issuer}
            if isinstance(err, AcmeProblem) and err.retry_after is not None:
                metadata["retry_after_s"] = MetadataValue.float(err.retry_after)
            # Only an issuer that could not serve just then is asked again in this run
            # (renewal.retries); anything else fails at once.
            retry = worth_retrying(err)
            if retry and cert.renewal.retries:
                context.log.warning(f"{name}: {err}; trying again (renewal.retries)")
            raise Failure(
                f"{name}: {outcome}: {err}", metadata=metadata, allow_retries=retry
            ) from err
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


def _retry_policy(renewal) -> RetryPolicy | None:
    """Dagster's retry policy of a certificate's renewal step (none with 0 retries)."""
    if not renewal.retries:
        return None
    return RetryPolicy(
        max_retries=renewal.retries, delay=renewal.retry_delay_s, backoff=Backoff.LINEAR
    )


CHECKS_OP = "certificate_inspection"
# Certificates whose checks one op evaluates. One op for all would be one step, but
# Dagster builds each job's graph in time quadratic in an op's checks (each input is
# looked up among all of them): 100 keeps that small at thousands of certificates.
CERTIFICATES_PER_OP = 100


def _check_groups(platform: PlatformConfig) -> list[tuple[str, list[str], set[str]]]:
    """(op name, certificates, resource keys) of each check op, CERTIFICATES_PER_OP
    certificates to an op.

    The demo API serves its certificate: it runs while that certificate's checks do, so
    served_by_endpoint handshakes with a real server (under `dagster dev` too). Those
    checks have an op of their own, so no other check starts the server."""
    demo = platform.demo_api.certificate if platform.demo_api else None
    names = [name for name in platform.certificates if name != demo]
    chunks = [names[i : i + CERTIFICATES_PER_OP] for i in range(0, len(names), CERTIFICATES_PER_OP)]
    if len(chunks) == 1:
        groups = [(CHECKS_OP, chunks[0], set())]
    else:
        groups = [(f"{CHECKS_OP}_{i}", c, set()) for i, c in enumerate(chunks, 1)]
    if demo in platform.certificates:
        groups.append((f"{CHECKS_OP}_demo_api", [demo], {DEMO_API_KEY}))
    return groups


def certificate_checks(platform: PlatformConfig) -> list[AssetChecksDefinition]:
    """Every certificate's inspection checks, CERTIFICATES_PER_OP certificates to an op.

    Each certificate is still its own asset with its own checks in the UI; an op
    evaluates many certificates' checks, so running checks costs a few steps, not a step
    (or, under the multiprocess executor, a process) per certificate. Each op is
    subsettable (`can_subset`): the UI's "Execute" runs any one check, or several,
    without materializing (renewing) an asset, and a renewal run evaluates only the
    renewed certificates' checks. Each selected certificate is inspected once, however
    many of its checks are selected.
    """
    return [_checks_op(platform, op, names, keys) for op, names, keys in _check_groups(platform)]


def _checks_op(
    platform: PlatformConfig, op_name: str, names: list[str], resource_keys: set[str]
) -> AssetChecksDefinition:
    specs = [
        AssetCheckSpec(check, asset=certificate_key(name), description=text)
        for name in names
        for check, text in certificate_check_names(platform, name).items()
    ]

    @multi_asset_check(
        name=op_name,
        specs=specs,
        can_subset=True,
        description=f"Inspects the current version of each selected certificate of {len(names)}.",
        required_resource_keys=resource_keys,
    )
    def _checks(context):
        selected: dict[AssetKey, set[str]] = {}
        for check_key in context.selected_asset_check_keys:
            selected.setdefault(check_key.asset_key, set()).add(check_key.name)
        yield from certificate_evaluations(context.instance, platform, names, selected)

    return _checks


def certificate_evaluations(
    instance, platform: PlatformConfig, names: list[str], selected: dict | None = None
) -> Iterator[AssetCheckEvaluation]:
    """The evaluation of each check of ``names`` (only the ``selected`` ones: asset key
    -> check names), each certificate inspected once. An evaluation has no metadata: its
    description is the reason, and every key more is stored three times per check."""
    chosen = [n for n in names if selected is None or certificate_key(n) in selected]
    # The materialization each evaluation judges (shown as the check's status for the
    # latest materialization), read for every chosen certificate at once.
    targets = latest_materializations(instance, [certificate_key(n) for n in chosen])
    for name in chosen:
        key = certificate_key(name)
        wanted = None if selected is None else selected[key]
        for result in _inspect(platform, name):
            if wanted is None or result.name in wanted:
                yield check_evaluation(
                    key,
                    result.name,
                    passed=result.passed,
                    severity=AssetCheckSeverity[result.severity],
                    description=result.reason,
                    target=targets.get(key),
                )


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
    """The checks job (what the schedule runs) and the renewal job.

    The checks job is an op job, not a selection of the checks: its ops report each
    certificate check's evaluation (to the same checks the UI shows), without Dagster
    first recording every check as planned. On the SQLite instance each recorded event
    costs a few transactions, so that halves the events and the time of a checks run.
    It runs in the run's own process, not in a subprocess per op that loads the whole
    code location again (Dagster's default executor)."""
    ops = [_inspection_op(platform, op, names, keys) for op, names, keys in _check_groups(platform)]

    @job(
        name=CHECKS_JOB,
        description="Evaluates every certificate check without renewing anything.",
        executor_def=in_process_executor,
        tags=kind_tags("checks"),
    )
    def checks_job():
        for inspection in ops:
            inspection()

    keys = [certificate_key(name) for name in platform.certificates]
    renewal_job = define_asset_job(
        RENEWAL_JOB,
        selection=AssetSelection.assets(*keys),
        tags=kind_tags("renewal"),
        # One certificate and its checks: in the run's own process (a step subprocess
        # would load the code location a second time, seconds a certificate of minutes
        # cannot spare). With Celery, on the workers (the store is shared).
        executor_def=None if platform.executor.type == "celery" else in_process_executor,
        description="Issues or renews certificates, then re-evaluates their checks.",
    )
    return checks_job, renewal_job


def _inspection_op(platform: PlatformConfig, name: str, names: list[str], resource_keys: set[str]):
    @op(
        name=name.replace(CHECKS_OP, "inspect_certificates"),
        out={},
        required_resource_keys=resource_keys,
        description=f"Reports every check of {len(names)} certificates.",
    )
    def _inspection(context):
        yield from certificate_evaluations(context.instance, platform, names)

    return _inspection
