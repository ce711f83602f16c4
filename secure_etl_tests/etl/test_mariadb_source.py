"""The MariaDB source against a real MariaDB (Debian's mariadb-server): TLS that verifies
the server and presents the pipeline's client certificate, refusals that say why, rows
in bounded Arrow chunks, and one hour extracted."""

from __future__ import annotations

import copy
import datetime as dt
from decimal import Decimal

import pyarrow as pa
import pytest
import yaml

from secure_etl.config import PlatformConfig, load_config
from secure_etl.etl.check_names import LOADED_CHECKS
from secure_etl.etl.sources.mariadb import (
    MariaDBEndpoint,
    MariaDBError,
    arrow_type,
    extract_range,
    quoted_name,
)
from secure_etl.pki.renewal import certificate_store, trust_bundle
from secure_etl_tests.conftest import BASE_CONFIG, module_platform

pytestmark = pytest.mark.integration  # a real MariaDB (and PostgreSQL)

USER = "etl-client.test"
HOUR = dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC)
# 60 rows in 10:00-11:00, 30 in the next hour, 1 just before (09:59:59.999999).
ROWS = 90


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> PlatformConfig:
    """The test platform, shared by the module's tests like the server below."""
    return module_platform(tmp_path_factory)


@pytest.fixture(scope="module")
def mariadb(platform, tmp_path_factory):
    """MariaDB with the platform's db-server certificate; the account of the etl-client
    certificate needs that certificate (REQUIRE SUBJECT) and has no password. Started
    once for the module: the tests only read."""
    from secure_etl_tests.servers import mariadb_for_platform

    server = mariadb_for_platform(platform, tmp_path_factory.mktemp("mariadb"))
    server.sql(
        "CREATE DATABASE shop;"
        "CREATE TABLE shop.customers (id BIGINT UNSIGNED PRIMARY KEY, name VARCHAR(80), "
        "email TEXT, amount DECIMAL(10,2), score DOUBLE, flags TINYINT, "
        "created_at DATETIME(6) NOT NULL, seen_at TIMESTAMP(6) NULL);"
        "INSERT INTO shop.customers SELECT seq, CONCAT('Name ', seq), "
        "CONCAT('user', seq, '@example.com'), seq * 1.5, seq / 4, seq % 3, "
        "TIMESTAMP '2026-03-01 10:00:00' + INTERVAL seq MINUTE, "
        "TIMESTAMP '2026-03-01 10:00:30' + INTERVAL seq MINUTE FROM shop.seq_0_to_89;"
        "INSERT INTO shop.customers VALUES (1000, 'Early', NULL, NULL, NULL, NULL, "
        "'2026-03-01 09:59:59.999999', '2026-03-01 09:59:59');"
        "CREATE USER 'etl-client.test'@'%' REQUIRE SUBJECT '/CN=etl-client.test';"
        "GRANT SELECT ON shop.* TO 'etl-client.test'@'%';"
        # 40 MB in one hour: far more than socket buffers hold.
        "CREATE TABLE shop.big (id INT PRIMARY KEY, pad VARCHAR(1000), at DATETIME NOT NULL);"
        "INSERT INTO shop.big SELECT seq, REPEAT('x', 1000), '2026-03-01 10:30:00' "
        "FROM shop.seq_1_to_40000;"
        # An account without REQUIRE: only require_secure_transport stands in its way.
        "CREATE USER 'anyone'@'%';"
    )
    yield server
    server.stop()


def _endpoint(platform, server, **changes) -> MariaDBEndpoint:
    client = certificate_store(platform).paths("etl-client")
    fields = {
        "host": "localhost",
        "port": server.port,
        "database": "shop",
        "user": USER,
        "ca_bundle": str(trust_bundle(platform, "db-server")),
        "cert": str(client.fullchain),
        "key": str(client.privkey),
        **changes,
    }
    return MariaDBEndpoint(**fields)


def _hour(endpoint: MariaDBEndpoint, start=HOUR, **kwargs) -> list[pa.Table]:
    return list(
        extract_range(
            endpoint, "customers", "created_at", start, start + dt.timedelta(hours=1), **kwargs
        )
    )


