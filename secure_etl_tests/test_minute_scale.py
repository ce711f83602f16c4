"""Minute-scale operation in config: partitions on any cron, internal-CA leaves of
minutes, the renewal sensor's interval, and a 6-minute leaf renewed at a third left."""

from __future__ import annotations

import copy
import datetime as dt

import pytest
import yaml
from cryptography import x509

from secure_etl.config import ConfigError, load_config
from secure_etl.pki.inspect import inspect_chain
from secure_etl.pki.keys import generate_private_key
from secure_etl.pki.renewal import build_issuer
from secure_etl_tests.conftest import BASE_CONFIG


def _config(tmp_path, **changes):
    data = copy.deepcopy(BASE_CONFIG)
    data["state_dir"] = str(tmp_path / "state")
    for key, value in changes.items():
        data[key] = value
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


def _pipeline_with(partitions: dict) -> dict:
    pipelines = copy.deepcopy(BASE_CONFIG["pipelines"])
    pipelines["customers"]["partitions"] = partitions
    return pipelines


def test_cron_partitions_build_a_partition_a_minute_and_a_schedule_each_minute(tmp_path):
    from secure_etl.defs.build import build_definitions

    partitions = {"type": "cron", "cron": "* * * * *", "start": "2026-03-01-10:00"}
    config = _config(tmp_path, pipelines=_pipeline_with(partitions))
    defs = build_definitions(config)
    job = defs.resolve_job_def("customers_etl")
    window = job.partitions_def.time_window_for_partition_key("2026-03-01-10:07")
    assert (window.end - window.start) == dt.timedelta(minutes=1)
    assert defs.resolve_schedule_def("customers_etl_schedule").cron_schedule == "* * * * *"


def test_hourly_stays_the_default(tmp_path):
    config = _config(tmp_path)
    assert config.pipelines["customers"].partitions.type == "hourly"


def test_a_bad_partition_cron_names_the_key(tmp_path):
    partitions = {"type": "cron", "cron": "61 * * * *", "start": "2026-03-01-10:00"}
    with pytest.raises(ConfigError) as error:
        _config(tmp_path, pipelines=_pipeline_with(partitions))
    assert "partitions" in str(error.value) and "minute 61" in str(error.value)


def test_internal_ca_leaves_of_minutes_keep_most_of_their_life(tmp_path):
    issuers = {"test-ca": {"type": "internal_ca", "lifetime_minutes": 6}}
    config = _config(tmp_path, issuers=issuers)
    issuer = build_issuer(config, "test-ca")
    now = dt.datetime.now(dt.UTC)
    issued = issuer.issue(["localhost"], "server", generate_private_key("ec256"))
    leaf = x509.load_pem_x509_certificate(issued.cert_pem)
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime == dt.timedelta(minutes=6)
    # Backdated by a tenth of the lifetime at most, not the 5 minutes of a long leaf.
    assert leaf.not_valid_after_utc - now > dt.timedelta(minutes=5, seconds=20)

    # The default policy (a third left) finds it due with 2 minutes to go, to the second.
    def expiry(at: dt.datetime):
        return inspect_chain([leaf], fraction_left=1 / 3, now=at)[0]

    due = leaf.not_valid_after_utc - dt.timedelta(minutes=2)
    assert expiry(due - dt.timedelta(seconds=2)).passed
    late = expiry(due + dt.timedelta(seconds=2))
    assert not late.passed and "renewal is due below 2.0 minutes" in late.reason


def test_lifetime_days_and_minutes_together_are_refused(tmp_path):
    issuers = {"test-ca": {"type": "internal_ca", "lifetime_minutes": 6, "lifetime_days": 2}}
    with pytest.raises(ConfigError, match="lifetime_days or lifetime_minutes"):
        _config(tmp_path, issuers=issuers)


def test_the_renewal_sensor_interval_and_check_schedule_take_seconds_and_minutes(tmp_path):
    from secure_etl.defs.build import build_definitions

    config = _config(tmp_path, certificate_check_schedule="* * * * *", renewal_sensor_interval_s=5)
    defs = build_definitions(config)
    assert defs.resolve_sensor_def("certificate_renewal").minimum_interval_seconds == 5
    checks = defs.resolve_schedule_def("certificate_checks_schedule")
    assert checks.cron_schedule == "* * * * *"


