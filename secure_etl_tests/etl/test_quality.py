"""The quality checks quote column names with DuckDB's own quoting: a name is data, never SQL."""

from __future__ import annotations

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
