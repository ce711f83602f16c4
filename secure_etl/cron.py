"""Cron expressions as Dagster schedules take them, checked when the config loads.

Five fields (minute hour day-of-month month day-of-week), each ``*`` or a comma list of
numbers, ranges ``a-b`` and steps ``*/n`` / ``a-b/n`` (month and weekday names allowed),
or one of the macros ``@hourly``, ``@daily``, ``@weekly``, ``@monthly``, ``@yearly``.
"""

from __future__ import annotations

import re

MACROS = {"@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually"}
_MONTHS = "jan feb mar apr may jun jul aug sep oct nov dec".split()
_DAYS = "sun mon tue wed thu fri sat".split()
# name, lowest, highest, names (index + lowest = value)
_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_PART = re.compile(r"^(\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/([0-9]+))?$")


class CronError(ValueError):
    """Not a cron expression Dagster accepts; the message says which part and why."""


def check_cron(expression: str) -> str:
    """``expression`` if it is a valid schedule, else CronError naming the bad field."""
    text = expression.strip().lower()
    if text in MACROS:
        return expression
    fields = text.split()
    if len(fields) != 5:
        raise CronError(
            f"{expression!r} is not a cron expression: it needs 5 fields (minute hour "
            "day-of-month month day-of-week, e.g. '*/30 * * * *') or a macro such as @hourly"
        )
    for field, (name, low, high, names) in zip(fields, _FIELDS, strict=True):
        for part in field.split(","):
            _check_part(part, name, low, high, names, expression)
    day, month = fields[2], fields[3]
    if month in ("2", "feb") and day in ("30", "31"):
        raise CronError(f"{expression!r}: February has no day {day}: it would never run")
    return expression


def _check_part(part: str, name: str, low: int, high: int, names, expression: str) -> None:
    match = _PART.match(part)
    if not match:
        raise CronError(f"{expression!r}: {name} field {part!r} is not a number, range or step")
    span, step = match.groups()
    if step is not None and int(step) == 0:
        raise CronError(f"{expression!r}: {name} field {part!r} has a step of 0")
    if span == "*":
        return
    bounds = [_value(v, name, low, high, names, expression) for v in span.split("-")]
    if len(bounds) == 2 and bounds[0] > bounds[1]:
        raise CronError(f"{expression!r}: {name} range {span!r} runs backwards")


def _value(text: str, name: str, low: int, high: int, names, expression: str) -> int:
    if text.isdigit():
        value = int(text)
    elif text in names:
        value = names.index(text) + low
    else:
        raise CronError(f"{expression!r}: {name} {text!r} is not a number")
    if not low <= value <= high:
        raise CronError(f"{expression!r}: {name} {value} is outside {low}-{high}")
    return value
