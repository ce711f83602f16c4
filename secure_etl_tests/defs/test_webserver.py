"""The real web server loads the code location from workspace.yaml and serves the graph;
Debian's chromium, driven by Playwright, shows the lineage and the checks' statuses, and
executes a certificate check from its checks tab.

The demo test takes the README's screenshots from the bundled demo's own state:
``SECURE_ETL_SCREENSHOTS=docs`` (a directory, relative to the repository root) writes them
into ``docs/`` (``make screenshots``); otherwise they go to the test output directory."""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance

from secure_etl.config import default_config_path, load_config
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import (
    CHECKS_JOB,
    RENEWAL_JOB,
    certificate_check_keys,
    certificate_check_names,
    certificate_key,
)
from secure_etl.defs.check_state import latest_check_evaluations
from secure_etl_tests.servers import free_port, require_binary

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
QUERY = """{ assetNodes { assetKey { path } groupName dependencyKeys { path }
  assetChecksOrError { ... on AssetChecks { checks { name
    executionForLatestMaterialization { status } } } } } }"""
RUNS = """{ runsOrError { ... on Runs { results { runId jobName status } } } }"""
FINISHED = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
# No daemon here (`dagster dev` runs one): a launched run starts at once instead of queueing.
RUN_NOW = """
run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
"""
# Where the browser tests leave their screenshots (CI keeps the directory with the logs).
SCREENSHOTS = Path(os.environ.get("SECURE_ETL_TEST_OUTPUT", REPO / ".test-output"))
# The README's screenshots (docs/*.png) are the demo test's, written where this names.
README_SHOTS = "SECURE_ETL_SCREENSHOTS"
NEWSLETTER_SKIPPED = "window.localStorage.setItem('communityNux', JSON.stringify('1'))"


@contextlib.contextmanager
def _webserver(home: Path, config: Path, env: dict[str, str] | None = None):
    port = free_port()
    env = dict(os.environ, DAGSTER_HOME=str(home), SECURE_ETL_CONFIG=str(config), **(env or {}))
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


def _home(tmp_path: Path, run_now: bool = False) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    if run_now:
        with (home / "dagster.yaml").open("a") as f:
            f.write(RUN_NOW)
    return home


def _graphql(url: str, query: str, **variables) -> dict:
    reply = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=60)
    data = reply.json()
    assert "errors" not in data, data
    return data["data"]


