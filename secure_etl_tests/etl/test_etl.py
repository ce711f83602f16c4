"""The plain ETL pieces: demo source, validation, keyed hashing, idempotent loads."""

from __future__ import annotations

import hashlib
import hmac

import pandas as pd
import pytest

from secure_etl.etl import duckdb_dest, quality
from secure_etl.etl.demo_source import generate_partition
from secure_etl.etl.transforms import hmac_hex, pseudonymise, split_valid

SECRET = bytes(range(32))


def test_the_demo_source_is_deterministic_per_partition():
    a = generate_partition("2026-05-01-07:00", 500, seed=1)
    b = generate_partition("2026-05-01-07:00", 500, seed=1)
    c = generate_partition("2026-05-01-08:00", 500, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not set(a["customer_id"]) & set(c["customer_id"])
    assert (
        a["signup_at"]
        .between(
            pd.Timestamp("2026-05-01 07:00", tz="UTC"), pd.Timestamp("2026-05-01 08:00", tz="UTC")
        )
        .all()
    )


def test_the_demo_source_makes_the_requested_share_of_bad_rows():
    frame = generate_partition("2026-05-01-07:00", 10_000, seed=1, bad_row_rate=0.01)
    assert 50 < frame["customer_id"].isna().sum() < 150


def test_rows_without_a_key_or_with_a_repeated_key_are_quarantined():
    frame = pd.DataFrame({"id": pd.array([1, None, 2, 1], dtype="Int64"), "v": list("abcd")})
    valid, rejected = split_valid(frame, "id")
    assert valid["v"].tolist() == ["a", "c"]
    assert rejected["v"].tolist() == ["b", "d"]


def test_hmac_matches_an_independent_computation_and_keeps_missing_values():
    values = ["ada@example.com", None, "Grace Hopper", float("nan"), pd.NA]
    out = hmac_hex(values, SECRET)
    assert out[0] == hmac.new(SECRET, b"ada@example.com", hashlib.sha256).hexdigest()
    assert out[2] == hmac.new(SECRET, b"Grace Hopper", hashlib.sha256).hexdigest()
    assert out[1] is None and out[3] is None and out[4] is None


def test_a_different_key_gives_a_different_pseudonym():
    assert hmac_hex(["x"], SECRET) != hmac_hex(["x"], SECRET[::-1])


def test_pseudonymise_names_a_missing_column():
    with pytest.raises(KeyError, match="no column 'mail'"):
        pseudonymise(pd.DataFrame({"email": ["a"]}), ["mail"], SECRET, "k1")


def test_a_partition_is_replaced_not_appended(tmp_path):
    db = tmp_path / "w.duckdb"
    first = pd.DataFrame({"id": [1, 2, 3], "v": ["a", "b", "c"]})
    duckdb_dest.load_partition(db, "t", "p1", first)
    duckdb_dest.load_partition(db, "t", "p2", first.assign(id=[4, 5, 6]))
    duckdb_dest.load_partition(db, "t", "p1", first.iloc[:2])

    assert duckdb_dest.table_rows(db, "t") == 5
    assert duckdb_dest.read_partition(db, "t", "p1")["id"].tolist() == [1, 2]


def test_a_table_name_that_is_not_an_identifier_is_refused(tmp_path):
    with pytest.raises(ValueError, match="invalid identifier"):
        duckdb_dest.load_partition(tmp_path / "w.duckdb", 't"; DROP', "p", pd.DataFrame({"a": [1]}))


def test_leaks_are_counted_per_column_without_values():
    raw = pd.DataFrame({"email": ["a@x", "b@x"], "n": [1, 2]})
    downstream = pd.DataFrame({"email": ["h1", "b@x"], "note": ["a@x", "ok"]})
    assert quality.pii_leaks(raw, ["email"], downstream) == {"email": 1, "note": 1}
    assert quality.duplicate_keys(pd.DataFrame({"k": [1, 1, 2]}), "k") == 2
    assert quality.null_rates(pd.DataFrame({"a": [1, None]}))["a"] == 0.5
