"""The real web server loads the code location from workspace.yaml and serves the graph;
Debian's chromium, driven by Playwright, shows the lineage and the checks' statuses."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from dagster import DagsterInstance

from secure_etl.config import load_config
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import CHECKS_JOB, RENEWAL_JOB
from secure_etl.defs.health import HEALTH_JOB
from secure_etl.defs.names import certificate_check_names
from secure_etl_tests.servers import free_port, require_binary

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
QUERY = """{ assetNodes { assetKey { path } groupName dependencyKeys { path }
  assetChecksOrError { ... on AssetChecks { checks { name
    executionForLatestMaterialization { status } } } } } }"""
# Where the browser test leaves its screenshots (CI keeps the directory with the logs).
SCREENSHOTS = Path(os.environ.get("SECURE_ETL_TEST_OUTPUT", REPO / ".test-output"))


@contextlib.contextmanager
def _webserver(home: Path, config: Path):
    port = free_port()
    env = dict(os.environ, DAGSTER_HOME=str(home), SECURE_ETL_CONFIG=str(config))
    binary = Path(sys.executable).with_name("dagster-webserver")
    proc = subprocess.Popen(
        [str(binary), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"dagster-webserver exited: {proc.stderr.read().decode()}")
            try:
                if httpx.get(f"{url}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise AssertionError("dagster-webserver did not answer within 120 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    return home


def _asset_nodes(url: str) -> dict:
    nodes: dict = {}
    for _ in range(60):  # the code location loads in the background
        data = httpx.post(f"{url}/graphql", json={"query": QUERY}, timeout=30).json()
        nodes = {"/".join(n["assetKey"]["path"]): n for n in data["data"]["assetNodes"]}
        if nodes:
            break
        time.sleep(1)
    return nodes


def test_the_ui_serves_certificates_with_checks_joined_to_the_pipeline(tmp_path, write_config):
    with _webserver(_home(tmp_path), write_config()) as url:
        nodes = _asset_nodes(url)

    assert set(nodes) == {
        "certificates/db-server",
        "certificates/etl-client",
        "raw/customers",
        "hashed/customers",
        "loaded/customers",
        "operations/health_report",
    }
    checks = {c["name"] for c in nodes["certificates/etl-client"]["assetChecksOrError"]["checks"]}
    assert {"expiry_window", "chain_trusted", "eku_fits_use", "covers_identifiers"} <= checks
    assert nodes["raw/customers"]["dependencyKeys"] == [{"path": ["certificates", "etl-client"]}]
    assert nodes["loaded/customers"]["dependencyKeys"] == [{"path": ["hashed", "customers"]}]
    assert nodes["certificates/db-server"]["groupName"] == "certificates"


@pytest.mark.browser
def test_the_asset_graph_and_a_certificates_checks_in_a_real_browser(tmp_path, write_config):
    chromium = require_binary("chromium", "chromium")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    # Real history: certificates issued, a partition loaded, then db-server checked
    # against a policy that wants 60 days left, so its expiry_window check fails.
    home = _home(tmp_path)
    config = write_config()
    strict = copy.deepcopy(yaml.safe_load(config.read_text()))
    strict["certificates"]["db-server"]["renewal"] = {"min_days_left": 60}
    platform = load_config(config)
    cert_checks = len(certificate_check_names(platform, "db-server"))
    assert cert_checks == len(certificate_check_names(platform, "etl-client"))
    with DagsterInstance.from_config(str(home)) as instance:
        defs = build_definitions(platform)
        defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
        defs.resolve_job_def("customers_etl").execute_in_process(
            partition_key="2026-03-01-10:00", instance=instance
        )
        build_definitions(load_config(write_config(strict, "strict.yaml"))).resolve_job_def(
            CHECKS_JOB
        ).execute_in_process(instance=instance, raise_on_error=False)
        defs.resolve_job_def(HEALTH_JOB).execute_in_process(instance=instance)

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with _webserver(home, config) as url, sync_playwright() as playwright:
        nodes = _asset_nodes(url)
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})

            # The lineage of loaded/customers: the certificate it needs, and check counts.
            page.goto(
                f"{url}/assets/loaded/customers?view=lineage&lineageScope=upstream&lineageDepth=5"
            )
            skip = page.get_by_role("button", name="Skip")  # the first-visit newsletter dialog
            with contextlib.suppress(Exception):
                skip.click(timeout=10_000)
            # Each node loads its own status: wait for both before reading the page.
            page.get_by_text("5 / 5 Passed").wait_for(timeout=60_000)
            every_cert_check = f"{cert_checks} / {cert_checks} Passed"
            page.get_by_text(every_cert_check).wait_for(timeout=60_000)
            body = page.inner_text("body")
            assert "etl-client" in body and "certificates" in body
            assert "5 / 5 Passed" in body  # loaded/customers: every data check
            assert every_cert_check in body  # etl-client: every certificate check
            graph = SCREENSHOTS / "asset-graph.png"
            page.screenshot(path=str(graph))

            # db-server's checks tab: expiry_window failed, the rest succeeded.
            page.goto(f"{url}/assets/certificates/db-server?view=checks")
            page.get_by_text(f"Checks ({cert_checks})").wait_for(timeout=60_000)
            page.get_by_text("Failed").first.wait_for(timeout=60_000)
            page.get_by_text("Succeeded").nth(cert_checks - 2).wait_for(timeout=60_000)
            rows = page.inner_text("body")
            for check in ("chain_trusted", "covers_identifiers", "eku_fits_use", "key_strength"):
                assert check in rows
            assert rows.count("Failed") >= 1 and rows.count("Succeeded") >= cert_checks - 1
            page.get_by_text("expiry_window").first.click()
            page.get_by_text("renewal is due below 60.0 days").first.wait_for(timeout=30_000)
            checks_shot = SCREENSHOTS / "certificate-checks.png"
            page.screenshot(path=str(checks_shot))

            # The health report, rendered from its Markdown metadata.
            page.goto(f"{url}/assets/operations/health_report")
            # The page refreshes itself and can close the dialog: open it until it shows.
            for attempt in range(3):
                page.get_by_text("[Show Markdown]").first.click(timeout=60_000)
                try:
                    page.get_by_text("audit chain: verifies").wait_for(timeout=10_000)
                    break
                except PlaywrightTimeout:
                    if attempt == 2:
                        raise
            report = page.get_by_role("dialog").inner_text()
            assert "Data quality" in report and "Certificates" in report
            assert "customers" in report and "SUCCESS" in report and "db-server" in report
            report_shot = SCREENSHOTS / "health-report.png"
            page.wait_for_timeout(1000)  # the dialog fades in
            page.screenshot(path=str(report_shot))
        finally:
            browser.close()
    print(f"screenshots: {graph} {checks_shot} {report_shot}")
    assert all(p.stat().st_size > 10_000 for p in (graph, checks_shot, report_shot))

    # The same truth through GraphQL.
    statuses = {
        c["name"]: c["executionForLatestMaterialization"]["status"]
        for c in nodes["certificates/db-server"]["assetChecksOrError"]["checks"]
    }
    assert statuses["expiry_window"] == "FAILED"
    assert {s for name, s in statuses.items() if name != "expiry_window"} == {"SUCCEEDED"}
    loaded = nodes["loaded/customers"]["assetChecksOrError"]["checks"]
    assert {c["executionForLatestMaterialization"]["status"] for c in loaded} == {"SUCCEEDED"}
