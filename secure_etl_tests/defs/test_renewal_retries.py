"""An issuer that cannot serve just then (the internal CA's signing key moved away, a CA
that does not answer) is asked again in the same renewal run, `renewal.retries` times;
anything else (a refusal, a rate limit) fails at once. The previous certificate stays
current throughout."""

from __future__ import annotations

import copy
import socket
import threading

import pytest
from dagster import DagsterEventType

from secure_etl.acme.errors import AcmeProblem, CaUnreachable, ProtocolError, RateLimited
from secure_etl.acme.transport import Transport
from secure_etl.config import load_config
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import RENEWAL_JOB
from secure_etl.defs.names import certificate_key
from secure_etl.pki.issuer import IssuerUnavailable, worth_retrying
from secure_etl.pki.renewal import certificate_store, current_leaf, ensure_certificate
from secure_etl_tests.conftest import BASE_CONFIG


def _platform(write_config, retries: int, delay_s: float):
    data = copy.deepcopy(BASE_CONFIG)
    data["certificates"]["etl-client"]["renewal"] = {"retries": retries, "retry_delay_s": delay_s}
    return load_config(write_config(data))


def _renew(platform, instance):
    defs = build_definitions(platform)
    return defs.resolve_job_def(RENEWAL_JOB).execute_in_process(
        instance=instance,
        asset_selection=[certificate_key("etl-client")],
        run_config={"ops": {"certificates__etl_client": {"config": {"force": True}}}},
        raise_on_error=False,
    )


def _latest_run_id(instance) -> str:
    runs = instance.get_runs(limit=1)
    return runs[0].run_id if runs else "none yet"


def _events(result, kind):
    return [e for e in result.all_events if e.event_type == kind]


def test_a_renewal_while_the_ca_key_is_away_succeeds_when_it_comes_back(
    write_config, instance, monkeypatch
):
    monkeypatch.delenv("SECURE_ETL_STATE_DIR", raising=False)
    platform = _platform(write_config, retries=3, delay_s=0.5)
    ensure_certificate(platform, "etl-client")
    before = current_leaf(platform, "etl-client").serial_number
    key = platform.resolved_state_dir() / "ca" / "test-ca" / "ca.key"
    away = key.with_name("ca.key.away")
    key.rename(away)
    done = threading.Event()

    def bring_back_after_a_failed_attempt():
        while not done.is_set():
            if instance.get_records_for_run(
                run_id=_latest_run_id(instance), of_type=DagsterEventType.STEP_UP_FOR_RETRY
            ).records:
                away.rename(key)
                return
            done.wait(0.05)

    back = threading.Thread(target=bring_back_after_a_failed_attempt)
    back.start()
    try:
        result = _renew(platform, instance)
    finally:
        done.set()
        back.join()
    assert result.success
    assert key.exists()  # it came back during the run, after a failed attempt
    restarts = _events(result, DagsterEventType.STEP_RESTARTED)
    assert 1 <= len(restarts) <= 3
    assert current_leaf(platform, "etl-client").serial_number != before


def test_a_ca_key_that_stays_away_fails_after_the_retries_and_keeps_the_old_certificate(
    write_config, instance, monkeypatch
):
    monkeypatch.delenv("SECURE_ETL_STATE_DIR", raising=False)
    platform = _platform(write_config, retries=2, delay_s=0.1)
    ensure_certificate(platform, "etl-client")
    before = current_leaf(platform, "etl-client").serial_number
    key = platform.resolved_state_dir() / "ca" / "test-ca" / "ca.key"
    key.rename(key.with_name("ca.key.away"))
    result = _renew(platform, instance)
    assert not result.success
    assert len(_events(result, DagsterEventType.STEP_RESTARTED)) == 2  # 3 attempts in all
    [failure] = [e for e in result.all_events if e.is_step_failure]
    described = failure.step_failure_data.user_failure_data.description
    assert described.startswith("etl-client: failed: issuer 'test-ca' cannot sign:")
    assert "ca.key" in described and "Traceback" not in described
    assert current_leaf(platform, "etl-client").serial_number == before
    assert certificate_store(platform).has_current("etl-client")


def test_no_retries_configured_means_one_attempt(write_config, instance, monkeypatch):
    monkeypatch.delenv("SECURE_ETL_STATE_DIR", raising=False)
    platform = _platform(write_config, retries=0, delay_s=1)
    ensure_certificate(platform, "etl-client")
    key = platform.resolved_state_dir() / "ca" / "test-ca" / "ca.key"
    key.rename(key.with_name("ca.key.away"))
    result = _renew(platform, instance)
    assert not result.success
    assert not _events(result, DagsterEventType.STEP_RESTARTED)


def test_only_an_issuer_that_could_not_serve_is_worth_retrying():
    assert worth_retrying(IssuerUnavailable("key away"))
    assert worth_retrying(CaUnreachable("connection refused"))
    assert worth_retrying(AcmeProblem("urn:ietf:params:acme:error:serverInternal", status=500))
    assert worth_retrying(AcmeProblem("about:blank", status=503))
    # A refusal, a rate limit (its Retry-After is the CA's to give), a malformed answer.
    assert not worth_retrying(AcmeProblem("urn:ietf:params:acme:error:unauthorized", status=403))
    assert not worth_retrying(
        RateLimited("urn:ietf:params:acme:error:rateLimited", status=503, retry_after=3600)
    )
    assert not worth_retrying(ProtocolError("not JSON"))
    assert not worth_retrying(ValueError("anything else"))


def test_a_ca_that_refuses_the_connection_is_unreachable_not_a_protocol_error():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = Transport(f"https://127.0.0.1:{port}/dir", timeout=5)
    with pytest.raises(CaUnreachable) as caught:
        transport.get(f"https://127.0.0.1:{port}/dir")
    assert "ConnectError" in str(caught.value)


def test_the_retry_settings_are_checked_at_load(write_config):
    from secure_etl.config import ConfigError

    data = copy.deepcopy(BASE_CONFIG)
    data["certificates"]["etl-client"]["renewal"] = {"retries": -1}
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(data, "bad.yaml"))
    assert caught.value.key == "certificates.etl-client.renewal.retries"
