"""One certificate check runs on its own, as the UI's "Execute" on the checks tab does:
through the real web server's GraphQL, with no materialization (no renewal) in that run."""

from __future__ import annotations

import time

import pytest
from dagster import AssetKey, DagsterInstance

from secure_etl.config import load_config
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import RENEWAL_JOB, certificate_check_keys, certificate_key
from secure_etl.defs.check_state import latest_check_evaluations
from secure_etl_tests.defs.test_webserver import _graphql, _home, _webserver

CAN_EXECUTE = """{ assetNodes { assetKey { path } assetChecksOrError {
  ... on AssetChecks { checks { name canExecuteIndividually } } } } }"""
LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on Error { message } } }"""
STATUS = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""


def _checks_by_asset(url: str) -> dict:
    for _ in range(60):  # the code location loads in the background
        nodes = _graphql(url, CAN_EXECUTE)["assetNodes"]
        if nodes:
            return {
                "/".join(n["assetKey"]["path"]): {
                    c["name"]: c["canExecuteIndividually"]
                    for c in n["assetChecksOrError"].get("checks", [])
                }
                for n in nodes
            }
        time.sleep(1)
    raise AssertionError("no asset nodes")


@pytest.mark.integration  # a real dagster-webserver
def test_one_certificate_check_executes_without_renewing(tmp_path, write_config):
    config = write_config()
    platform = load_config(config)
    home = _home(tmp_path, run_now=True)  # no daemon: launch straight away, not queued
    with DagsterInstance.from_config(str(home)) as instance:
        issued = (
            build_definitions(platform)
            .resolve_job_def(RENEWAL_JOB)
            .execute_in_process(instance=instance)
        )
    key = certificate_key("etl-client")

    with _webserver(home, config) as url:
        checks = _checks_by_asset(url)
        for name in platform.certificates:
            assert set(checks[f"certificates/{name}"].values()) == {"CAN_EXECUTE"}, checks
        # What the checks tab's "Execute" launches: the asset job, no asset, one check.
        params = {
            "selector": {
                "repositoryLocationName": "secure_etl",
                "repositoryName": "__repository__",
                "jobName": "__ASSET_JOB",
                "assetSelection": [],
                "assetCheckSelection": [{"assetKey": {"path": key.path}, "name": "expiry_window"}],
            },
            "mode": "default",
        }
        launched = _graphql(url, LAUNCH, params=params)["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        deadline = time.monotonic() + 180
        status = None
        while time.monotonic() < deadline:
            status = _graphql(url, STATUS, id=run_id)["runOrError"]["status"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            time.sleep(1)
        assert status == "SUCCESS", status

    with DagsterInstance.from_config(str(home)) as instance:
        latest = latest_check_evaluations(instance, certificate_check_keys(platform, "etl-client"))
        fresh = {k.name for k, e in latest.items() if e.run_id == run_id}
        assert fresh == {"expiry_window"}  # only the check asked for
        assert latest[next(k for k in latest if k.name == "expiry_window")].passed
        # Nothing renewed: the certificate's latest materialization is still the issuance.
        event = instance.get_latest_materialization_event(key)
        assert event is not None and event.run_id == issued.run_id
        assert instance.get_latest_materialization_event(AssetKey(["raw", "customers"])) is None
