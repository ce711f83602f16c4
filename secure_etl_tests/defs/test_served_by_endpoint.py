"""Deploys are verified: a renewed PostgreSQL server certificate must be what it serves."""

from __future__ import annotations

import copy
import os

import yaml
from dagster import build_sensor_context

from secure_etl.config import load_config
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import CHECKS_JOB, RENEWAL_JOB
from secure_etl.pki.endpoints import served_leaf
from secure_etl.pki.keys import generate_private_key
from secure_etl.pki.renewal import (
    build_issuer,
    certificate_store,
    current_leaf,
    ensure_certificate,
)


def _served_platform(platform, postgres_tls, write_config):
    """db-server is served by the test PostgreSQL; deploying copies the files in and
    reloads the server through an admin connection with the etl-client certificate."""
    store = certificate_store(platform).paths("db-server")
    tls = postgres_tls.workdir / "tls"
    owner = "postgres" if os.geteuid() == 0 else str(os.getuid())
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["certificates"]["db-server"]["endpoints"] = [
        {"host": "localhost", "port": postgres_tls.port, "protocol": "postgres"}
    ]
    data["certificates"]["db-server"]["deploy"] = [
        {
            "type": "command",
            "argv": [
                "install",
                "-o",
                owner,
                "-m",
                "644",
                str(store.fullchain),
                str(tls / "server.crt"),
            ],
        },
        {
            "type": "command",
            "argv": [
                "install",
                "-o",
                owner,
                "-m",
                "600",
                str(store.privkey),
                str(tls / "server.key"),
            ],
        },
        {
            "type": "postgres_reload",
            "host": "localhost",
            "port": postgres_tls.port,
            "user": "etl-client.test",
            "client_certificate": "etl-client",
        },
    ]
    return load_config(write_config(data, "served.yaml"))


def _checks(result) -> dict[str, tuple[bool, str]]:
    return {
        e.check_name: (e.passed, e.description)
        for e in result.get_asset_check_evaluations()
        if e.asset_key.path[-1] == "db-server"
    }


def test_renewal_reloads_postgres_and_the_new_certificate_is_served(
    platform, postgres_tls, write_config, instance
):
    served = _served_platform(platform, postgres_tls, write_config)
    before = served_leaf("localhost", postgres_tls.port, "postgres").serial_number
    assert before == current_leaf(served, "db-server").serial_number

    result = ensure_certificate(served, "db-server", force=True)

    new_serial = current_leaf(served, "db-server").serial_number
    assert new_serial != before
    assert (
        result.deployed[-1] == f"postgres_reload localhost:{postgres_tls.port}: "
        f"serving serial {new_serial:x}"
    )
    assert served_leaf("localhost", postgres_tls.port, "postgres").serial_number == new_serial
    checks = _checks(
        build_definitions(served).resolve_job_def(CHECKS_JOB).execute_in_process(instance=instance)
    )
    assert checks["served_by_endpoint"][0] is True


def test_a_certificate_nobody_loaded_fails_the_check_and_the_sensor_redeploys_it(
    platform, postgres_tls, write_config, instance
):
    served = _served_platform(platform, postgres_tls, write_config)
    defs = build_definitions(served)
    old = served_leaf("localhost", postgres_tls.port, "postgres").serial_number
    # A new version becomes current without any deploy (say, renewed by hand).
    issued = build_issuer(served, "test-ca").issue(
        ["localhost", "127.0.0.1"], "server", generate_private_key("ec256")
    )
    store = certificate_store(served)
    with store.lock("db-server"):
        store.install("db-server", issued)
    new = current_leaf(served, "db-server").serial_number

    checks = _checks(defs.resolve_job_def(CHECKS_JOB).execute_in_process(instance=instance))
    passed, reason = checks["served_by_endpoint"]
    assert passed is False
    assert f"serves serial {old:x}, current is {new:x}" in reason

    sensor = defs.resolve_sensor_def("certificate_renewal")
    tick = sensor(build_sensor_context(instance=instance, definitions=defs))
    (request,) = tick.run_requests
    run = defs.resolve_job_def(RENEWAL_JOB).execute_in_process(
        instance=instance, asset_selection=request.asset_selection, tags=request.tags
    )
    (event,) = run.get_asset_materialization_events()
    assert event.materialization.metadata["outcome"].value == "redeployed"
    assert _checks(run)["served_by_endpoint"][0] is True
    assert served_leaf("localhost", postgres_tls.port, "postgres").serial_number == new
