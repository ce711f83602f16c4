"""The code location loads, every job resolves, and lineage joins certificates to data."""

from __future__ import annotations

import ast
import copy
import os
import subprocess
import sys
from pathlib import Path

from dagster import AssetCheckKey, AssetKey

from secure_etl.config import default_config_path, load_config
from secure_etl.defs.build import build_definitions
from secure_etl.defs.names import ALL_CHECKS, ENDPOINT_CHECK, KIND_TAG
from secure_etl.etl.check_names import LOADED_CHECKS
from secure_etl_tests.conftest import BASE_CONFIG


def test_every_job_resolves_on_the_bundled_demo_config():
    defs = build_definitions(load_config(default_config_path()))
    names = {job.name for job in defs.resolve_all_job_defs()}
    assert {"certificate_checks", "certificate_renewal", "customers_etl"} <= names
    assert defs.resolve_sensor_def("certificate_renewal")
    assert defs.resolve_schedule_def("certificate_checks_schedule")
    assert defs.resolve_schedule_def("customers_etl_schedule")


def test_every_job_says_what_kind_of_work_its_runs_are_for_the_queue_limits():
    defs = build_definitions(load_config(default_config_path()))
    kinds = {
        job.name: job.tags.get(KIND_TAG)
        for job in defs.resolve_all_job_defs()
        if not job.name.startswith("__")  # Dagster's implicit asset job
    }
    assert kinds["certificate_checks"] == "checks"
    assert kinds["certificate_renewal"] == "renewal"
    assert kinds["customers_etl"] == "pipeline"
    assert kinds["retention"] == kinds["health_report"] == "maintenance"
    assert None not in kinds.values(), kinds


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


# The layer picture of ARCHITECTURE.md as a table: what each part of secure_etl may
# import of secure_etl (besides itself). Imports point down; a new top-level module
# gets its line here. Leaves import nothing of ours.
_LEAVES = {"errors", "identifiers", "filter_grammar", "cron", "demo", "challenge_config", "policy"}
LAYERS = {
    **{leaf: set() for leaf in _LEAVES},
    "acme": set(),  # the RFC 8555 client stands alone
    "config": _LEAVES,
    "security": {"config", *_LEAVES},
    "pki": {"acme", "security", "config", *_LEAVES},
    "etl": {"acme", "security", "config", *_LEAVES},
    "monitor": {"etl", "pki", "acme", "security", "config", *_LEAVES},
    "cli": {"defs", "monitor", "etl", "pki", "acme", "security", "config", *_LEAVES},
    "defs": {"monitor", "etl", "pki", "acme", "security", "config", *_LEAVES},
    "definitions": {"defs", "config", *_LEAVES},
}
DAGSTER_LAYERS = {"defs", "definitions"}
PACKAGE = Path(__file__).parents[2] / "secure_etl"


def _layer(module: str) -> str:
    """``secure_etl.etl.sources.demo`` -> ``etl``; ``secure_etl.cli_certs`` -> ``cli``."""
    part = module.split(".")[1] if "." in module else "__init__"
    return "cli" if part.startswith("cli") else part


def _imports(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (names from
    ``from secure_etl import x`` count as the module ``secure_etl.x``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.update(f"{base}.{alias.name}" for alias in node.names)
            found.add(base)
    return found


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((module, path))
    return out


def test_imports_point_down_the_layers():
    # Every module of the package, new ones included, read as source (lazy imports too).
    wrong = []
    for module, path in _modules():
        layer = _layer(module)
        if layer == "__init__":
            continue
        assert layer in LAYERS, f"{module}: a new layer; give it a line in LAYERS"
        for target in _imports(path, module):
            top = target.split(".")[0]
            if top == "secure_etl" and "." in target:
                used = _layer(target)
                if used in LAYERS and used != layer and used not in LAYERS[layer]:
                    wrong.append(f"{module} imports {target} ({layer} may not use {used})")
            elif (top == "dagster" or top.startswith("dagster_")) and layer not in DAGSTER_LAYERS:
                wrong.append(f"{module} imports {target} (only defs/ imports dagster)")
    assert not wrong, "\n".join(wrong)


def test_no_two_modules_import_each_other():
    # e.g. security/kms.py and security/vault_transit.py: the shared part is a leaf.
    modules = dict(_modules())
    uses = {}
    for module, path in modules.items():
        uses[module] = set()
        for target in _imports(path, module):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != module and not module.startswith(target + "."):
                uses[module].add(target)
    mutual = sorted(f"{a} <-> {b}" for a in uses for b in uses[a] if a < b and a in uses[b])
    assert not mutual, mutual


def test_the_layer_test_sees_an_upward_import(tmp_path):
    # The reader finds lazy and package-relative imports (what the test above relies on).
    path = tmp_path / "deploy.py"
    path.write_text("def f():\n    from secure_etl.etl import registry\n    from ..etl import x\n")
    found = _imports(path, "secure_etl.pki.deploy")
    assert {"secure_etl.etl.registry", "secure_etl.etl.x"} <= found
    assert _layer("secure_etl.etl.registry") not in LAYERS["pki"]


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


def _described(defs, stage: str) -> tuple:
    key = AssetKey([stage, "customers"])
    spec = next(s for s in defs.resolve_assets_def(key).specs if s.key == key)
    checks = {k for k in defs.resolve_asset_graph().asset_check_keys if k.asset_key == key}
    return (
        spec.description,
        spec.group_name,
        spec.kinds,
        {d.asset_key for d in spec.deps},
        spec.freshness_policy,
        checks,
    )


def test_the_staged_and_the_one_pass_assets_are_the_same_assets(write_config):
    data = copy.deepcopy(BASE_CONFIG)
    staged = build_definitions(load_config(write_config(data)))
    data["pipelines"]["customers"]["one_pass"] = True
    one_pass = build_definitions(load_config(write_config(data, "one-pass.yaml")))

    for stage in ("raw", "hashed", "loaded"):
        assert _described(staged, stage) == _described(one_pass, stage), stage
    description, _, kinds, _, freshness, checks = _described(one_pass, "loaded")
    assert description.startswith("The hashed partition in duckdb table customers")
    assert kinds == {"duckdb"} and freshness is not None and len(checks) == len(LOADED_CHECKS)
