"""Row filters evaluated as Arrow expressions; the grammar is ``secure_etl.filter_grammar``."""

from __future__ import annotations

import datetime as dt
import decimal

import pyarrow as pa
import pyarrow.compute as pc

from secure_etl.filter_grammar import (
    COMPARISONS,
    OPERATORS,
    Compare,
    Condition,
    FilterError,
    Member,
    Negate,
    NullTest,
    columns,
    parse,
)

__all__ = [
    "OPERATORS",
    "Condition",
    "FilterError",
    "apply",
    "columns",
    "expression",
    "parse",
]


def expression(condition: Condition, schema: pa.Schema | None = None) -> pc.Expression:
    """The Arrow expression for the condition. A comparison with a null is false (so
    the row is dropped), as in SQL's WHERE. With the table's ``schema``, values are
    fitted to their columns (see ``_fitted``)."""

    def fit(column: str, value):
        if schema is None or schema.get_field_index(column) < 0:
            return value
        return _fitted(value, schema.field(column).type)

    if isinstance(condition, Compare):
        value = fit(condition.column, condition.value)
        return COMPARISONS[condition.op](pc.field(condition.column), value)
    if isinstance(condition, Member):
        values = [fit(condition.column, v) for v in condition.values]
        member = pc.field(condition.column).isin(values)
        return member if condition.op == "in" else ~member & pc.field(condition.column).is_valid()
    if isinstance(condition, NullTest):
        null = pc.field(condition.column).is_null()
        return null if condition.op == "is_null" else ~null
    if isinstance(condition, Negate):
        return ~expression(condition.item, schema)
    parts = [expression(item, schema) for item in condition.items]
    combined = parts[0]
    for part in parts[1:]:
        combined = combined & part if condition.op == "and" else combined | part
    return combined


def apply(table: pa.Table, condition: Condition) -> pa.Table:
    """The rows for which the condition holds (a null result drops the row)."""
    missing = columns(condition) - set(table.column_names)
    if missing:
        raise KeyError(
            f"filter: no column {', '.join(sorted(missing))} (have {', '.join(table.column_names)})"
        )
    return table.filter(expression(condition, table.schema))


def _fitted(value, kind: pa.DataType):
    """``value`` as Arrow compares it with a ``kind`` column: a time without a zone is
    taken as UTC against a column with one (and a time with one as UTC against a column
    without, as the sources read them); a whole number against a decimal column is a
    Decimal (Arrow would widen the column past its precision)."""
    if pa.types.is_timestamp(kind) and isinstance(value, dt.datetime):
        if kind.tz and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        if not kind.tz and value.tzinfo is not None:
            return value.astimezone(dt.UTC).replace(tzinfo=None)
    if pa.types.is_decimal(kind) and isinstance(value, int) and not isinstance(value, bool):
        return decimal.Decimal(value)
    return value
