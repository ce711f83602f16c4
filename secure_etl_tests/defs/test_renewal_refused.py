"""A certificate that can never pass verification fails once, clearly, and the renewal
sensor does not loop on it. The CA is a real Pebble behind a real HTTPS proxy that
re-issues its answers as a serverAuth-only CA would (emulated: Pebble 2.4 adds clientAuth)."""

from __future__ import annotations

import pytest
from dagster import build_sensor_context

from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import CHECKS_JOB, RENEWAL_JOB
from secure_etl.defs.renewal_sensor import RENEWAL_TAG
from secure_etl.pki.renewal import certificate_store
from secure_etl_tests.acme.hostile_servers import LyingProxy, server_auth_only_ca, through

pytestmark = pytest.mark.integration


def _tick(defs, instance, cursor=None):
    sensor = defs.resolve_sensor_def("certificate_renewal")
    return sensor(build_sensor_context(instance=instance, cursor=cursor, definitions=defs))


def test_emulated_server_auth_only_ca_client_certificate_is_not_renewed_in_a_loop(
    acme_ca, acme_platform, instance, write_config, tmp_path
):
    proxy = LyingProxy(acme_ca, tmp_path / "proxy")
    root = server_auth_only_ca(proxy, tmp_path / "server-only")

    def add_client(data):
        data["issuers"]["pebble"]["trust_bundle"] = str(root)
        data["certificates"]["mtls"] = {
            "issuer": "pebble",
            "use": "client",
            "identifiers": ["client.example.com"],
        }

    try:
        platform = through(proxy, acme_platform, write_config, add_client)
        defs = build_definitions(platform)
        first = _tick(defs, instance)  # nothing checked yet
        defs.resolve_job_def(CHECKS_JOB).execute_in_process(instance=instance)
        tick = _tick(defs, instance, first.cursor)
        assert "mtls" in {r.tags[RENEWAL_TAG] for r in tick.run_requests}

        renewal = defs.resolve_job_def(RENEWAL_JOB).execute_in_process(
            instance=instance, tags={RENEWAL_TAG: "all"}, raise_on_error=False
        )
        (failure,) = [e for e in renewal.all_events if e.is_step_failure]
        assert failure.step_key.endswith("mtls")
        described = failure.step_failure_data.user_failure_data.description
        assert "mtls: failed:" in described
        assert "this CA does not issue clientAuth certificates" in described
        assert not certificate_store(platform).has_current("mtls")
        assert certificate_store(platform).has_current("web")  # serverAuth is all it needs

        cursor = tick.cursor
        for _ in range(2):  # the check schedule runs again and again
            defs.resolve_job_def(CHECKS_JOB).execute_in_process(instance=instance)
            later = _tick(defs, instance, cursor)
            cursor = later.cursor
            assert not later.run_requests
            message = later.skip_reason.skip_message
            assert "mtls: the last issuance under these settings failed verification" in message
            assert "clientAuth" in message and "needs a person" in message
    finally:
        proxy.stop()
