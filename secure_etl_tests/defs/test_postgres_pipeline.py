"""A pipeline from one PostgreSQL to another, both over verify-full with the pipeline's
client certificate: extract an hour, pseudonymise, replace the partition."""

from __future__ import annotations

import copy
import threading
import time

import pytest
import yaml

from secure_etl.config import ConfigError, load_config
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import RENEWAL_JOB
from secure_etl.etl.check_names import LOADED_CHECKS

HOUR = "2026-03-01-10:00"


@pytest.fixture
def pg_pipeline(platform, postgres_tls, write_config, instance):
    return _pg_definitions(postgres_tls, write_config, instance)


def _pg_definitions(postgres_tls, write_config, instance, create_source=True, **pipeline):
    postgres_tls.psql("CREATE DATABASE warehouse")
    if create_source:
        postgres_tls.psql(
            "CREATE TABLE customers_src (id bigint PRIMARY KEY, name text, email text, "
            "phone text, amount numeric(10,2), created_at timestamptz NOT NULL);"
            "INSERT INTO customers_src SELECT g, 'Name ' || g, 'user' || g || '@example.com', "
            "'+49 30 ' || g, g * 1.5, timestamptz '2026-03-01 10:00+00' + g * interval '1 minute' "
            "FROM generate_series(0, 89) g"  # 60 rows in 10:00-11:00, 30 in the next hour
        )
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    connection = {"host": "localhost", "port": postgres_tls.port, "user": "etl-client.test"}
    data["pipelines"]["customers"].update(
        source={
            "type": "postgres",
            **connection,
            "dbname": "postgres",
            "table": "customers_src",
            "time_column": "created_at",
            "chunk_rows": 7,
        },
        key_column="id",
        retry={"max_retries": 1, "delay_s": 0.5},  # a failure must not wait minutes here
        transforms=[
            {"type": "pseudonymise", "columns": ["name", "email", "phone"], "key": "pseudo-1"}
        ],
        destination={"type": "postgres", **connection, "dbname": "warehouse", "table": "customers"},
    )
    source_overrides = pipeline.pop("source_overrides", {})
    data["pipelines"]["customers"].update(pipeline)
    data["pipelines"]["customers"]["source"].update(source_overrides)
    config = load_config(write_config(data, "pg.yaml"))
    defs = build_definitions(config)
    defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
    return defs


def _run(defs, instance, partition=HOUR):
    return defs.resolve_job_def("customers_etl").execute_in_process(
        partition_key=partition, instance=instance
    )


def _warehouse(postgres_tls, sql: str) -> str:
    return postgres_tls.psql(sql, dbname="warehouse").strip()


@pytest.mark.integration
def test_an_hour_moves_between_postgres_servers_pseudonymised(pg_pipeline, postgres_tls, instance):
    result = _run(pg_pipeline, instance)

    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == dict.fromkeys(list(LOADED_CHECKS), True)
    assert _warehouse(postgres_tls, "SELECT count(*), min(id), max(id) FROM customers") == "60|0|59"
    assert _warehouse(postgres_tls, "SELECT count(*) FROM customers WHERE email LIKE '%@%'") == "0"
    ssl = postgres_tls.psql(
        "SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity "
        "USING (pid) WHERE usename = 'etl-client.test'"
    )
    assert ssl.strip() in {"t", ""}  # every connection of the pipeline was TLS


@pytest.mark.integration
def test_rerunning_a_partition_leaves_the_table_identical(pg_pipeline, postgres_tls, instance):
    _run(pg_pipeline, instance)
    query = "SELECT md5(string_agg(id || name || email, ',' ORDER BY id)) FROM customers"
    before = _warehouse(postgres_tls, query)
    _run(pg_pipeline, instance)
    assert _warehouse(postgres_tls, "SELECT count(*) FROM customers") == "60"
    assert _warehouse(postgres_tls, query) == before


@pytest.mark.integration
def test_the_next_partition_picks_up_only_its_own_rows(pg_pipeline, postgres_tls, instance):
    _run(pg_pipeline, instance)
    _run(pg_pipeline, instance, "2026-03-01-11:00")
    assert _warehouse(
        postgres_tls, "SELECT _partition, count(*) FROM customers GROUP BY 1 ORDER BY 1"
    ).splitlines() == ["2026-03-01-10:00|60", "2026-03-01-11:00|30"]


def test_a_weaker_sslmode_must_be_asked_for_by_name(write_config):
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["pipelines"]["customers"]["destination"] = {
        "type": "postgres",
        "host": "db",
        "dbname": "w",
        "user": "u",
        "table": "t",
        "sslmode": "require",
    }
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(data, "weak.yaml"))
    assert caught.value.key == "pipelines.customers.destination"
    assert "allow_insecure_sslmode" in caught.value.message


