"""What each command loads: start-up time is mostly imports, so the heavy ones are pinned
here (benchmarks/cli_startup.py and benchmarks/acme_issue.py give the seconds)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from secure_etl_tests.conftest import BASE_CONFIG

PROBE = """
import json, sys
from secure_etl.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""

# Top-level packages none of the certificate, audit and key commands may load.
HEAVY = {"dagster", "pandas", "pyarrow", "numpy", "duckdb", "httpx", "dns", "boto3", "google"}
HEAVY |= {"psycopg"}  # only for a postgres audit log or certificate store


def _loaded(command: list[str], env: dict, stdin: str = "") -> tuple[int, set[str]]:
    """Run ``secure-etl command`` in a fresh interpreter: its exit code and the modules
    it had loaded when it returned."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *command],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert "Traceback" not in result.stderr, result.stderr
    outcome = json.loads(result.stdout.splitlines()[-1])
    return outcome["code"], set(outcome["modules"])


def _top(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.fixture
def platform_env(tmp_path) -> dict:
    """An internal-CA platform (no pipelines) with its state under ``tmp_path``."""
    data = {k: v for k, v in BASE_CONFIG.items() if k != "pipelines"}
    data["state_dir"] = str(tmp_path / "state")
    config = tmp_path / "platform.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return {**os.environ, "SECURE_ETL_CONFIG": str(config)}


@pytest.mark.parametrize(
    "command",
    [
        ["certs", "list"],
        ["audit", "verify"],
        ["keys", "pseudonym", "pseudo-1"],
        ["keys", "decrypt", "pseudo-1", "--column", "phone"],
        ["policy", "check"],
    ],
    ids=" ".join,
)
def test_certificate_audit_and_key_commands_load_no_dagster_pandas_arrow_or_network_client(
    command, platform_env
):
    # Issued first, so `certs list` inspects real certificates (and renewal's modules load).
    code, _ = _loaded(["certs", "renew", "--all"], platform_env)
    assert code == 0
    code, modules = _loaded(command, platform_env, stdin="alice\n")
    # Ran: audit verify fails (no pinned key) and decrypt refuses a value that is not one.
    assert code in (0, 1)
    heavy = sorted(_top(modules) & HEAVY)
    assert heavy == [], f"{' '.join(command)} imported {heavy}"
    # The renewal machinery for an internal CA leaves the ACME issuer and deploy unloaded.
    assert not modules & {"secure_etl.pki.acme_issuer", "secure_etl.pki.deploy"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_acme_issue_builds_its_solver_without_pydantic_the_platform_config_or_dnspython(
    tmp_path,
):
    # Nothing listens on the directory's port: the command fails at its first request,
    # after the solver (http-01, our own listener) was built through the one factory.
    port = _free_port()
    command = ["acme", "issue", "-d", "a.example.com"]
    command += ["--directory", f"https://127.0.0.1:{_free_port()}/dir"]
    command += ["--http-01-address", "127.0.0.1", "--http-01-port", str(port)]
    command += ["--account-key", str(tmp_path / "account.key"), "--out", str(tmp_path / "out")]
    code, modules = _loaded(command, {**os.environ})
    assert code == 1  # refused: the CA could not be reached
    assert {"secure_etl.pki.solvers", "secure_etl.challenge_config"} <= modules
    assert not modules & {"secure_etl.config", "secure_etl.pki.acme_issuer"}
    assert not _top(modules) & {"pydantic", "dns", "boto3", "dagster", "pandas", "pyarrow"}


# ``secure-etl`` itself: main() reads the process's own command line.
AS_THE_COMMAND = """
import json, sys
from secure_etl.cli import main
sys.argv = ["secure-etl", *sys.argv[1:]]
code = main()
loaded = sorted(name for name, module in sys.modules.items() if module is not None)
print(json.dumps({"code": code, "modules": loaded}))
"""
HTTPX_COMMAND_LINE = {"click", "rich", "pygments"}


def _unreachable_acme_issue(tmp_path) -> list[str]:
    command = ["acme", "issue", "-d", "a.example.com"]
    command += ["--directory", f"https://127.0.0.1:{_free_port()}/dir"]
    command += ["--http-01-address", "127.0.0.1", "--http-01-port", str(_free_port())]
    return command + ["--account-key", str(tmp_path / "k"), "--out", str(tmp_path / "out")]


def test_acme_issue_as_the_command_uses_httpx_without_loading_httpxs_own_command_line(
    tmp_path,
):
    pytest.importorskip("httpx._main")  # its dependencies are installed (Dagster's)
    result = subprocess.run(
        [sys.executable, "-c", AS_THE_COMMAND, *_unreachable_acme_issue(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    outcome = json.loads(result.stdout.splitlines()[-1])
    # httpx ran: the refusal is its connection error, reported in one line.
    assert outcome["code"] == 1
    assert "ConnectError" in result.stderr and "Traceback" not in result.stderr
    modules = set(outcome["modules"])
    assert {"httpx._client", "httpcore"} <= modules
    assert "httpx._main" not in modules
    assert not _top(modules) & HTTPX_COMMAND_LINE


def test_main_called_with_argv_leaves_httpx_as_installed(tmp_path):
    pytest.importorskip("httpx._main")
    # A program that calls main(argv) is not the secure-etl process: httpx is untouched.
    code, modules = _loaded(_unreachable_acme_issue(tmp_path), {**os.environ})
    assert code == 1
    assert "httpx._main" in modules and HTTPX_COMMAND_LINE <= _top(modules)


def test_status_loads_the_health_collector_without_the_pipelines_or_their_resources(
    tmp_path,
):
    # With a pipeline (demo source, DuckDB destination), whose connections it counts.
    data = {**BASE_CONFIG, "state_dir": str(tmp_path / "state")}
    config = tmp_path / "platform.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**os.environ, "SECURE_ETL_CONFIG": str(config)}
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    (tmp_path / "dagster_home").mkdir()
    code, modules = _loaded(["status"], env)
    assert code in (0, 1)  # a report: 1 when something needs attention
    assert "secure_etl.defs.health" in modules
    # The asset names come from defs/names.py, not from the definitions that make them.
    assert not modules & {"secure_etl.defs.pipelines", "secure_etl.defs.certificates"}
    assert not modules & {"secure_etl.defs.resources", "secure_etl.pki.acme_issuer"}
    assert not _top(modules) & {"google", "dagster_gcp", "dns", "boto3"}
    # Whether each connection verifies its peer is read from the config, not from the
    # connector classes (pandas, pyarrow and the drivers stay unloaded).
    assert not modules & {"secure_etl.etl.connector"}
    assert not _top(modules) & {"pandas", "pyarrow", "duckdb", "psycopg", "httpx"}


def test_the_code_location_loads_dagster_gcp_only_for_a_bigquery_pipeline(tmp_path):
    """Every run worker and code server imports the definitions: dagster-gcp with the
    BigQuery client (about a second) only when some pipeline loads into BigQuery."""
    probe = "import json, sys, secure_etl.definitions; print(json.dumps(sorted(sys.modules)))"

    def modules_with(destination: dict | None) -> set[str]:
        data = {**BASE_CONFIG, "state_dir": str(tmp_path / "state")}
        if destination:
            [(name, pipeline)] = BASE_CONFIG["pipelines"].items()
            data["pipelines"] = {name: {**pipeline, "destination": destination}}
        config = tmp_path / "platform.yaml"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        env = {**os.environ, "SECURE_ETL_CONFIG": str(config)}
        result = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300
        )
        assert result.returncode == 0, result.stderr
        return _top(set(json.loads(result.stdout.splitlines()[-1])))

    assert "dagster" in modules_with(None)
    assert not modules_with(None) & {"dagster_gcp", "google"}
    bigquery = {"type": "bigquery", "project": "my-project", "dataset": "d", "table": "t"}
    assert {"dagster_gcp", "google"} <= modules_with(bigquery)
