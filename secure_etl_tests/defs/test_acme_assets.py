"""A certificate asset issued by ACME (a real Pebble), with its checks passing."""

from __future__ import annotations

import pytest
from dagster import AssetKey

from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import RENEWAL_JOB
from secure_etl.defs.names import certificate_check_names

pytestmark = pytest.mark.integration


def test_materializing_an_acme_certificate_passes_every_check(acme_platform, instance):
    defs = build_definitions(acme_platform)

    result = defs.resolve_job_def(RENEWAL_JOB).execute_in_process(
        instance=instance, asset_selection=[AssetKey(["certificates", "web"])]
    )

    (event,) = result.get_asset_materialization_events()
    meta = event.materialization.metadata
    assert meta["outcome"].value == "issued"
    assert "/my-order/" in meta["order_url"].value
    assert "Pebble Intermediate CA" in meta["issuer"].value
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == set(certificate_check_names(acme_platform, "web"))
    assert checks["chain_trusted"].passed, checks["chain_trusted"].description
    assert all(e.passed for e in checks.values())


@pytest.mark.own_pebble
def test_an_acme_failure_fails_the_run_and_says_so(acme_platform, instance, acme_ca):
    acme_ca.stop()  # the CA is gone
    defs = build_definitions(acme_platform)

    result = defs.resolve_job_def(RENEWAL_JOB).execute_in_process(
        instance=instance,
        asset_selection=[AssetKey(["certificates", "web"])],
        raise_on_error=False,
    )

    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    error = failure.step_failure_data.user_failure_data
    assert error.metadata["outcome"].value == "failed"
    assert "127.0.0.1" in error.description