@pytest.mark.integration
def test_rotating_server_and_client_certificates_mid_pipeline_needs_no_restart(
    pg_pipeline, postgres_tls, instance, platform
):
    # The same Definitions and process throughout: connections read the files anew.
    from secure_etl.pki.endpoints import served_leaf
    from secure_etl.pki.renewal import certificate_store, current_leaf, ensure_certificate

    _run(pg_pipeline, instance)
    server_before = served_leaf("localhost", postgres_tls.port, "postgres").serial_number
    client_before = current_leaf(platform, "etl-client").serial_number

    # New client certificate; new server certificate copied in and loaded by a reload.
    ensure_certificate(platform, "etl-client", force=True)
    ensure_certificate(platform, "db-server", force=True)
    paths = certificate_store(platform).paths("db-server")
    postgres_tls.replace_server_certificate(paths.fullchain, paths.privkey)
    postgres_tls.psql("SELECT pg_reload_conf()")
    assert current_leaf(platform, "etl-client").serial_number != client_before

    result = _run(pg_pipeline, instance, "2026-03-01-11:00")

    assert result.success
    assert served_leaf("localhost", postgres_tls.port, "postgres").serial_number != server_before
    assert _warehouse(postgres_tls, "SELECT count(*) FROM customers") == "90"


@pytest.mark.integration
def test_a_postgres_restart_during_extraction_is_retried_without_loss_or_duplicates(
    platform, postgres_tls, write_config, instance
):
    from dagster import DagsterEventType

    # A view that yields a row every 20 ms: the extraction takes over a second, long
    # enough to restart the server in the middle of it.
    postgres_tls.psql(
        "CREATE TABLE customers_src (id bigint PRIMARY KEY, name text, email text, "
        "phone text, amount numeric(10,2), created_at timestamptz NOT NULL);"
        "INSERT INTO customers_src SELECT g, 'Name ' || g, 'user' || g || '@example.com', "
        "'+49 30 ' || g, g * 1.5, timestamptz '2026-03-01 10:00+00' + g * interval '1 minute' "
        "FROM generate_series(0, 59) g;"
        "CREATE FUNCTION slowly(x bigint) RETURNS bigint LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(0.02); RETURN x; END $$;"
        "CREATE VIEW customers_slow AS SELECT slowly(id) AS id, name, email, phone, amount, "
        "created_at FROM customers_src"
    )
    defs = _pg_definitions(
        postgres_tls,
        write_config,
        instance,
        retry={"max_retries": 3, "delay_s": 1},
        source_overrides={"table": "customers_slow"},
        create_source=False,
    )
    restarted = threading.Event()

    def restart_once_copy_runs():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            active = postgres_tls.psql(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE state = 'active' AND query LIKE 'COPY%customers_slow%'"
            )
            if active.strip() != "0":
                postgres_tls.restart()
                restarted.set()
                return
            time.sleep(0.02)

    restarter = threading.Thread(target=restart_once_copy_runs)
    restarter.start()
    result = _run(defs, instance)
    restarter.join()

    assert restarted.is_set()
    retries = [
        e
        for e in result.all_events
        if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY and e.step_key == "raw__customers"
    ]
    assert len(retries) >= 1
    assert result.success
    assert (
        _warehouse(
            postgres_tls, "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM customers"
        )
        == "60|60|0|59"
    )


