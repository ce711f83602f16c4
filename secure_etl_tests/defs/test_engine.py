"""The executor is chosen in the platform config: Dagster's multiprocess one by default,
Celery workers with ``executor: {type: celery}``; the certificate checks job always runs in
the run's process, and loads into one database share one concurrency pool."""

from __future__ import annotations

import copy

import pytest
import yaml

from secure_etl.config import ConfigError, load_config
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import CHECKS_JOB, RENEWAL_JOB
from secure_etl.defs.names import stage_key
from secure_etl.pki.renewal import ensure_certificate


def _defs(write_config, **platform):
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data.update(platform)
    return build_definitions(load_config(write_config(data, "engine.yaml")))


def test_pipelines_take_the_multiprocess_executor_by_default(write_config):
    defs = _defs(write_config)
    assert defs.resolve_job_def("customers_etl").executor_def.name == "multiprocess"
    assert defs.resolve_job_def(CHECKS_JOB).executor_def.name == "in_process"
    # A renewal is one certificate and its checks: no step subprocess loading the code
    # location again (seconds a certificate of minutes cannot spare).
    assert defs.resolve_job_def(RENEWAL_JOB).executor_def.name == "in_process"


def test_celery_runs_the_pipeline_steps_and_acknowledges_them_when_they_end(
    write_config, monkeypatch
):
    defs = _defs(write_config, executor={"type": "celery", "redeliver_after_s": 600})
    job = defs.resolve_job_def("customers_etl")
    assert job.executor_def.name == "celery"
    # The broker's URL is read from the environment when a run starts, never written in
    # the config.
    monkeypatch.setenv("SECURE_ETL_CELERY_BROKER", "pyamqp://etl:secret@broker//")
    monkeypatch.setenv("SECURE_ETL_CELERY_BACKEND", "rpc://")
    resolved = job.executor_def.config_schema.resolve_config({})
    assert resolved.success, resolved.errors
    config = resolved.value["config"]
    assert config["broker"] == "pyamqp://etl:secret@broker//"
    source = config["config_source"]
    assert source["task_acks_late"] and source["task_reject_on_worker_lost"]
    assert source["broker_transport_options"] == {"visibility_timeout": 600}
    # Renewals too run on the workers (the store is shared); the checks job, one step over
    # every certificate, stays in the run's process.
    assert defs.resolve_job_def(RENEWAL_JOB).executor_def.name == "celery"
    assert defs.resolve_job_def(CHECKS_JOB).executor_def.name == "in_process"


def test_in_process_runs_every_pipeline_step_in_the_runs_process(write_config, monkeypatch):
    monkeypatch.delenv("SECURE_ETL_STATE_DIR", raising=False)
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["executor"] = {"type": "in_process"}
    platform = load_config(write_config(data, "in_process.yaml"))
    ensure_certificate(platform, "etl-client")
    defs = build_definitions(platform)
    assert defs.resolve_job_def("customers_etl").executor_def.name == "in_process"
    result = defs.resolve_job_def("customers_etl").execute_in_process(
        partition_key="2026-01-01-00:00", raise_on_error=False
    )
    assert result.success
    steps = {e.step_key for e in result.all_events if e.is_step_success}
    assert {"raw__customers", "hashed__customers", "loaded__customers"} <= steps


def test_an_unknown_executor_is_named(write_config):
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["executor"] = {"type": "dask"}
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(data, "dask.yaml"))
    assert caught.value.key.startswith("executor")
    assert "celery" in caught.value.message and "multiprocess" in caught.value.message
    assert "in_process" in caught.value.message


def test_loads_into_one_database_share_a_pool(write_config):
    defs = _defs(write_config)
    loaded = defs.resolve_assets_def(stage_key("loaded", "customers"))
    raw = defs.resolve_assets_def(stage_key("raw", "customers"))
    assert loaded.node_def.pool == "load/duckdb/warehouse.duckdb"
    assert raw.node_def.pool is None  # extraction is not limited
