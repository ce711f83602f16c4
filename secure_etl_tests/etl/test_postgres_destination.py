"""The PostgreSQL destination against a real PostgreSQL: every Arrow type the sources
produce is loaded by binary COPY into the column type made for it, and read back equal."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa
import pytest

from secure_etl.config import PlatformConfig, PostgresDestination
from secure_etl.etl.connector import ClientTls
from secure_etl.etl.destinations.postgres import load_partition, partition_chunks
from secure_etl.etl.sources.postgres import pg_endpoint
from secure_etl.pki.renewal import certificate_store, trust_bundle
from secure_etl.security.postgres_tls import PgEndpoint
from secure_etl_tests.conftest import module_platform

pytestmark = pytest.mark.integration

PARTITION = "2026-03-01-10:00"
UTC = dt.UTC
NS_PER_H = 3600 * 10**9
# Each Arrow type a source can hand over, with values at its edges and a null: the
# PostgreSQL source (int16/32/64, real, double, bool, numeric, text, date, time,
# timestamp(tz)), MariaDB (the same, TIME as a duration, BLOB as binary, BIGINT UNSIGNED
# as decimal(20, 0)), the HTTPS API through pandas (int64, uint64 past 2**63, float64,
# bool, strings, an all-null column, categoricals as dictionaries) and Parquet files
# written elsewhere (int8, uint8/16/32, float16, date64, views, ms and s timestamps).
COLUMNS = {
    "int8": (pa.int8(), [-128, 127, None]),
    "int16": (pa.int16(), [-32768, 32767, None]),
    "int32": (pa.int32(), [-(2**31), 2**31 - 1, None]),
    "int64": (pa.int64(), [-(2**63), 2**63 - 1, None]),
    "uint8": (pa.uint8(), [0, 255, None]),
    "uint16": (pa.uint16(), [0, 65535, None]),
    "uint32": (pa.uint32(), [0, 2**32 - 1, None]),
    "uint64": (pa.uint64(), [0, 2**64 - 1, None]),
    "float16": (pa.float16(), [1.5, -2.0, None]),
    "float32": (pa.float32(), [1.5, -0.25, None]),
    "float64": (pa.float64(), [1e300, -2.5, None]),
    "bool": (pa.bool_(), [True, False, None]),
    "decimal": (pa.decimal128(10, 2), [Decimal("12345678.90"), Decimal("-0.01"), None]),
    "decimal_20": (pa.decimal128(20, 0), [Decimal(2**64 - 1), Decimal(0), None]),
    "string": (pa.string(), ["Name 1", "ümlaut ✓", None]),
    "large_string": (pa.large_string(), ["x" * 1000, "", None]),
    "string_view": (pa.string_view(), ["a", "", None]),
    "dictionary": (pa.dictionary(pa.int32(), pa.string()), ["a", "b", None]),
    "dictionary_int64": (pa.dictionary(pa.int8(), pa.int64()), [5, 2**40, None]),
    "null": (pa.null(), [None, None, None]),
    "binary": (pa.binary(), [b"\x00\xff", b"", None]),
    "large_binary": (pa.large_binary(), [b"\x00", b"ab", None]),
    "fixed_binary": (pa.binary(2), [b"\x00\x01", b"ab", None]),
    "date32": (pa.date32(), [dt.date(2026, 3, 1), dt.date(1900, 1, 1), None]),
    "date64": (pa.date64(), [dt.date(2026, 3, 1), dt.date(1970, 1, 1), None]),
    "time32": (pa.time32("s"), [dt.time(10, 30), dt.time(0), None]),
    "time64": (pa.time64("us"), [dt.time(23, 59, 59, 999999), dt.time(0), None]),
    "duration": (pa.duration("us"), [dt.timedelta(hours=838), dt.timedelta(seconds=-1), None]),
    "timestamp_tz": (
        pa.timestamp("us", tz="UTC"),
        [dt.datetime(2026, 3, 1, 10, 0, 0, 1, tzinfo=UTC), dt.datetime(1970, 1, 1, tzinfo=UTC)],
    ),
    "timestamp_ns_tz": (
        pa.timestamp("ns", tz="UTC"),
        [dt.datetime(2026, 3, 1, 10, 59, 59, 999999, tzinfo=UTC), None],
    ),
    "timestamp_ms_tz": (pa.timestamp("ms", tz="UTC"), [dt.datetime(2026, 3, 1, tzinfo=UTC)]),
    "timestamp": (pa.timestamp("us"), [dt.datetime(2026, 3, 1, 10, 30), dt.datetime(1, 1, 1)]),
    "timestamp_s": (pa.timestamp("s"), [dt.datetime(2026, 3, 1, 10), None]),
}
# What reads back differently, though equal: an interval comes back as months, days and
# nanoseconds.
READ_BACK = {"duration": [(0, 0, 838 * NS_PER_H), (0, 0, -(10**9)), None]}


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> PlatformConfig:
    """The test platform, shared by the module's tests like the server below."""
    return module_platform(tmp_path_factory)


