"""The renewal loop: a failed certificate check -> one renewal run -> the checks pass."""

from __future__ import annotations

import datetime as dt

import yaml
from dagster import SensorResult, build_sensor_context

from secure_etl.config import load_config
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import CHECKS_JOB, RENEWAL_JOB
from secure_etl.defs.names import certificate_check_keys, certificate_key
from secure_etl.pki.keys import generate_private_key
from secure_etl.pki.renewal import build_issuer, certificate_store, current_leaf


def _tick(defs, instance, cursor=None) -> SensorResult:
    sensor = defs.resolve_sensor_def("certificate_renewal")
    return sensor(build_sensor_context(instance=instance, cursor=cursor, definitions=defs))


def _install_expired(platform, name: str) -> str:
    """Put an expired (but otherwise correct) certificate in place as `current`."""
    cert = platform.certificates[name]
    issued = build_issuer(platform, cert.issuer).issue(
        cert.identifiers,
        cert.use,
        generate_private_key("ec256"),
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=40),
        lifetime=dt.timedelta(days=30),
    )
    store = certificate_store(platform)
    with store.lock(name):
        return store.install(name, issued)


def _check_results(result) -> dict[tuple[str, str], bool]:
    return {
        (e.asset_key.path[-1], e.check_name): e.passed for e in result.get_asset_check_evaluations()
    }


def test_a_failed_check_is_renewed_by_the_run_the_sensor_requests(platform, instance):
    defs = build_definitions(platform)
    first = defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
    assert all(_check_results(first).values())
    old_serial = current_leaf(platform, "etl-client").serial_number

    # Nothing has failed yet: the sensor skips and says why.
    quiet = _tick(defs, instance)
    assert not quiet.run_requests
    assert "no new failed" in quiet.skip_reason.skip_message

    _install_expired(platform, "etl-client")
    checks = defs.resolve_job_def(CHECKS_JOB).execute_in_process(instance=instance)
    results = _check_results(checks)
    assert results[("etl-client", "expiry_window")] is False
    assert results[("db-server", "expiry_window")] is True

    tick = _tick(defs, instance, quiet.cursor)
    assert len(tick.run_requests) == 1
    request = tick.run_requests[0]
    assert request.asset_selection == [certificate_key("etl-client")]
    assert request.tags["secure_etl/failed_checks"] == "expiry_window"

    # The same evaluation never requests a second run.
    again = _tick(defs, instance, tick.cursor)
    assert not again.run_requests

    renewal = defs.resolve_job_def(RENEWAL_JOB).execute_in_process(
        instance=instance,
        asset_selection=request.asset_selection,
        tags=request.tags,
    )
    (event,) = renewal.get_asset_materialization_events()
    assert event.materialization.metadata["outcome"].value == "renewed"
    assert event.materialization.metadata["days_remaining"].value > 29
    after = _check_results(renewal)
    assert after and all(after.values())
    assert {name for name, _ in after} == {"etl-client"}
    assert current_leaf(platform, "etl-client").serial_number != old_serial

    # The passing evaluations after the renewal request nothing.
    settled = _tick(defs, instance, again.cursor)
    assert not settled.run_requests


def test_a_certificate_that_can_never_pass_is_refused_once_and_not_renewed_again(
    platform, instance, write_config
):
    # A certificate that can never pass: it must chain to a root nobody issues from.
    data = yaml.safe_load(write_config().read_text())
    other_root = build_issuer(platform, "test-ca")
    other_root.directory = other_root.directory.parent / "elsewhere"
    other_root.ensure_root()
    data["certificates"]["etl-client"]["ca_bundle"] = str(other_root.root_path)
    broken = load_config(write_config(data, "broken.yaml"))
    defs = build_definitions(broken)

    renewal = defs.resolve_job_def(RENEWAL_JOB).execute_in_process(
        instance=instance, tags={"secure_etl/renewal_of": "etl-client"}, raise_on_error=False
    )
    # Verified before install: refused, saying why, and nothing installed.
    (failure,) = [e for e in renewal.all_events if e.is_step_failure]
    assert "(chain_trusted)" in failure.step_failure_data.user_failure_data.description
    assert not certificate_store(broken).has_current("etl-client")
    checks = defs.resolve_job_def(CHECKS_JOB).execute_in_process(instance=instance)
    assert _check_results(checks)[("etl-client", "chain_trusted")] is False

    tick = _tick(defs, instance)
    assert not tick.run_requests
    assert "etl-client: the last issuance under these settings failed verification" in (
        tick.skip_reason.skip_message
    )
    assert "needs a person" in tick.skip_reason.skip_message


