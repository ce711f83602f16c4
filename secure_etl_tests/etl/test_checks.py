"""The loaded-partition checks without Dagster: small real partitions (Parquet stage
files, a DuckDB warehouse), each result compared with a count made here another way."""

from __future__ import annotations

import hashlib

import pandas as pd
import pyarrow.parquet as pq
import pytest

from secure_etl.etl import checks, storage
from secure_etl.etl.check_names import LOADED_CHECKS
from secure_etl.etl.destinations import duckdb as duckdb_dest
from secure_etl.security.audit import AuditLog

PARTITION = "2026-03-01-10:00"
RAW = pd.DataFrame(
    {
        "id": [1, 2, 3, 4, 5, 6],
        "email": ["ann@x.org", "bob@x.org", "cy@x.org", "dee@x.org", None, "eve@x.org"],
        "city": ["Oslo", None, "Rome", None, None, "Lima"],
    }
)


def _pseudonym(value: str | None) -> str | None:
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()[:16]


@pytest.fixture
def files(tmp_path) -> checks.StageFiles:
    """raw: 6 rows; quarantine: 1 row (id 6); filtered out: 1; hashed: 4 rows."""
    files = checks.StageFiles.of(tmp_path, "customers", PARTITION, None)
    storage.write_partition(files.raw, RAW)
    storage.write_partition(files.quarantine, RAW.iloc[[5]])
    hashed = RAW.iloc[:4].assign(email=RAW.email.iloc[:4].map(_pseudonym))
    storage.write_partition(files.hashed, hashed)
    storage.write_counts(files.hashed, {"filtered": 1})
    return files


def _warehouse(tmp_path, hashed_file) -> tuple:
    """The hashed file loaded into a DuckDB table, with the destination's stats and chunks."""
    db = tmp_path / "warehouse.duckdb"
    duckdb_dest.load_partition(db, "customers", PARTITION, hashed_file)
    stats = duckdb_dest.partition_stats(db, "customers", PARTITION, "id")
    return stats, lambda columns: duckdb_dest.partition_chunks(db, "customers", PARTITION, columns)


def test_rows_reconcile_when_every_raw_row_is_loaded_quarantined_or_filtered(files):
    raw = pq.read_table(files.raw).num_rows
    quarantined = pq.read_table(files.quarantine).num_rows
    loaded = raw - quarantined - 1

    result = checks.rows_reconcile(files, loaded)

    assert result.passed and result.severity == "error"
    assert (
        result.description
        == f"raw {raw} = loaded {loaded} + quarantined {quarantined} + filtered 1"
    )
    assert result.metadata == {"raw": 6, "loaded": 4, "quarantined": 1, "filtered": 1}


def test_rows_do_not_reconcile_when_a_row_went_missing(files):
    result = checks.rows_reconcile(files, 3)

    assert not result.passed
    assert result.description == "raw 6 != loaded 3 + quarantined 1 + filtered 1"


def test_rows_reconcile_without_a_quarantine_file(files):
    files.quarantine.unlink()
    assert checks.rows_reconcile(files, 5).passed


def test_the_null_rate_is_the_worst_columns_share_of_nulls(tmp_path, files):
    stats, _ = _warehouse(tmp_path, files.hashed)
    loaded = pq.read_table(files.hashed).to_pandas()
    worst = loaded.isna().mean().idxmax()
    rate = loaded[worst].isna().mean()
    assert (worst, rate) == ("city", 0.5)

    within = checks.null_rate(stats, 0.5)
    above = checks.null_rate(stats, 0.25)

    assert within.passed and within.metadata == {"max_null_rate": rate}
    assert not above.passed
    assert above.description == f"highest null rate {rate:.4f} in city (limit 0.25)"


def test_a_column_masked_to_null_does_not_count_for_the_null_rate(tmp_path, files):
    stats, _ = _warehouse(tmp_path, files.hashed)

    result = checks.null_rate(stats, 0.25, exempt=["city"])

    assert result.passed
    assert result.description == "highest null rate 0.0000 in id (limit 0.25)"


def test_an_empty_partition_has_no_null_rate():
    result = checks.null_rate({"rows": 0, "duplicate_keys": 0, "nulls": {}}, 0.1)
    assert result.passed and result.description == "highest null rate 0.0000 in - (limit 0.1)"


def test_unique_keys_pass_on_distinct_keys_and_fail_on_a_repeated_one(tmp_path, files):
    stats, _ = _warehouse(tmp_path, files.hashed)
    assert checks.unique_keys(stats, "id").passed

    doubled = pd.concat([RAW.iloc[:4], RAW.iloc[[0, 0]]])
    storage.write_partition(files.hashed, doubled)
    stats, _ = _warehouse(tmp_path, files.hashed)
    repeats = int(doubled["id"].duplicated().sum())

    result = checks.unique_keys(stats, "id")

    assert not result.passed and result.metadata == {"duplicate_rows": repeats}
    assert result.description == f"{repeats} rows repeat a id already in the partition"


