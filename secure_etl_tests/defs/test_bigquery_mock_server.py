"""BigQuery as the destination, through dagster-gcp's BigQueryResource and the real
google-cloud-bigquery client, pointed at a local mock of the REST API (BigQuery itself
cannot run here; every test in this file says "mock" in its name)."""

from __future__ import annotations

import copy

import pytest
import yaml
from dagster import EnvVar

from secure_etl.config import ConfigError, load_config
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import RENEWAL_JOB
from secure_etl.etl import storage
from secure_etl_tests.bigquery_mock_server import FakeBigQuery

HOUR, NEXT = "2026-03-01-10:00", "2026-03-01-11:00"
TABLE = ("secure-etl-test", "analytics", "customers")


@pytest.fixture
def bigquery_mock():
    server = FakeBigQuery().start()
    yield server
    server.stop()


def _config(write_config, bigquery_mock, rows: int = 200, **destination):
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    pipeline = data["pipelines"]["customers"]
    pipeline["source"]["rows_per_partition"] = rows
    pipeline["destination"] = {
        "type": "bigquery",
        "project": TABLE[0],
        "dataset": TABLE[1],
        "table": TABLE[2],
        "api_endpoint": bigquery_mock.url,
        "anonymous": True,
        **destination,
    }
    return load_config(write_config(data, "bq.yaml"))


def _run(defs, instance, partition):
    return defs.resolve_job_def("customers_etl").execute_in_process(
        partition_key=partition, instance=instance
    )


def _definitions(config, instance):
    defs = build_definitions(config)
    defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
    return defs


def test_mock_bigquery_one_load_job_replaces_exactly_the_partition(
    write_config, bigquery_mock, instance
):
    config = _config(write_config, bigquery_mock)
    defs = _definitions(config, instance)

    first = _run(defs, instance, HOUR)
    checks = {e.check_name: (e.passed, e.description) for e in first.get_asset_check_evaluations()}
    assert all(passed for passed, _ in checks.values()), checks

    table = bigquery_mock.tables[TABLE]
    assert list(table.partitions) == ["2026030110"]
    loaded = table.partitions["2026030110"]
    hashed = storage.read_partition(
        storage.partition_file(config.resolved_state_dir(), "hashed", "customers", HOUR)
    )
    assert loaded.num_rows == len(hashed)
    assert sorted(loaded["customer_id"].to_pylist()) == sorted(hashed["customer_id"].tolist())
    assert set(loaded["_partition"].to_pylist()) == {HOUR}
    loads = [job["configuration"]["load"] for job in bigquery_mock.jobs.values()]
    assert [load["destinationTable"]["tableId"] for load in loads] == ["customers$2026030110"]
    assert loads[0]["writeDisposition"] == "WRITE_TRUNCATE"
    assert loads[0]["sourceFormat"] == "PARQUET"

    # The same hour again, then the next one: replaced, not appended.
    _run(defs, instance, HOUR)
    _run(defs, instance, NEXT)
    assert sorted(table.partitions) == ["2026030110", "2026030111"]
    assert table.partitions["2026030110"].num_rows == len(hashed)
    assert len(bigquery_mock.jobs) == 3


def test_mock_bigquery_one_pass_loads_the_hashed_rows_in_one_job(
    write_config, bigquery_mock, instance
):
    # BigQuery takes batches as they come like every destination: one_pass: true loads
    # the same rows as the hashed file, in one job that replaces the partition.
    config = _config(write_config, bigquery_mock)
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["pipelines"]["customers"] = {
        **config.pipelines["customers"].model_dump(mode="json", by_alias=True),
        "one_pass": True,
    }
    config = load_config(write_config(data, "bq-one-pass.yaml"))
    result = _run(_definitions(config, instance), instance, HOUR)

    assert all(e.passed for e in result.get_asset_check_evaluations())
    hashed = storage.read_partition(
        storage.partition_file(config.resolved_state_dir(), "hashed", "customers", HOUR)
    )
    loaded = bigquery_mock.tables[TABLE].partitions["2026030110"]
    assert sorted(loaded["customer_id"].to_pylist()) == sorted(hashed["customer_id"].tolist())
    assert len(bigquery_mock.jobs) == 1


def test_mock_bigquery_a_large_partition_goes_up_as_a_resumable_upload(
    write_config, bigquery_mock, instance
):
    # More than the client's 5 MiB multipart limit: 40,000 rows with three 64-char hashes.
    defs = _definitions(_config(write_config, bigquery_mock, rows=40_000), instance)
    result = _run(defs, instance, HOUR)
    assert result.success
    assert ("PUT", "/upload/bigquery/v2/projects/secure-etl-test/jobs") in bigquery_mock.requests
    assert bigquery_mock.tables[TABLE].partitions["2026030110"].num_rows > 39_000


def test_mock_bigquery_a_failed_load_job_fails_the_step_with_the_reason(
    write_config, bigquery_mock, instance, monkeypatch
):
    from secure_etl.etl.destinations import bigquery as bigquery_dest

    # Rows stamped with the wrong hour: BigQuery (and the mock) refuse the load job.
    real = bigquery_dest._with_partition_columns

    def wrong_hour(batches, schema, target, partition, start):
        return real(batches, schema, target, partition, start.replace(hour=start.hour + 1))

    monkeypatch.setattr(bigquery_dest, "_with_partition_columns", wrong_hour)
    defs = _definitions(_config(write_config, bigquery_mock), instance)
    result = defs.resolve_job_def("customers_etl").execute_in_process(
        partition_key=HOUR, instance=instance, raise_on_error=False
    )
    assert not result.success
    errors = "\n".join(
        e.event_specific_data.error.to_string()
        for e in result.all_events
        if getattr(e.event_specific_data, "error", None)
    )
    assert "BigQueryError" in errors and "load job" in errors
    assert "rows outside partition 2026030110" in errors
    assert TABLE not in bigquery_mock.tables or not bigquery_mock.tables[TABLE].partitions


def test_mock_bigquery_credentials_stay_an_environment_variable(write_config, bigquery_mock):
    config = _config(write_config, bigquery_mock, anonymous=False, credentials_env="BQ_SA_JSON")
    resource = build_definitions(config).resources["bigquery_customers"]
    assert resource.gcp_credentials == EnvVar("BQ_SA_JSON")


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ({"anonymous": True, "api_endpoint": None}, "only for an api_endpoint"),
        ({"project": "Not A Project"}, "project"),
    ],
)
def test_mock_bigquery_config_mistakes_name_the_key(
    write_config, bigquery_mock, destination, message
):
    with pytest.raises(ConfigError) as caught:
        _config(write_config, bigquery_mock, **destination)
    assert caught.value.key.startswith("pipelines.customers.destination")
    assert message in str(caught.value)


def test_mock_bigquery_does_not_take_incremental_merges(write_config, bigquery_mock):
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["pipelines"]["customers"].update(
        source={
            "type": "postgres",
            "host": "db",
            "dbname": "d",
            "user": "u",
            "table": "t",
            "incremental": {"cursor_column": "updated_at"},
        },
        partitions={"type": "incremental"},
        destination={"type": "bigquery", "project": "p-12345", "dataset": "d", "table": "t"},
    )
    with pytest.raises(ConfigError, match="bigquery destination takes hourly partitions"):
        load_config(write_config(data, "inc.yaml"))