def _asset_nodes(url: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the code location loads in the background
        nodes = {"/".join(n["assetKey"]["path"]): n for n in _graphql(url, QUERY)["assetNodes"]}
        if nodes:
            return nodes
        time.sleep(1)
    raise AssertionError("the web server served no asset nodes within 120 s")


def _run_ids(url: str) -> set[str]:
    return {r["runId"] for r in _graphql(url, RUNS)["runsOrError"]["results"]}


def _new_runs_finished(url: str, before: set[str], timeout: float = 300) -> list[dict]:
    """The runs launched since ``before`` was taken, once there is one and all have ended."""
    deadline = time.monotonic() + timeout
    new: list[dict] = []
    while time.monotonic() < deadline:
        runs = _graphql(url, RUNS)["runsOrError"]["results"]
        new = [r for r in runs if r["runId"] not in before]
        if new and all(r["status"] in FINISHED for r in new):
            return new
        time.sleep(1)
    raise AssertionError(f"no launched run finished within {timeout} s: {new}")


@contextlib.contextmanager
def _browser_page():
    """A chromium page (Debian's binary) in UTC, so timestamps read the same everywhere."""
    chromium = require_binary("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(
                viewport={"width": 1600, "height": 1000}, timezone_id="UTC", locale="en-US"
            )
            # The first-visit "Join the Dagster community" dialog covers the page (and the
            # screenshots). The UI remembers a "Skip" in localStorage: set it before any
            # page loads, and should that key change, press "Skip" whenever it shows.
            page.add_init_script(NEWSLETTER_SKIPPED)
            newsletter = page.get_by_role("dialog").filter(has_text="Join the Dagster community")
            page.add_locator_handler(
                newsletter, lambda dialog: dialog.get_by_role("button", name="Skip").click()
            )
            yield page
        finally:
            browser.close()


def _readme_shots() -> Path:
    chosen = os.environ.get(README_SHOTS)
    target = REPO / chosen if chosen else SCREENSHOTS
    target.mkdir(parents=True, exist_ok=True)
    return target


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
def test_a_failed_certificate_check_and_its_reason_in_a_real_browser(tmp_path, write_config):
    # Certificates issued, then db-server checked against a policy that wants 60 days
    # left, so its expiry_window check fails.
    home = _home(tmp_path)
    config = write_config()
    strict = copy.deepcopy(yaml.safe_load(config.read_text()))
    strict["certificates"]["db-server"]["renewal"] = {"min_days_left": 60}
    platform = load_config(config)
    cert_checks = len(certificate_check_names(platform, "db-server"))
    with DagsterInstance.from_config(str(home)) as instance:
        build_definitions(platform).resolve_job_def(RENEWAL_JOB).execute_in_process(
            instance=instance
        )
        build_definitions(load_config(write_config(strict, "strict.yaml"))).resolve_job_def(
            CHECKS_JOB
        ).execute_in_process(instance=instance, raise_on_error=False)

    shot = SCREENSHOTS / "failed-certificate-check.png"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with _webserver(home, config) as url, _browser_page() as page:
        nodes = _asset_nodes(url)
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
        page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000

    # The same truth through GraphQL.
    statuses = {
        c["name"]: c["executionForLatestMaterialization"]["status"]
        for c in nodes["certificates/db-server"]["assetChecksOrError"]["checks"]
    }
    assert statuses["expiry_window"] == "FAILED"
    assert {s for name, s in statuses.items() if name != "expiry_window"} == {"SUCCEEDED"}


@pytest.mark.browser
def test_the_demo_in_a_real_browser_executes_a_check_from_its_tab(tmp_path):
    """`secure-etl demo` into a temporary state, then its UI: the lineage, a click on
    "Execute" for one certificate check, and the health report (the README's screenshots)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    require_binary("chromium", "chromium")  # before the demo's minute, not after
    demo_config = default_config_path()
    platform = load_config(demo_config)
    pipeline = next(n for n, p in platform.pipelines.items() if p.client_certificate)
    cert = platform.pipelines[pipeline].client_certificate
    cert_checks = len(certificate_check_names(platform, cert))
    home = _home(tmp_path, run_now=True)
    state = {"SECURE_ETL_STATE_DIR": str(tmp_path / "state")}
    env = dict(os.environ, DAGSTER_HOME=str(home), **state)
    env.pop("SECURE_ETL_CONFIG", None)  # the bundled demo, as `make demo` runs it
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    demo = subprocess.run(
        [sys.executable, "-m", "secure_etl.cli", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
    with DagsterInstance.from_config(str(home)) as instance:
        issued = instance.get_latest_materialization_event(certificate_key(cert))
    assert issued is not None

    shots = _readme_shots()
    graph, checks_shot, report_shot = (
        shots / name for name in ("asset-graph.png", "certificate-checks.png", "health-report.png")
    )
    with _webserver(home, demo_config, state) as url, _browser_page() as page:
        nodes = _asset_nodes(url)
        data_checks = len(nodes[f"loaded/{pipeline}"]["assetChecksOrError"]["checks"])
        assert data_checks >= 5, nodes[f"loaded/{pipeline}"]

        # The lineage of the loaded table: the client certificate it needs, and check counts.
        page.goto(
            f"{url}/assets/loaded/{pipeline}?view=lineage&lineageScope=upstream&lineageDepth=5"
        )
        # Each node loads its own status: wait for both before reading the page.
        every_data_check = f"{data_checks} / {data_checks} Passed"
        every_cert_check = f"{cert_checks} / {cert_checks} Passed"
        page.get_by_text(every_data_check).first.wait_for(timeout=60_000)
        page.get_by_text(every_cert_check).first.wait_for(timeout=60_000)
        body = page.inner_text("body")
        assert cert in body and "certificates" in body and pipeline in body
        page.screenshot(path=str(graph))

        # The certificate's checks tab: "Execute" on expiry_window, a real click.
        page.goto(f"{url}/assets/certificates/{cert}?view=checks&checkDetail=expiry_window")
        page.get_by_text(f"Checks ({cert_checks})").wait_for(timeout=60_000)
        execute = page.get_by_role("button").filter(has_text=re.compile(r"^\s*Execute\s*$"))
        expect(execute).to_have_count(1, timeout=60_000)
        expect(execute).to_be_enabled(timeout=60_000)
        before = _run_ids(url)
        execute.click()
        (run,) = _new_runs_finished(url, before)
        assert run["status"] == "SUCCESS" and run["jobName"] == "__ASSET_JOB", run

        # Its execution history: the demo's evaluation and the new one, both of the same
        # materialization (nothing was renewed). The page may hold a stale query: reload.
        page.reload()
        page.get_by_text("Execution history").click()
        history = page.locator("tr").filter(has_text="Passed")
        expect(history).to_have_count(2, timeout=60_000)
        targets = {history.nth(i).locator("td").nth(2).inner_text() for i in range(2)}
        assert len(targets) == 1, targets
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
        assert pipeline in report and "SUCCESS" in report
        assert all(name in report for name in platform.certificates)
        page.wait_for_timeout(1000)  # the dialog fades in
        page.screenshot(path=str(report_shot))
    print(f"screenshots: {graph} {checks_shot} {report_shot}")
    assert all(p.stat().st_size > 10_000 for p in (graph, checks_shot, report_shot))

    # GraphQL: every check of the demo passed.
    statuses = {
        c["executionForLatestMaterialization"]["status"]
        for key in (f"certificates/{cert}", f"loaded/{pipeline}")
        for c in nodes[key]["assetChecksOrError"]["checks"]
    }
    assert statuses == {"SUCCEEDED"}
    # The instance: the click's run evaluated that one check and materialized nothing.
    with DagsterInstance.from_config(str(home)) as instance:
        latest = latest_check_evaluations(instance, certificate_check_keys(platform, cert))
        fresh = {k.name: e for k, e in latest.items() if e.run_id == run["runId"]}
        assert set(fresh) == {"expiry_window"} and fresh["expiry_window"].passed
        materialized = instance.all_logs(
            run["runId"], of_type=DagsterEventType.ASSET_MATERIALIZATION
        )
        assert materialized == []
        latest_cert = instance.get_latest_materialization_event(certificate_key(cert))
        assert latest_cert is not None and latest_cert.run_id == issued.run_id