@pytest.mark.integration
def test_incremental_extraction_takes_new_rows_and_the_lag_window_and_merges_by_key(
    platform, postgres_tls, write_config, instance
):
    postgres_tls.psql(
        "CREATE TABLE orders (id bigint PRIMARY KEY, name text, email text, phone text, "
        "amount numeric(10,2), updated_at timestamptz NOT NULL);"
        "INSERT INTO orders SELECT g, 'Name ' || g, 'user' || g || '@example.com', "
        "'+49 30 ' || g, g, timestamptz '2026-03-01 10:00+00' + g * interval '1 minute' "
        "FROM generate_series(0, 49) g"  # high-water mark 10:49
    )
    defs = _pg_definitions(
        postgres_tls,
        write_config,
        instance,
        create_source=False,
        partitions={"type": "incremental"},
        source_overrides={
            "table": "orders",
            "time_column": None,
            "incremental": {"cursor_column": "updated_at", "lag_s": 600},
        },
    )
    job = defs.resolve_job_def("customers_etl")
    names = "SELECT id, name FROM customers WHERE id IN (10, 45) ORDER BY id"

    def run_and_count_raw() -> tuple[int, dict]:
        result = job.execute_in_process(instance=instance)
        assert result.success
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert all(checks.values()), checks
        raw = result.asset_materializations_for_node("raw__customers")[0].metadata
        return raw["rows"].value, raw

    rows, meta = run_and_count_raw()
    assert rows == 50 and meta["cursor_high_water"].value.startswith("2026-03-01T10:49")
    before = _warehouse(postgres_tls, names)

    postgres_tls.psql(
        "INSERT INTO orders SELECT g, 'Name ' || g, 'user' || g || '@example.com', "
        "'+49 30 ' || g, g, timestamptz '2026-03-01 11:00+00' + (g - 50) * interval '1 minute' "
        "FROM generate_series(50, 54) g;"
        # a late commit inside the lag window, and one before it (not seen again)
        "UPDATE orders SET name = 'Renamed', updated_at = '2026-03-01 10:41+00' WHERE id = 45;"
        "UPDATE orders SET name = 'Missed', updated_at = '2026-03-01 10:05+00' WHERE id = 10"
    )
    rows, meta = run_and_count_raw()
    # updated_at >= 10:49 - 10 min: 10:39 .. 10:49 (11 rows, 45 among them) + 5 new rows
    assert rows == 16 and meta["extracted_since"].value.startswith("2026-03-01T10:39")
    assert meta["cursor_high_water"].value.startswith("2026-03-01T11:04")
    assert _warehouse(postgres_tls, "SELECT count(*), count(DISTINCT id) FROM customers") == (
        "55|55"
    )
    after = _warehouse(postgres_tls, names).splitlines()
    assert after[0] == before.splitlines()[0]  # id 10 changed before the window: not re-read
    assert after[1] != before.splitlines()[1]  # id 45's new name arrived (pseudonymised)

    rows, _ = run_and_count_raw()  # nothing new: only the lag window is read again
    assert rows == 5
    assert _warehouse(postgres_tls, "SELECT count(*) FROM customers") == "55"


@pytest.mark.integration
def test_one_pass_between_postgres_servers_streams_and_reruns_identically(
    platform, postgres_tls, write_config, instance
):
    defs = _pg_definitions(postgres_tls, write_config, instance, one_pass=True)
    result = _run(defs, instance)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == dict.fromkeys(list(LOADED_CHECKS), True)
    query = "SELECT count(*), md5(string_agg(id || name || email, ',' ORDER BY id)) FROM customers"
    before = _warehouse(postgres_tls, query)
    assert before.startswith("60|")
    _run(defs, instance)
    assert _warehouse(postgres_tls, query) == before


@pytest.mark.integration
def test_declared_column_kinds_check_the_filter_and_its_values_fit_the_columns(
    platform, postgres_tls, write_config, instance
):
    """`columns` as a mapping to kinds: the filter is checked when the config loads, and
    its values are compared as the columns hold them (a whole number with numeric(10,2),
    a time without a zone with timestamptz)."""
    import datetime as dt

    kinds = {"id": "integer", "name": "string", "email": "string", "phone": "string"}
    kinds |= {"amount": "number", "created_at": "timestamp"}
    where = {
        "and": [{"ge": ["amount", 30]}, {"lt": ["created_at", dt.datetime(2026, 3, 1, 10, 50)]}]
    }
    defs = _pg_definitions(
        postgres_tls,
        write_config,
        instance,
        source_overrides={"columns": kinds},
        transforms=[
            {"type": "filter", "where": where},
            {"type": "pseudonymise", "columns": ["name", "email", "phone"], "key": "pseudo-1"},
        ],
    )
    assert _run(defs, instance).success
    # amount = id * 1.5 >= 30 from id 20; created_at = 10:00 + id minutes < 10:50 below id 50.
    assert (
        _warehouse(postgres_tls, "SELECT count(*), min(id), max(id) FROM customers") == "30|20|49"
    )


@pytest.mark.integration
def test_minute_partitions_each_load_their_own_minute(postgres_tls, write_config, instance):
    partitions = {"type": "cron", "cron": "* * * * *", "start": "2026-03-01-10:00"}
    defs = _pg_definitions(postgres_tls, write_config, instance, partitions=partitions)
    for minute in ("2026-03-01-10:05", "2026-03-01-11:29"):
        assert _run(defs, instance, minute).success
    assert _warehouse(
        postgres_tls, "SELECT _partition, count(*), min(id) FROM customers GROUP BY 1 ORDER BY 1"
    ).splitlines() == ["2026-03-01-10:05|1|5", "2026-03-01-11:29|1|89"]
    schedule = defs.resolve_schedule_def("customers_etl_schedule")
    assert schedule.cron_schedule == "* * * * *"