def test_certificates_never_issued_fail_their_checks_and_get_issued(platform, instance):
    defs = build_definitions(platform)
    checks = defs.resolve_job_def(CHECKS_JOB).execute_in_process(instance=instance)
    evaluations = checks.get_asset_check_evaluations()
    assert {(e.asset_key, e.check_name) for e in evaluations} == {
        (k.asset_key, k.name)
        for n in platform.certificates
        for k in certificate_check_keys(platform, n)
    }
    assert not any(e.passed for e in evaluations)
    assert {e.description for e in evaluations} == {"no certificate has been issued yet"}

    tick = _tick(defs, instance)
    assert sorted(r.tags["secure_etl/renewal_of"] for r in tick.run_requests) == [
        "db-server",
        "etl-client",
    ]
    assert len({r.run_key for r in tick.run_requests}) == 2


def test_no_second_renewal_is_requested_while_one_has_not_finished(platform, instance):
    """A renewal run not yet started (a busy daemon) renews when it runs: the next
    failed evaluation requests nothing more for that certificate, and once the run has
    finished a failure requests again."""
    from dagster import DagsterRunStatus

    defs = build_definitions(platform)
    defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
    _install_expired(platform, "etl-client")
    _install_expired(platform, "db-server")
    queued = instance.create_run_for_job(
        job_def=defs.resolve_job_def(RENEWAL_JOB),
        tags={"secure_etl/renewal_of": "etl-client"},
        status=DagsterRunStatus.NOT_STARTED,  # QUEUED needs a code location's origin
    )
    defs.resolve_job_def(CHECKS_JOB).execute_in_process(instance=instance)

    tick = _tick(defs, instance)
    assert [r.tags["secure_etl/renewal_of"] for r in tick.run_requests] == ["db-server"]

    instance.report_run_canceled(queued)  # it ended without renewing
    defs.resolve_job_def(CHECKS_JOB).execute_in_process(instance=instance)
    later = _tick(defs, instance, tick.cursor)
    assert sorted(r.tags["secure_etl/renewal_of"] for r in later.run_requests) == [
        "db-server",
        "etl-client",
    ]


def test_a_failure_judged_before_the_latest_renewal_requests_nothing(
    platform, instance, write_config
):
    """A check evaluated just before a renewal run installed the next version, and stored
    just after it (the interval sensor's tick), judged the old one: renewing again would
    find nothing due."""
    from dagster import build_sensor_context as context_for

    data = yaml.safe_load(write_config().read_text())
    data["certificate_check_interval_s"] = 5
    interval = load_config(write_config(data, "interval.yaml"))
    defs = build_definitions(interval)
    defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
    _install_expired(interval, "etl-client")
    checks = defs.resolve_sensor_def("certificate_checks_interval")
    evaluated = checks(context_for(instance=instance, definitions=defs))  # fails it
    defs.resolve_job_def(RENEWAL_JOB).execute_in_process(
        instance=instance, asset_selection=[certificate_key("etl-client")]
    )  # renewed since; its own checks pass
    for event in evaluated.asset_events:  # stored by the daemon after the renewal
        instance.report_runless_asset_event(event)
    tick = _tick(defs, instance)
    assert not tick.run_requests
    assert "etl-client: its failed checks judged an earlier materialization" in (
        tick.skip_reason.skip_message
    )
