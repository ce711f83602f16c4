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
