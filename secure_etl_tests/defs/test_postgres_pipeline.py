"""A pipeline from one PostgreSQL to another, both over verify-full with the pipeline's
client certificate: extract an hour, pseudonymise, replace the partition."""

from __future__ import annotations

import copy

import pytest
import yaml

from secure_etl.config import ConfigError, load_config
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import RENEWAL_JOB

HOUR = "2026-03-01-10:00"


@pytest.fixture
def pg_pipeline(platform, postgres_tls, write_config, instance):
    postgres_tls.psql("CREATE DATABASE warehouse")
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


def test_an_hour_moves_between_postgres_servers_pseudonymised(pg_pipeline, postgres_tls, instance):
    result = _run(pg_pipeline, instance)

    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == dict.fromkeys(
        ["rows_reconcile", "null_rate", "unique_keys", "no_pii_leak"], True
    )
    assert _warehouse(postgres_tls, "SELECT count(*), min(id), max(id) FROM customers") == "60|0|59"
    assert _warehouse(postgres_tls, "SELECT count(*) FROM customers WHERE email LIKE '%@%'") == "0"
    ssl = postgres_tls.psql(
        "SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity "
        "USING (pid) WHERE usename = 'etl-client.test'"
    )
    assert ssl.strip() in {"t", ""}  # every connection of the pipeline was TLS


def test_rerunning_a_partition_leaves_the_table_identical(pg_pipeline, postgres_tls, instance):
    _run(pg_pipeline, instance)
    query = "SELECT md5(string_agg(id || name || email, ',' ORDER BY id)) FROM customers"
    before = _warehouse(postgres_tls, query)
    _run(pg_pipeline, instance)
    assert _warehouse(postgres_tls, "SELECT count(*) FROM customers") == "60"
    assert _warehouse(postgres_tls, query) == before


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
