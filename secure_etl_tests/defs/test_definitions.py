"""The code location loads, every job resolves, and lineage joins certificates to data."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

from dagster import AssetCheckKey, AssetKey

from secure_etl.config import default_config_path, load_config
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import ALL_CHECKS, ENDPOINT_CHECK
from secure_etl_tests.conftest import BASE_CONFIG


def test_every_job_resolves_on_the_bundled_demo_config():
    defs = build_definitions(load_config(default_config_path()))
    names = {job.name for job in defs.resolve_all_job_defs()}
    assert {"certificate_checks", "certificate_renewal", "customers_etl"} <= names
    assert defs.resolve_sensor_def("certificate_renewal")
    assert defs.resolve_schedule_def("certificate_checks_schedule")
    assert defs.resolve_schedule_def("customers_etl_schedule")


def test_certificates_have_every_inspection_check_and_feed_the_pipeline(platform):
    defs = build_definitions(platform)
    graph = defs.resolve_asset_graph()
    for name in platform.certificates:
        key = AssetKey(["certificates", name])
        assert graph.get(key).group_name == "certificates"
        for check in ALL_CHECKS:
            # No endpoints configured: served_by_endpoint would have nothing to judge.
            has = check != ENDPOINT_CHECK or bool(platform.certificates[name].endpoints)
            assert (AssetCheckKey(key, check) in graph.asset_check_keys) is has, check

    assert graph.get(AssetKey(["raw", "customers"])).parent_keys == {
        AssetKey(["certificates", "etl-client"])
    }
    assert graph.get(AssetKey(["hashed", "customers"])).parent_keys == {
        AssetKey(["raw", "customers"])
    }
    assert graph.get(AssetKey(["loaded", "customers"])).parent_keys == {
        AssetKey(["hashed", "customers"])
    }
    for stage in ("raw", "hashed", "loaded"):
        assert graph.get(AssetKey([stage, "customers"])).group_name == "customers"


def test_extract_and_load_retry_three_times_five_minutes_apart(write_config):
    data = copy.deepcopy(BASE_CONFIG)
    del data["pipelines"]["customers"]["retry"]  # the defaults, not the tests' short ones
    defs = build_definitions(load_config(write_config(data)))
    for stage in ("raw", "loaded"):
        policy = defs.resolve_assets_def(AssetKey([stage, "customers"])).op.retry_policy
        assert (policy.max_retries, policy.delay) == (3, 300)
        assert policy.backoff is not None


def test_the_code_location_module_loads_the_config_named_by_the_environment(write_config):
    env = dict(os.environ, SECURE_ETL_CONFIG=str(write_config()))
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from secure_etl.definitions import defs;"
            "keys = defs.resolve_asset_graph().get_all_asset_keys();"
            "print(sorted(k.to_user_string() for k in keys))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "certificates/db-server" in out
    assert "loaded/customers" in out


def test_only_the_dagster_layer_imports_dagster():
    # Every module outside defs/ and definitions.py, new ones included.
    code = (
        "import importlib, pkgutil, sys, secure_etl\n"
        "for m in pkgutil.walk_packages(secure_etl.__path__, 'secure_etl.'):\n"
        "    if not m.name.startswith(('secure_etl.defs', 'secure_etl.definitions')):\n"
        "        importlib.import_module(m.name)\n"
        "print('dagster' in sys.modules, 'secure_etl.monitor.health' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False True"


def test_the_config_examples_load_and_build(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("SECURE_ETL_STATE_DIR", str(tmp_path))
    examples = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
    assert examples
    for example in examples:
        config = load_config(example)
        defs = build_definitions(config)
        for name in config.pipelines:
            assert defs.resolve_job_def(f"{name}_etl")
