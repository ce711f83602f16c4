"""The grammar of row filters: typed condition trees parsed from config data, never text
that is evaluated. A leaf module (config validates with it; ``etl/filters.py`` evaluates).

A condition is a mapping with one key:
  {eq|ne|lt|le|gt|ge: [column, value]}   {in|not_in: [column, [value, ...]]}
  {is_null: column}   {not_null: column}
  {and: [condition, ...]}   {or: [condition, ...]}   {not: condition}
"""

from __future__ import annotations

import datetime as dt
import operator
from dataclasses import dataclass

COMPARISONS = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}
MEMBERSHIP = ("in", "not_in")
NULL_TESTS = ("is_null", "not_null")
BOOLEAN = ("and", "or")
OPERATORS = (*COMPARISONS, *MEMBERSHIP, *NULL_TESTS, *BOOLEAN, "not")
Value = str | int | float | bool | dt.date | dt.datetime


class FilterError(ValueError):
    """A condition that is not one: says where in the tree and why."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


@dataclass(frozen=True)
class Compare:
    op: str
    column: str
    value: Value


@dataclass(frozen=True)
class Member:
    op: str
    column: str
    values: tuple[Value, ...]


@dataclass(frozen=True)
class NullTest:
    op: str
    column: str


@dataclass(frozen=True)
class Combine:
    op: str
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Negate:
    item: Condition


Condition = Compare | Member | NullTest | Combine | Negate


def _column(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise FilterError(where, f"a column name is expected, not {value!r}")
    return value


def _value(value: object, where: str) -> Value:
    if isinstance(value, bool | int | float | str | dt.date | dt.datetime):
        if isinstance(value, float) and value != value:
            raise FilterError(where, "NaN is not a value to compare with")
        return value
    raise FilterError(where, f"a plain value is expected, not {type(value).__name__}")


def parse(data: object, where: str = "where") -> Condition:
    """The condition tree of ``data``; FilterError (naming the place) if it is not one."""
    if not isinstance(data, dict) or len(data) != 1:
        raise FilterError(where, f"a mapping with one operator ({', '.join(OPERATORS)}) expected")
    ((op, arg),) = data.items()
    here = f"{where}.{op}"
    if op in COMPARISONS:
        if not isinstance(arg, list) or len(arg) != 2:
            raise FilterError(here, "expects [column, value]")
        return Compare(op, _column(arg[0], here), _value(arg[1], here))
    if op in MEMBERSHIP:
        if not isinstance(arg, list) or len(arg) != 2 or not isinstance(arg[1], list):
            raise FilterError(here, "expects [column, [value, ...]]")
        if not arg[1]:
            raise FilterError(here, "the list of values is empty")
        return Member(op, _column(arg[0], here), tuple(_value(v, here) for v in arg[1]))
    if op in NULL_TESTS:
        return NullTest(op, _column(arg, here))
    if op in BOOLEAN:
        if not isinstance(arg, list) or not arg:
            raise FilterError(here, "expects a non-empty list of conditions")
        return Combine(op, tuple(parse(item, f"{here}[{i}]") for i, item in enumerate(arg)))
    if op == "not":
        return Negate(parse(arg, here))
    raise FilterError(where, f"unknown operator {op!r} (known: {', '.join(OPERATORS)})")


def columns(condition: Condition) -> set[str]:
    if isinstance(condition, Combine):
        return set().union(*(columns(item) for item in condition.items))
    if isinstance(condition, Negate):
        return columns(condition.item)
    return {condition.column}


# What a column holds, as far as a filter's values are concerned: a source's config
# names these where it knows them (``_SourceConfig.column_kinds``).
KINDS = ("integer", "number", "string", "boolean", "timestamp", "date")
Leaf = Compare | Member | NullTest


def leaves(condition: Condition, where: str = "where") -> list[tuple[str, Leaf]]:
    """Every comparison, membership and null test in the tree with its place, written
    as ``parse`` names places in its errors (``where.and[1].gt``)."""
    if isinstance(condition, Combine):
        return [
            leaf
            for i, item in enumerate(condition.items)
            for leaf in leaves(item, f"{where}.{condition.op}[{i}]")
        ]
    if isinstance(condition, Negate):
        return leaves(condition.item, f"{where}.not")
    return [(f"{where}.{condition.op}", condition)]


_EXPECTED = {
    "integer": "a whole number, unquoted",
    "number": "a number, unquoted",
    "string": "a string (in quotes if it looks like a number, a date or true/false)",
    "boolean": "true or false, unquoted",
    "timestamp": "a date (2026-11-01) or a time with its zone (2026-11-01T00:00:00Z), unquoted",
    "date": "a date (2026-11-01), unquoted",
}


def _fits(kind: str, value: Value) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "integer":
        return isinstance(value, int)
    if kind == "number":
        return isinstance(value, int | float)
    if kind == "string":
        return isinstance(value, str)
    return isinstance(value, dt.date)  # timestamp, date (a datetime is a date too)


def _described(value: Value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, dt.datetime):
        return f"the time {value.isoformat()}"
    if isinstance(value, dt.date):
        return f"the date {value.isoformat()}"
    return f"the number {value!r}"


def value_problem(column: str, kind: str, value: Value) -> str | None:
    """Why ``value`` cannot be compared with a ``kind`` column (None: it can)."""
    if _fits(kind, value):
        return None
    article = "an" if kind[0] in "aeiou" else "a"
    return (
        f"{column} is {article} {kind} column: compare it with {_EXPECTED[kind]}, "
        f"not {_described(value)}"
    )