def test_no_pii_leak_when_downstream_holds_only_pseudonyms(tmp_path, files):
    _, loaded = _warehouse(tmp_path, files.hashed)

    result = checks.no_pii_leak(files, ["email"], loaded, {"log": lambda: ["loaded 4 rows"]})

    assert result.passed and result.description == "no raw PII value found downstream"
    assert result.metadata == {"leaked_values": 0}


def test_a_raw_value_downstream_or_in_a_log_is_a_leak_counted_never_shown(tmp_path, files):
    hashed = pq.read_table(files.hashed).to_pandas()
    hashed.loc[1, "email"] = "bob@x.org"  # one raw value slipped through
    storage.write_partition(files.hashed, hashed)
    _, loaded = _warehouse(tmp_path, files.hashed)
    log = ["extracted 6 rows", "bad row: cy@x.org, dee@x.org"]
    raw = set(RAW.email.dropna())
    in_hashed = sum(v in raw for v in hashed.email)
    in_log = sum(v in line for v in raw for line in log)

    result = checks.no_pii_leak(files, ["email"], loaded, {"log": lambda: log})

    assert not result.passed
    assert result.description == (
        f"raw PII values found in hashed.email ({in_hashed}), loaded.email ({in_hashed}), "
        f"log ({in_log})"
    )
    assert result.metadata == {"leaked_values": 2 * in_hashed + in_log}
    assert not any(v in result.description for v in raw)


def _audit(tmp_path, records: int) -> AuditLog:
    audit = AuditLog(tmp_path / "audit.log", tmp_path / "checkpoints", tmp_path / "audit.key")
    for n in range(records):
        audit.append("service:test", "load", "loaded/customers", PARTITION, f"run-{n}")
    audit.checkpoint()
    return audit


def test_the_audit_chain_check_passes_on_an_untouched_log(tmp_path):
    audit = _audit(tmp_path, 3)
    lines = len(audit.path.read_text().splitlines())

    result = checks.audit_chain(audit)

    assert result.passed and result.metadata["records"] == lines
    assert (
        result.description
        == f"{lines} records, {result.metadata['checkpoints']} signed checkpoints verify"
    )


def test_the_audit_chain_check_fails_on_an_edited_record(tmp_path):
    audit = _audit(tmp_path, 3)
    audit.path.write_text(audit.path.read_text().replace("run-1", "run-9"))

    result = checks.audit_chain(audit)

    assert not result.passed
    assert result.description.endswith("its hash does not match (modified)")


def test_loaded_checks_run_every_named_check_in_order(tmp_path, files):
    stats, loaded = _warehouse(tmp_path, files.hashed)

    results = checks.loaded_checks(
        files,
        stats,
        loaded,
        key_column="id",
        max_null_rate=0.5,
        nulled=[],
        pii=["email"],
        audit=_audit(tmp_path, 1),
    )

    assert [r.name for r in results] == list(LOADED_CHECKS)
    assert all(r.passed for r in results), results


def test_the_leak_check_reads_back_only_columns_whose_lengths_meet_raw_pii(tmp_path):
    """The transform tallies value lengths: the pseudonymised email (64 hex characters)
    cannot hold a raw value and is not read back; the city, PII left as it was, is, and
    its raw values are found in the hashed file and in the destination."""
    import datetime as dt

    from secure_etl.etl.transforms import (
        Lineage,
        Pseudonymiser,
        PseudonymiseStep,
        transform_partition,
    )

    files = checks.StageFiles.of(tmp_path, "customers", PARTITION, None)
    storage.write_partition(files.raw, RAW)
    step = PseudonymiseStep(["email"], Pseudonymiser(b"k" * 32), "k1")
    lineage = Lineage("run", "1", dt.datetime.now(dt.UTC))
    transform_partition(files.raw, files.hashed, files.quarantine, "id", [step], lineage)
    assert storage.read_counts(files.hashed)["lengths"]["hashed"]["email"] == [64]
    _, chunks = _warehouse(tmp_path, files.hashed)
    asked = []

    def loaded(columns):
        asked.append(list(columns))
        return chunks(columns)

    clean = checks.no_pii_leak(files, ["email"], loaded, {"log": lambda: ["loaded 6 rows"]})
    assert clean.passed and asked == []  # nothing to read back

    leaked = checks.no_pii_leak(files, ["email", "city"], loaded)
    cities = RAW.city.notna().sum()
    assert not leaked.passed and asked == [["city"]]
    assert leaked.description == (
        f"raw PII values found in hashed.city ({cities}), loaded.city ({cities})"
    )