def test_checks_seconds_apart_are_evaluated_in_the_sensor_tick_and_start_renewals(
    tmp_path, monkeypatch
):
    """No run per check interval: the tick evaluates every check and reports the
    evaluations (stored by the daemon as runless check results); the renewal sensor
    reads them as it reads a checks run's, and requests the renewals."""
    from dagster import build_sensor_context, instance_for_test

    from secure_etl.defs.build import build_definitions
    from secure_etl.defs.names import certificate_check_keys
    from secure_etl.pki.renewal import ensure_certificate

    monkeypatch.delenv("SECURE_ETL_STATE_DIR", raising=False)
    platform = _config(tmp_path, certificate_check_interval_s=15)
    defs = build_definitions(platform)
    with pytest.raises(Exception, match="certificate_checks_schedule"):
        defs.resolve_schedule_def("certificate_checks_schedule")  # the sensor instead
    sensor = defs.resolve_sensor_def("certificate_checks_interval")
    assert sensor.minimum_interval_seconds == 15
    renewal = defs.resolve_sensor_def("certificate_renewal")
    every_check = {
        (k.asset_key, k.name)
        for n in platform.certificates
        for k in certificate_check_keys(platform, n)
    }
    with instance_for_test() as instance:
        cursors = [None]

        def tick():
            context = build_sensor_context(instance=instance, cursor=cursors[-1], definitions=defs)
            result = sensor(context)
            cursors.append(result.cursor)
            assert not result.run_requests  # never a run
            for event in result.asset_events:  # what the daemon does with them
                instance.report_runless_asset_event(event)
            return result

        first = tick()
        assert {(e.asset_key, e.check_name) for e in first.asset_events} == every_check
        assert not any(e.passed for e in first.asset_events)  # nothing issued yet
        assert "failing: db-server, etl-client" in first.skip_reason.skip_message
        requested = renewal(build_sensor_context(instance=instance, definitions=defs))
        assert sorted(r.tags["secure_etl/renewal_of"] for r in requested.run_requests) == [
            "db-server",
            "etl-client",
        ]

        for name in platform.certificates:
            ensure_certificate(platform, name)
        second = tick()
        assert {(e.asset_key, e.check_name) for e in second.asset_events} == every_check
        assert all(e.passed for e in second.asset_events), second.skip_reason
        assert "failing" not in second.skip_reason.skip_message
        # Unchanged passing checks are not stored again (each costs the daemon writes).
        third = sensor(
            build_sensor_context(instance=instance, cursor=second.cursor, definitions=defs)
        )
        assert not third.asset_events and "0 reported" in third.skip_reason.skip_message
        # ... until REPORT_ALL_S has passed: then each certificate's checks again
        import json
        import time

        from secure_etl.defs.renewal_sensor import REPORT_ALL_S

        # (one certificate a tick, so no tick stores them all).
        state = json.loads(third.cursor)
        state["reported"] = dict.fromkeys(state["reported"], time.time() - REPORT_ALL_S - 1)
        fourth = sensor(
            build_sensor_context(instance=instance, cursor=json.dumps(state), definitions=defs)
        )
        first_name = next(iter(platform.certificates))
        assert {e.asset_key.path[-1] for e in fourth.asset_events} == {first_name}
        assert {(e.asset_key, e.check_name) for e in fourth.asset_events} == {
            (k.asset_key, k.name) for k in certificate_check_keys(platform, first_name)
        }
        fifth = sensor(
            build_sensor_context(instance=instance, cursor=fourth.cursor, definitions=defs)
        )
        assert {e.asset_key.path[-1] for e in fifth.asset_events} == set(platform.certificates) - {
            first_name
        }
        cursor = requested.cursor
        quiet = renewal(build_sensor_context(instance=instance, cursor=cursor, definitions=defs))
        assert not quiet.run_requests


def test_a_check_interval_under_five_seconds_is_refused(tmp_path):
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, certificate_check_interval_s=1)
    assert caught.value.key == "certificate_check_interval_s"
