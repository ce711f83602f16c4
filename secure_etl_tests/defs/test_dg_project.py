"""The repository is a `dg` project too: `dg check defs` and `dg list defs` load the same
code location as `dagster dev`, offline, with this environment's Python."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _dg(args: list[str], tmp_path: Path, config: Path) -> subprocess.CompletedProcess:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = dict(os.environ, DAGSTER_HOME=str(home), SECURE_ETL_CONFIG=str(config), COLUMNS="200")
    return subprocess.run(
        [str(Path(sys.executable).with_name("dg")), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dg_check_defs_and_list_defs_load_the_code_location(tmp_path, write_config):
    config = write_config()
    checked = _dg(["check", "defs"], tmp_path, config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All definitions loaded successfully." in checked.stdout

    listed = _dg(["list", "defs", "--json"], tmp_path, config)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    defs = json.loads(listed.stdout)
    assets = {a["asset_key"] for a in defs["assets"]}
    assert {"certificates/etl-client", "loaded/customers"} <= assets
    checks = {c["key"] for c in defs["asset_checks"]}
    assert "certificates/etl-client:expiry_window" in checks
    # No endpoints configured for etl-client: nothing for served_by_endpoint to judge.
    assert "certificates/etl-client:served_by_endpoint" not in checks
    jobs = {j["name"] for j in defs["jobs"]}
    assert {"certificate_checks", "certificate_renewal", "customers_etl"} <= jobs


def test_dg_list_defs_prints_the_table_too(tmp_path, write_config):
    listed = _dg(["list", "defs"], tmp_path, write_config())
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "certificates/etl-client" in listed.stdout
    assert "loaded/customers" in listed.stdout