def test_verified_tls_with_the_client_certificate_reads_the_rows(platform, mariadb):
    endpoint = _endpoint(platform, mariadb)
    with endpoint.connect() as conn, conn.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        version = cursor.fetchall()
        cursor.execute("SELECT CURRENT_USER()")
        account = cursor.fetchall()
    assert version[0][1] in {"TLSv1.2", "TLSv1.3"}
    assert account[0][0] == f"{USER}@%"
    assert sum(t.num_rows for t in _hour(endpoint)) == 60


def test_the_server_refuses_plaintext(platform, mariadb):
    import pymysql

    assert mariadb.sql("SELECT @@require_secure_transport").strip() == "1"
    # 'anyone' has no password and no REQUIRE: over TLS it gets in, in plaintext it does
    # not (MariaDB 10.11 says "Access denied" for require_secure_transport).
    with _endpoint(platform, mariadb, user="anyone", database="", cert=None).connect():
        pass
    with pytest.raises(pymysql.OperationalError) as caught:
        pymysql.connect(host="127.0.0.1", port=mariadb.port, user="anyone", ssl_disabled=True)
    assert caught.value.args == (
        1045,
        "Access denied for user 'anyone'@'127.0.0.1' (using password: NO)",
    )


def test_a_server_that_offers_no_tls_is_refused_before_any_credential(platform, mariadb, tmp_path):
    from secure_etl_tests.servers import MariaDB

    plain = MariaDB(tmp_path / "plain", None, None, None).start()
    plain.sql("CREATE USER 'etl-client.test'@'%'")  # it would let the certificate's user in
    try:
        with pytest.raises(MariaDBError) as caught:
            _endpoint(platform, plain).connect()
    finally:
        plain.stop()
    assert str(caught.value).startswith(f"mariadb {USER}@localhost:{plain.port}/shop: ")
    assert "SSL is required but the server doesn't support it" in str(caught.value)


def test_a_server_certificate_from_another_ca_is_refused(platform, mariadb, tmp_path):
    from secure_etl.pki.internal_ca import InternalCA
    from secure_etl.pki.keys import generate_private_key

    other = InternalCA("other-root", tmp_path / "other-ca")
    other.issue(["localhost"], "server", generate_private_key("ec256"))
    endpoint = _endpoint(platform, mariadb, ca_bundle=str(tmp_path / "other-ca" / "ca.pem"))
    with pytest.raises(MariaDBError) as caught:
        _hour(endpoint)
    assert str(caught.value).startswith(f"mariadb {USER}@localhost:{mariadb.port}/shop: ")
    assert "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed" in str(caught.value)


def test_a_host_name_the_certificate_does_not_name_is_refused(platform, mariadb):
    # 127.0.0.2 reaches the same server, but db-server names localhost and 127.0.0.1 only.
    with pytest.raises(MariaDBError) as caught:
        _endpoint(platform, mariadb, host="127.0.0.2").connect()
    assert "certificate is not valid for '127.0.0.2'" in str(caught.value)


def test_without_the_client_certificate_the_account_refuses(platform, mariadb):
    with pytest.raises(MariaDBError) as caught:
        _endpoint(platform, mariadb, cert=None, key=None).connect()
    message = str(caught.value)
    assert f"Access denied for user '{USER}'" in message
    assert "require a client certificate" in message


def test_rows_stream_in_chunks_of_at_most_chunk_rows(platform, mariadb):
    tables = _hour(_endpoint(platform, mariadb), chunk_rows=7)
    assert [t.num_rows for t in tables] == [7] * 8 + [4]
    ids = pa.concat_tables(tables).column("id").to_pylist()
    assert sorted(ids) == list(range(60))


def test_rows_come_from_a_server_side_cursor_as_they_are_read(platform, mariadb):
    endpoint = _endpoint(platform, mariadb)
    chunks = extract_range(endpoint, "big", "at", HOUR, HOUR + dt.timedelta(hours=1), None, 1000)
    first = next(chunks)
    # A buffered cursor would have read all 40,000 rows by now and the query be done;
    # this one is still sending them.
    running = mariadb.sql(
        "SELECT COMMAND FROM information_schema.PROCESSLIST WHERE USER = 'etl-client.test'"
    ).split()
    rest = sum(t.num_rows for t in chunks)
    assert first.num_rows == 1000
    assert running == ["Query"]
    assert first.num_rows + rest == 40_000


