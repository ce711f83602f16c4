"""The real web server loads the code location from workspace.yaml and serves the graph."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
QUERY = """{ assetNodes { assetKey { path } groupName dependencyKeys { path }
  assetChecksOrError { ... on AssetChecks { checks { name } } } } }"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def webserver(tmp_path, write_config):
    port = _free_port()
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = dict(os.environ, DAGSTER_HOME=str(home), SECURE_ETL_CONFIG=str(write_config()))
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


def test_the_ui_serves_certificates_with_checks_joined_to_the_pipeline(webserver):
    nodes = None
    for _ in range(60):  # the code location loads in the background
        data = httpx.post(f"{webserver}/graphql", json={"query": QUERY}, timeout=30).json()
        nodes = {"/".join(n["assetKey"]["path"]): n for n in data["data"]["assetNodes"]}
        if nodes:
            break
        time.sleep(1)

    assert set(nodes) == {
        "certificates/db-server",
        "certificates/etl-client",
        "raw/customers",
        "hashed/customers",
        "loaded/customers",
    }
    checks = {c["name"] for c in nodes["certificates/etl-client"]["assetChecksOrError"]["checks"]}
    assert {"expiry_window", "chain_trusted", "eku_fits_use", "covers_identifiers"} <= checks
    assert nodes["raw/customers"]["dependencyKeys"] == [{"path": ["certificates", "etl-client"]}]
    assert nodes["loaded/customers"]["dependencyKeys"] == [{"path": ["hashed", "customers"]}]
    assert nodes["certificates/db-server"]["groupName"] == "certificates"
