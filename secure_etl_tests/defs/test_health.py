"""The health report tells the truth: failures, stale data, broken audit chains."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from dagster import job, op

from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import RENEWAL_JOB
from secure_etl.defs.health import HEALTH_JOB, collect
from secure_etl.monitor.health import render_markdown, render_prometheus
from secure_etl_tests.servers import require_binary

ROOT = Path(__file__).resolve().parents[2]
PARTITION = "2026-03-01-10:00"
SAMPLE = re.compile(r'^[a-z_][a-z0-9_]*(\{([a-z_]+="[^"]*",?)*\})? -?[0-9.e+-]+$')


def test_failures_stale_data_and_a_broken_audit_chain_show_up(platform, instance):
    # Nothing has run: no loads, no certificates.
    report = collect(platform, instance)
    assert report.pipelines[0].fresh is False
    assert all(not c.ready for c in report.certificates)
    assert "pipeline customers: never loaded" in report.problems

    defs = build_definitions(platform)
    defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
    defs.resolve_job_def("customers_etl").execute_in_process(
        partition_key=PARTITION, instance=instance
    )

    @op
    def connect():
        raise ConnectionError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")

    @job
    def extract():
        connect()

    extract.execute_in_process(instance=instance, raise_on_error=False)

    report = collect(platform, instance)
    [pipeline] = report.pipelines
    assert pipeline.last_run_status == "SUCCESS" and pipeline.rows_loaded > 150
    # The demo partition is from March: loaded just now, so fresh by the load time.
    assert pipeline.fresh is True and pipeline.last_partition == PARTITION
    assert all(c.ready and c.checks_fresh for c in report.certificates)
    assert report.security.failed_authentications_30d == 1
    assert report.security.audit_chain_ok is True

    # A tampered audit log is reported, in the report and in the metrics.
    log = platform.resolved_state_dir() / "audit" / "audit.log"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    report = collect(platform, instance)
    assert report.security.audit_chain_ok is False
    assert any(p.startswith("audit log: ") for p in report.problems)
    assert "BROKEN" in render_markdown(report)
    metrics = render_prometheus(report)
    assert "secure_etl_audit_chain_ok 0.0" in metrics
    samples = [line for line in metrics.splitlines() if not line.startswith("#")]
    assert samples and all(SAMPLE.match(line) for line in samples), samples


@pytest.mark.integration
def test_the_health_report_asset_writes_metrics_and_its_freshness_checks_fail_when_stale(
    platform, instance
):
    defs = build_definitions(platform)
    result = defs.resolve_job_def(HEALTH_JOB).execute_in_process(instance=instance)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    # Nothing loaded and no certificate checked yet: both freshness checks fail (WARN).
    assert checks["loaded_fresh"].passed is False
    assert checks["loaded_fresh"].description == "stale: customers"
    assert checks["certificate_checks_recent"].passed is False
    [event] = result.get_asset_materialization_events()
    assert "### Certificates" in event.materialization.metadata["report"].value
    prom = platform.resolved_state_dir() / "metrics" / "secure_etl.prom"
    assert "secure_etl_health_report_timestamp_seconds" in prom.read_text()
    assert oct(prom.stat().st_mode & 0o777) == "0o644"  # node_exporter reads it
    # Prometheus's own parser and linter accept the file, and the shipped rules.
    promtool = require_binary("promtool", "prometheus")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=prom.read_bytes(), capture_output=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = subprocess.run(
        [promtool, "check", "rules", str(ROOT / "deploy" / "prometheus-rules.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rules.returncode == 0 and "SUCCESS: 7 rules found" in rules.stdout, rules.stdout

    defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
    defs.resolve_job_def("customers_etl").execute_in_process(
        partition_key=PARTITION, instance=instance
    )
    result = defs.resolve_job_def(HEALTH_JOB).execute_in_process(instance=instance)
    assert all(e.passed for e in result.get_asset_check_evaluations())


def test_loaded_assets_carry_a_freshness_policy_from_the_config(platform):
    import datetime as dt

    from dagster import AssetKey

    assets = build_definitions(platform).resolve_assets_def(AssetKey(["loaded", "customers"]))
    [spec] = assets.specs
    limit = dt.timedelta(hours=platform.monitoring.loaded_max_lag_hours)
    assert spec.freshness_policy.fail_window.to_timedelta() == limit
    assert spec.freshness_policy.warn_window.to_timedelta() == limit / 2


def test_without_an_instance_the_report_says_what_it_left_out(platform):
    from secure_etl.monitor.health import render_text

    report = collect(platform, None)
    assert report.instance.startswith("none")
    assert "certificate etl-client: no check evaluation found" in report.problems
    assert "No Dagster instance (set DAGSTER_HOME)" in render_text(report)


def test_status_opens_the_dagster_instance_once(write_config, tmp_path, monkeypatch, capsys):
    # The CLI's check of $DAGSTER_HOME leaves judging dagster.yaml to the report, which
    # opens the instance anyway (opening it was a quarter of the command's time).
    from dagster import DagsterInstance

    from secure_etl.cli import main

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    opened = []
    real = DagsterInstance.from_config

    def counting(*args, **kwargs):
        opened.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(DagsterInstance, "from_config", staticmethod(counting))
    code = main(["status", "--config", str(write_config())])
    assert code == 1  # nothing has run: checks and loads are missing
    assert "etl-client" in capsys.readouterr().out
    assert len(opened) == 1


def test_the_json_form_keeps_its_shape(platform):
    import json

    report = json.loads(json.dumps(collect(platform, None).as_dict()))
    assert list(report) == [
        "generated_at",
        "instance",
        "pipelines",
        "certificates",
        "security",
        "policy",
        "problems",
    ]
    assert list(report["security"]) == [
        "connections",
        "connections_verified",
        "audit_chain_ok",
        "audit_records",
        "audit_checkpoints",
        "audit_problem",
        "audit_key_pinned",
        "renewals_30d",
        "failed_authentications_30d",
    ]
    [pipeline] = report["pipelines"]
    assert pipeline["name"] == "customers" and pipeline["fresh"] is None
    cert = next(c for c in report["certificates"] if c["name"] == "etl-client")
    assert cert["ready"] is False and cert["failing_checks"] == ["not issued"]
    assert cert["checks_age_hours"] is None and cert["checks_fresh"] is False
    assert report["problems"] and all(isinstance(p, str) for p in report["problems"])
    policy = {p["point"]: p for p in report["policy"]}
    assert policy["pii_transformed"]["status"] == "enforced"
    assert policy["pii_transformed"]["enforced_at"] == [
        "pipelines.customers (PII: full_name, email, phone)"
    ]


def test_last_issued_is_when_the_version_was_installed_not_the_backdated_not_before(platform):
    import datetime as dt

    from secure_etl.monitor.health import certificate_status
    from secure_etl.pki.inspect import facts
    from secure_etl.pki.renewal import current_leaf, ensure_certificate

    before = dt.datetime.now(dt.UTC)
    ensure_certificate(platform, "etl-client")
    after = dt.datetime.now(dt.UTC)
    row = next(c for c in certificate_status(platform, after) if c.name == "etl-client")
    issued = dt.datetime.fromisoformat(row.issued_at)
    assert before - dt.timedelta(seconds=1) <= issued <= after
    not_before = facts(current_leaf(platform, "etl-client"), after).not_before
    assert not_before < before - dt.timedelta(minutes=4)  # the CA backdates it
