"""The names of the platform's assets, jobs and checks: what the definitions create and
the health collector (``secure-etl status``) looks up in the instance. Apart from the
definitions so that the collector loads neither the pipelines (pandas, the connectors'
drivers) nor the certificate assets."""

from __future__ import annotations

from dagster import AssetCheckKey, AssetKey

from secure_etl.config import PlatformConfig
from secure_etl.pki.inspect import CHECKS
from secure_etl.pki.store import PRIVATE_KEY_CHECK

GROUP = "certificates"

# Every run says what kind of work it is; the production instance's queue limits
# (deploy/dagster.yaml) keep pipeline runs from taking every slot, so a checks run and a
# renewal always find one.
KIND_TAG = "secure_etl/kind"


def kind_tags(kind: str) -> dict[str, str]:
    """The tags of a job whose runs are work of `kind` (pipeline, checks, renewal,
    maintenance)."""
    return {KIND_TAG: kind}


def certificate_key(name: str) -> AssetKey:
    return AssetKey([GROUP, name])


# The inspection checks, the private key's file, and one that needs the network: what
# the endpoints serve.
ENDPOINT_CHECK = "served_by_endpoint"
ALL_CHECKS = {
    **CHECKS,
    PRIVATE_KEY_CHECK: "the private key is a regular file of ours that no one else may read or "
    "write, in a directory no one else may write (not a symbolic link)",
    ENDPOINT_CHECK: "every configured endpoint presents the current certificate and chain, "
    "compared by SHA-256 fingerprint (a real TLS handshake; PostgreSQL after its SSLRequest)",
}


def certificate_check_names(platform: PlatformConfig, name: str) -> dict[str, str]:
    """The checks certificate `name` has (name -> description).

    `served_by_endpoint` only when the certificate has endpoints: with none it would have
    nothing to judge, and a check that cannot fail must not show as Passed.
    """
    checks = dict(ALL_CHECKS)
    if not platform.certificates[name].endpoints:
        del checks[ENDPOINT_CHECK]
    return checks


def certificate_check_keys(platform: PlatformConfig, name: str) -> list[AssetCheckKey]:
    return [
        AssetCheckKey(certificate_key(name), check)
        for check in certificate_check_names(platform, name)
    ]


def stage_key(stage: str, pipeline: str) -> AssetKey:
    return AssetKey([stage, pipeline])


def pipeline_job_name(pipeline: str) -> str:
    return f"{pipeline.replace('-', '_')}_etl"