def test_chunks_stopped_early_leave_the_rest_of_the_result_unread(platform, mariadb):
    def bytes_sent() -> int:
        return int(mariadb.sql("SHOW GLOBAL STATUS LIKE 'Bytes_sent'").split()[1])

    before = bytes_sent()
    chunks = extract_range(
        _endpoint(platform, mariadb), "big", "at", HOUR, HOUR + dt.timedelta(hours=1), None, 1000
    )
    next(chunks)
    chunks.close()  # what a failing consumer does
    sent = bytes_sent() - before
    # Reading the rest (what closing the cursor does) would have taken all 40 MB.
    assert sent < 20_000_000
    assert "etl-client.test" not in mariadb.sql("SELECT USER FROM information_schema.PROCESSLIST")


def test_an_hour_is_exactly_its_rows_typed_from_the_columns(platform, mariadb):
    table = pa.concat_tables(_hour(_endpoint(platform, mariadb), chunk_rows=1000))
    assert table.schema == pa.schema(
        [
            ("id", pa.decimal128(20, 0)),  # BIGINT UNSIGNED: every value fits
            ("name", pa.string()),
            ("email", pa.string()),
            ("amount", pa.decimal128(10, 2)),
            ("score", pa.float64()),
            ("flags", pa.int16()),
            ("created_at", pa.timestamp("us")),
            ("seen_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(60))  # not 1000 (09:59:59.999999), not 60+
    assert rows[59]["created_at"] == dt.datetime(2026, 3, 1, 10, 59)
    assert rows[3]["amount"] == Decimal("4.50")
    assert rows[3]["email"] == "user3@example.com"
    assert rows[3]["seen_at"] == dt.datetime(2026, 3, 1, 10, 3, 30, tzinfo=dt.UTC)


def test_the_hour_before_has_only_the_early_row(platform, mariadb):
    tables = _hour(_endpoint(platform, mariadb), start=HOUR - dt.timedelta(hours=1))
    assert pa.concat_tables(tables).column("id").to_pylist() == [1000]


def test_an_empty_hour_is_one_empty_table_with_the_columns(platform, mariadb):
    tables = _hour(
        _endpoint(platform, mariadb), start=HOUR + dt.timedelta(days=1), columns=["id", "name"]
    )
    assert [t.num_rows for t in tables] == [0]
    assert tables[0].schema.names == ["id", "name"]


def test_an_unknown_column_is_named(platform, mariadb):
    with pytest.raises(MariaDBError) as caught:
        _hour(_endpoint(platform, mariadb), columns=["id", "nope"])
    assert "table 'customers' has no column nope" in str(caught.value)


def test_names_are_validated_and_quoted():
    assert quoted_name("created_at", "column") == "`created_at`"
    for bad in ("a`b", "a b", "x;DROP TABLE t", "", "1a"):
        with pytest.raises(ValueError, match="invalid column name"):
            quoted_name(bad, "column")


@pytest.fixture
def mariadb_to_postgres(platform, mariadb, tmp_path, instance):
    """Definitions of a pipeline MariaDB -> PostgreSQL (both over verified TLS with the
    etl-client certificate), and the PostgreSQL holding the warehouse."""
    from secure_etl.defs.build import build_definitions
    from secure_etl.defs.certificates import RENEWAL_JOB
    from secure_etl_tests.servers import postgres_for_platform

    warehouse = postgres_for_platform(platform, tmp_path / "pg")
    warehouse.psql(f'CREATE ROLE "{USER}" LOGIN SUPERUSER')
    warehouse.psql("CREATE DATABASE warehouse")
    data = {**copy.deepcopy(BASE_CONFIG), "state_dir": platform.state_dir}
    data["pipelines"]["customers"].update(
        source={
            "type": "mariadb",
            "host": "localhost",
            "port": mariadb.port,
            "database": "shop",
            "user": USER,
            "table": "customers",
            "time_column": "created_at",
            "chunk_rows": 7,
        },
        key_column="id",
        transforms=[{"type": "pseudonymise", "columns": ["name", "email"], "key": "pseudo-1"}],
        destination={
            "type": "postgres",
            "host": "localhost",
            "port": warehouse.port,
            "user": USER,
            "dbname": "warehouse",
            "table": "customers",
        },
    )
    path = tmp_path / "mariadb-to-pg.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    defs = build_definitions(load_config(path))
    defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
    yield defs, warehouse
    warehouse.stop()


def test_a_pipeline_from_mariadb_to_postgres_reruns_a_partition_idempotently(
    mariadb_to_postgres, instance
):
    defs, warehouse = mariadb_to_postgres
    job = defs.resolve_job_def("customers_etl")
    digest = (
        "SELECT count(*), min(id), max(id), sum(amount), "
        "md5(string_agg(id || name || email || created_at, ',' ORDER BY id)) FROM customers"
    )

    first = job.execute_in_process(partition_key="2026-03-01-10:00", instance=instance)
    before = warehouse.psql(digest, dbname="warehouse").strip()
    again = job.execute_in_process(partition_key="2026-03-01-10:00", instance=instance)
    after = warehouse.psql(digest, dbname="warehouse").strip()

    checks = {e.check_name: e.passed for e in first.get_asset_check_evaluations()}
    assert first.success and again.success
    assert checks == dict.fromkeys(list(LOADED_CHECKS), True)
    count, low, high, amount, _ = before.split("|")
    assert (count, low, high, amount) == ("60", "0", "59", "2655.00")  # DECIMAL(10,2) exact
    assert after == before
    leaked = "SELECT count(*) FROM customers WHERE email LIKE '%@%' OR name LIKE 'Name %'"
    assert warehouse.psql(leaked, dbname="warehouse").strip() == "0"


@pytest.mark.parametrize(
    ("data_type", "column_type", "expected"),
    [
        ("tinyint", "tinyint(4)", pa.int16()),
        ("tinyint", "tinyint(3) unsigned", pa.int16()),
        ("smallint", "smallint(5) unsigned", pa.int32()),
        ("mediumint", "mediumint(8) unsigned", pa.int32()),
        ("int", "int(11)", pa.int32()),
        ("int", "int(10) unsigned", pa.int64()),
        ("bigint", "bigint(20)", pa.int64()),
        ("bigint", "bigint(20) unsigned", pa.decimal128(20, 0)),
    ],
)
def test_integers_become_signed_types_that_hold_every_value(data_type, column_type, expected):
    assert arrow_type(data_type, column_type, None, None) == expected


def test_a_name_that_is_not_an_sql_name_is_refused_at_config_load(tmp_path):
    from secure_etl.config import ConfigError

    data = {**copy.deepcopy(BASE_CONFIG), "state_dir": str(tmp_path / "state")}
    data["pipelines"]["customers"]["source"] = {
        "type": "mariadb",
        "host": "db.example.test",
        "database": "shop",
        "user": USER,
        "table": "customers`; DROP TABLE x; --",
        "time_column": "created_at",
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == "pipelines.customers.source.table"
    assert "pattern" in caught.value.message


def test_transforms_on_columns_the_source_does_not_read_are_refused_at_config_load(tmp_path):
    from secure_etl.config import ConfigError

    data = {**copy.deepcopy(BASE_CONFIG), "state_dir": str(tmp_path / "state")}
    data["pipelines"]["customers"].update(
        source={
            "type": "mariadb",
            "host": "db.example.test",
            "database": "shop",
            "user": USER,
            "table": "customers",
            "time_column": "created_at",
            "columns": ["id", "name", "created_at"],
        },
        key_column="id",
        transforms=[{"type": "pseudonymise", "columns": ["email"], "key": "pseudo-1"}],
    )
    path = tmp_path / "columns.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "unknown column email (the source has created_at, id, name)" in caught.value.message
