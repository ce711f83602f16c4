"""Row filters evaluated as Arrow expressions; the grammar is ``secure_etl.filter_grammar``."""

from __future__ import annotations

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


def expression(condition: Condition) -> pc.Expression:
    """The Arrow expression for the condition. A comparison with a null is false (so
    the row is dropped), as in SQL's WHERE."""
    if isinstance(condition, Compare):
        return COMPARISONS[condition.op](pc.field(condition.column), condition.value)
    if isinstance(condition, Member):
        member = pc.field(condition.column).isin(list(condition.values))
        return member if condition.op == "in" else ~member & pc.field(condition.column).is_valid()
    if isinstance(condition, NullTest):
        null = pc.field(condition.column).is_null()
        return null if condition.op == "is_null" else ~null
    if isinstance(condition, Negate):
        return ~expression(condition.item)
    parts = [expression(item) for item in condition.items]
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
    return table.filter(expression(condition))
