"""The quality checks quote column names with DuckDB's own quoting: a name is data, never SQL."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from secure_etl.etl import quality

# Names a config validation would refuse, passed straight to the check.
INJECTION = "email\" FROM chunk UNION SELECT 'forged' --"
QUOTED = 'e"mail'


def test_a_column_name_that_tries_sql_injection_is_only_a_name():
    raw = pa.table({"email": ["a@x.org"], INJECTION: ["q@x.org"]})
    downstream = pa.table({"stored": ["q@x.org"], "forged": ["forged"]})
    leaks = quality.pii_leaks(lambda: [raw], ["email", INJECTION], {"d": lambda: [downstream]})
    # The column's value is PII; the text the name smuggles in was never run as SQL.
    assert leaks == {"d.stored": 1}


def test_a_column_name_with_a_double_quote_is_read():
    raw = pa.table({QUOTED: ["w@x.org", None]})
    downstream = pa.table({QUOTED: ["w@x.org", "other"]})
    leaks = quality.pii_leaks(lambda: [raw], [QUOTED], {"d": lambda: [downstream]})
    assert leaks == {f"d.{QUOTED}": 1}


def test_a_batch_without_any_pii_column_is_skipped():
    raw = [pa.table({"n": [1]}), pa.table({"email": ["a@x.org"]})]
    downstream = pa.table({"note": ["a@x.org"]})
    assert quality.pii_leaks(lambda: raw, ["email"], {"d": lambda: [downstream]}) == {"d.note": 1}


def test_the_length_tally_counts_characters_whatever_the_array_looks_like():
    # ASCII (lengths from the offsets), multi-byte text (counted by Arrow), nulls whose
    # slots are not empty, a slice with an offset, large strings, dictionaries, chunks
    values = ["ab", None, "héllo", "ü", "", "wxyz", None, "a" * 300]
    nulls_with_bytes = pa.Array.from_buffers(  # "ab", a null holding 7 bytes, "jkl"
        pa.string(),
        3,
        [
            pa.py_buffer(bytes([0b101])),
            pa.py_buffer(np.array([0, 2, 9, 12], np.int32).tobytes()),
            pa.py_buffer(b"abcdefghijkl"),
        ],
    )
    columns = {
        "ascii": pa.chunked_array([["ab", "c", None], ["wxyz", ""]]),
        "mixed": pa.array(values),
        "sliced": pa.array(["toolong", "ab", "çà", "abcdef"]).slice(1, 2),
        "large": pa.array(values, pa.large_string()),
        "dict": pa.array(values).dictionary_encode(),
        "nulls_with_bytes": nulls_with_bytes,
    }
    tally = quality.LengthTally()
    for name, column in columns.items():
        tally.add(pa.table({name: column}))
    tally.add(pa.table({"ascii": pa.array(["abcdefg"]), "mixed": pa.array(["ñ" * 9])}))
    assert tally.as_json() == {
        "ascii": [0, 1, 2, 4, 7],
        "mixed": [0, 1, 2, 4, 5, 9, 300],
        "sliced": [2],
        "large": [0, 1, 2, 4, 5, 300],
        "dict": [0, 1, 2, 4, 5, 300],
        "nulls_with_bytes": [2, 3],
    }