@pytest.fixture(scope="module")
def postgres(platform, tmp_path_factory):
    """One PostgreSQL for the module (each test loads its own table), with the warehouse
    database the etl-client certificate logs in to."""
    from secure_etl_tests.servers import postgres_for_platform

    server = postgres_for_platform(platform, tmp_path_factory.mktemp("pg"))
    server.psql('CREATE ROLE "etl-client.test" LOGIN SUPERUSER')
    server.psql("CREATE DATABASE warehouse")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def warehouse(platform, postgres) -> PgEndpoint:
    """The warehouse over verify-full with the etl-client certificate."""
    client = certificate_store(platform).paths("etl-client")
    tls = ClientTls(client.fullchain, client.privkey, str(trust_bundle(platform, "db-server")))
    destination = PostgresDestination(
        type="postgres",
        host="localhost",
        port=postgres.port,
        dbname="warehouse",
        user="etl-client.test",
        table="unused",
    )
    return pg_endpoint(destination, tls)


IDS = pa.array([1, 2, 3], pa.int64())
INTEGERS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def _column(name: str) -> pa.Table:
    arrow_type, values = COLUMNS[name]
    values = values + [None] * (3 - len(values))
    return pa.table({"id": IDS, name: pa.array(values, arrow_type)})


def _round_trip(endpoint, table: pa.Table, name: str, batches=None) -> pa.Table:
    """Replace the partition of table ``name`` by ``table`` (in ``batches`` if given);
    what the destination reads back of it, in id order."""
    loaded = load_partition(
        endpoint, "public", name, "_partition", PARTITION, batches or [table], table.schema
    )
    assert loaded == table.num_rows
    back = pa.concat_tables(
        partition_chunks(endpoint, "public", name, "_partition", PARTITION, table.schema.names)
    )
    return back.sort_by("id")


def test_integers_load_into_a_column_of_the_width_copy_sends(warehouse, postgres):
    # The regression: every integer that was not int16 or int32 got a bigint column, but
    # ADBC's COPY sends int8 and uint8 as int2 and uint16 as int4, so the load failed with
    # "insufficient data left in message"; a uint64 past 2**63 came back negative.
    table = pa.table({name: _column(name).column(name) for name in INTEGERS} | {"id": IDS})
    back = _round_trip(warehouse, table, "integers")
    for name in INTEGERS:
        assert back.column(name).to_pylist() == table.column(name).to_pylist(), name
    types = postgres.psql(
        "SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position) "
        "FROM information_schema.columns WHERE table_name = 'integers'",
        dbname="warehouse",
    )
    assert types.strip() == (
        "int8 smallint, int16 smallint, int32 integer, int64 bigint, uint8 smallint, "
        "uint16 integer, uint32 bigint, uint64 numeric, id bigint, _partition text"
    )


@pytest.mark.parametrize("name", sorted(COLUMNS))
def test_every_type_a_source_produces_round_trips(warehouse, name):
    table = _column(name)
    back = _round_trip(warehouse, table, name)
    expected = READ_BACK.get(name, table.column(name).to_pylist())
    assert back.column(name).to_pylist() == expected


def test_all_types_at_once_in_two_batches_and_a_reload(warehouse):
    table = pa.table({name: _column(name).column(name) for name in COLUMNS} | {"id": IDS})
    for _ in range(2):  # a re-run replaces the partition
        _round_trip(warehouse, table, "everything", batches=[table.slice(0, 2), table.slice(2)])
    back = _round_trip(warehouse, table, "everything")
    for name in COLUMNS:
        assert back.column(name).to_pylist() == READ_BACK.get(
            name, table.column(name).to_pylist()
        ), name


@pytest.mark.parametrize(
    "kind", [pa.list_(pa.int64()), pa.struct([("a", pa.int64())]), pa.map_(pa.string(), pa.int64())]
)
def test_a_nested_column_is_refused_naming_it_before_anything_is_written(warehouse, postgres, kind):
    table = pa.table({"id": IDS, "tags": pa.nulls(3, kind)})
    with pytest.raises(ValueError, match=r"column tags: the PostgreSQL destination takes no"):
        load_partition(
            warehouse, "public", "nested", "_partition", PARTITION, [table], table.schema
        )
    assert postgres.psql("SELECT to_regclass('public.nested')", dbname="warehouse").strip() == ""
