"""The plain ETL pieces: demo source, validation, keyed hashing, idempotent loads."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from secure_etl.etl import quality, storage, transforms
from secure_etl.etl.destinations import duckdb as duckdb_dest
from secure_etl.etl.sources.demo import generate_partition
from secure_etl.etl.transforms import (
    Lineage,
    Pseudonymiser,
    PseudonymiseStep,
    SeenKeys,
    hmac_hex,
    pseudonymise,
    split_valid,
    transform_partition,
)

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


def test_rows_without_a_key_or_with_a_repeated_key_are_quarantined_across_batches():
    seen = SeenKeys()
    first = pa.table({"id": pa.array([1, None, 2, 1], pa.int64()), "v": list("abcd")})
    second = pa.table({"id": pa.array([3, 2, None], pa.int64()), "v": list("efg")})
    valid, rejected = split_valid(first, "id", seen)
    assert valid["v"].to_pylist() == ["a", "c"]
    assert rejected["v"].to_pylist() == ["b", "d"]
    valid, rejected = split_valid(second, "id", seen)  # 2 was seen in the first batch
    assert valid["v"].to_pylist() == ["e"]
    assert rejected["v"].to_pylist() == ["f", "g"]


def test_text_keys_are_remembered_across_batches_too():
    seen = SeenKeys()
    assert seen.repeated(pa.array(["a", "b", "a"])).tolist() == [False, False, True]
    assert seen.repeated(pa.array(["c", "b"])).tolist() == [False, True]


def test_repeated_keys_over_many_batches_match_a_set_of_the_keys_seen():
    # many small batches in random order, ascending runs and text: the sorted runs the
    # keys are kept in are merged and searched in every combination
    rng = np.random.default_rng(7)
    for kind in ("shuffled", "ascending", "text"):
        keys = rng.integers(0, 3000, 5000) if kind == "shuffled" else np.arange(5000) // 2
        seen, reference, got, expected = SeenKeys(), set(), [], []
        start = 0
        while start < len(keys):
            size = int(rng.integers(1, 300))
            batch = keys[start : start + size].tolist()
            start += size
            array = pa.array([str(k) for k in batch] if kind == "text" else batch)
            got.extend(seen.repeated(array).tolist())
            for key in batch:
                expected.append(key in reference)
                reference.add(key)
        assert got == expected
        assert 0 < sum(got) < len(got)


def test_a_partition_is_transformed_in_batches_and_in_worker_processes_alike(tmp_path, monkeypatch):
    monkeypatch.setattr(transforms, "PARALLEL_MIN_ROWS", 100)
    frame = generate_partition("2026-05-01-07:00", 1000, seed=3, bad_row_rate=0.02)
    raw = tmp_path / "raw.parquet"
    storage.write_partition(raw, frame)
    step = PseudonymiseStep(["email", "phone"], Pseudonymiser(SECRET), "k1")
    lineage = Lineage("run-1", "v1", dt.datetime(2026, 5, 1, 8, tzinfo=dt.UTC))
    outs = {}
    for batch_rows, workers in ((1000, 1), (64, 1), (64, 2)):
        hashed, quarantine = tmp_path / f"h{batch_rows}", tmp_path / f"q{batch_rows}"
        result = transform_partition(
            raw, hashed, quarantine, "customer_id", [step], lineage, batch_rows, workers
        )
        outs[batch_rows, workers] = storage.read_partition(hashed)
        assert result.rows + result.quarantined == 1000
        assert result.quarantined == storage.partition_rows(quarantine) > 0
    pd.testing.assert_frame_equal(outs[1000, 1], outs[64, 1])
    pd.testing.assert_frame_equal(outs[1000, 1], outs[64, 2])
    out = outs[64, 2]
    assert out["email"].iloc[0] == hmac_hex([frame["email"].iloc[0]], SECRET)[0]
    assert set(out["_pseudonym_key_id"]) == {"k1"} and set(out["_run_id"]) == {"run-1"}
    assert out["full_name"].tolist() == frame.dropna(subset=["customer_id"])["full_name"].tolist()


def test_a_clean_rerun_removes_the_previous_quarantine_file(tmp_path):
    raw, hashed, quarantine = tmp_path / "raw", tmp_path / "hashed", tmp_path / "q"
    lineage = Lineage("r", "v", dt.datetime.now(dt.UTC))
    storage.write_partition(raw, pa.table({"id": pa.array([1, None], pa.int64())}))
    assert transform_partition(raw, hashed, quarantine, "id", [], lineage).quarantined == 1
    storage.write_partition(raw, pa.table({"id": pa.array([1, 2], pa.int64())}))
    assert transform_partition(raw, hashed, quarantine, "id", [], lineage).quarantined == 0
    assert not quarantine.exists()


def test_hmac_matches_an_independent_computation_and_keeps_missing_values():
    values = ["ada@example.com", None, "Grace Hopper", float("nan"), pd.NA]
    out = hmac_hex(values, SECRET)
    assert out[0] == hmac.new(SECRET, b"ada@example.com", hashlib.sha256).hexdigest()
    assert out[2] == hmac.new(SECRET, b"Grace Hopper", hashlib.sha256).hexdigest()
    assert out[1] is None and out[3] is None and out[4] is None


def test_a_different_key_gives_a_different_pseudonym():
    assert hmac_hex(["x"], SECRET) != hmac_hex(["x"], SECRET[::-1])


def test_pseudonymise_names_a_missing_column():
    step = PseudonymiseStep(["mail"], Pseudonymiser(SECRET), "k1")
    with pytest.raises(KeyError, match="no column 'mail'"):
        pseudonymise(pa.table({"email": ["a"]}), [step])


@pytest.mark.parametrize("repeat", [10, 1000])  # 60 values hashed one by one; 6000 deduplicated
def test_repeated_values_hash_once_and_equal_the_one_by_one_result(repeat):
    values = pa.array(["a", None, "b", "a", "a", "b"] * repeat)
    column = Pseudonymiser(SECRET).column(values)
    assert column.to_pylist() == hmac_hex(values.to_pylist(), SECRET)
    assert Pseudonymiser(b"k" * 100).hex_many([b"x"]) == [
        hmac.new(b"k" * 100, b"x", hashlib.sha256).hexdigest()
    ]


def test_a_partition_is_replaced_not_appended(tmp_path):
    db = tmp_path / "w.duckdb"
    first = pa.table({"id": [1, 2, 3], "v": ["a", "b", "c"]})
    for name, table in {
        "a": first,
        "b": first.set_column(0, "id", pa.array([4, 5, 6])),
        "c": first.slice(0, 2),
    }.items():
        storage.write_partition(tmp_path / name, table)
    duckdb_dest.load_partition(db, "t", "p1", tmp_path / "a")
    duckdb_dest.load_partition(db, "t", "p2", tmp_path / "b")
    duckdb_dest.load_partition(db, "t", "p1", tmp_path / "c")

    assert duckdb_dest.table_rows(db, "t") == 5
    assert duckdb_dest.read_partition(db, "t", "p1")["id"].tolist() == [1, 2]
    stats = duckdb_dest.partition_stats(db, "t", "p1", "id")
    assert stats == {"rows": 2, "duplicate_keys": 0, "nulls": {"id": 0, "v": 0}}


def test_a_written_partition_s_digest_is_that_of_its_bytes_on_disk(tmp_path):
    from secure_etl.security.audit import file_digest

    path = tmp_path / "p.parquet"
    chunks = [pa.table({"id": range(i, i + 5000), "v": [f"v{j}" for j in range(5000)]})
              for i in range(0, 20000, 5000)]  # fmt: skip
    storage.write_partition_chunks(path, chunks)
    assert [k for k in storage._DIGESTS if k[0] == str(path)]  # kept from the write
    remembered = storage.as_file(path).digest()
    on_disk = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert remembered == file_digest(path) == on_disk
    path.write_bytes(path.read_bytes()[:-1] + b"x")  # changed after: read again, not remembered
    assert storage.as_file(path).digest() == file_digest(path) != remembered


def test_a_table_name_that_is_not_an_identifier_is_refused(tmp_path):
    storage.write_partition(tmp_path / "a", pa.table({"a": [1]}))
    with pytest.raises(ValueError, match="invalid identifier"):
        duckdb_dest.load_partition(tmp_path / "w.duckdb", 't"; DROP', "p", tmp_path / "a")


def test_leaks_are_counted_per_column_without_values():
    raw = pa.table({"email": ["a@x", "b@x", None], "n": [1, 2, 3]})
    downstream = pa.table({"email": ["h1", "b@x", None], "note": ["a@x", "ok", "a@x"]})
    leaks = quality.pii_leaks(lambda: [raw], ["email"], {"loaded": lambda: [downstream]})
    assert leaks == {"loaded.email": 1, "loaded.note": 2}
    assert quality.pii_leaks(lambda: [raw], ["email"], {"x": lambda: [raw.drop(["email"])]}) == {}
    stats = {"rows": 4, "duplicate_keys": 1, "nulls": {"a": 2, "b": 0}}
    assert quality.null_rates(stats) == {"a": 0.5, "b": 0.0}


def test_raw_values_in_log_and_metadata_text_are_counted_at_word_boundaries():
    raw = pa.table(
        {"email": ["ann@example.org", "bo@x.io", None], "name": ["José Núñez", "Al", "Li"]}
    )
    texts = [
        'loaded 3 rows; first was "ann@example.org"',  # a log line: a leak
        json.dumps({"preview": "| José Núñez | ... |"}, ensure_ascii=False),  # metadata: a leak
        "xbo@x.iox and ann@example.org.",  # inside another word: not a leak; the email again
        "Al was here",  # shorter than MIN_TEXT_MATCH: not looked for
    ]
    leaks = quality.pii_leaks(
        lambda: [raw], ["email", "name"], {}, {"event_log": lambda: iter(texts)}
    )
    assert leaks == {"event_log": 2}  # distinct values: the email and the name
    clean = quality.pii_leaks(lambda: [raw], ["email"], {}, {"event_log": lambda: ["no pii"]})
    assert clean == {}


def test_hash_workers_match_in_process_hashing_and_a_dead_worker_is_an_error():
    from secure_etl.etl.hmac_column import HashWorkers, hmac_column
    from secure_etl.etl.hmac_values import key_pads

    pads = key_pads(SECRET)
    values = pa.array(["a", None, "b", "ü"] * 100)
    with HashWorkers(2) as workers:
        futures = [workers.submit(pads, values) for _ in range(4)]
        assert all(f.result().equals(hmac_column(pads, values)) for f in futures)
    with HashWorkers(1) as workers:
        workers._procs[0].kill()
        workers._procs[0].wait()
        with pytest.raises(RuntimeError, match="HMAC worker .* failed"):
            workers.submit(pads, values).result()
