"""Schedules are checked when the config loads: whatever we accept, Dagster accepts."""

from __future__ import annotations

import pytest
from dagster._utils.schedules import is_valid_cron_string  # the judge: Dagster's own check
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_etl.cron import CronError, check_cron

_NUMBER = st.integers(0, 70).map(str)
_NAME = st.sampled_from(["jan", "feb", "dec", "sun", "mon", "fri", "sat", "foo"])
_ATOM = st.one_of(st.just("*"), _NUMBER, _NAME)
_SPAN = st.one_of(_ATOM, st.tuples(_NUMBER, _NUMBER).map("-".join))
_PART = st.one_of(_SPAN, st.tuples(_SPAN, st.integers(0, 20).map(str)).map("/".join))
_FIELD = st.lists(_PART, min_size=1, max_size=3).map(",".join)
_EXPRESSION = st.lists(_FIELD, min_size=4, max_size=6).map(" ".join)


@settings(max_examples=400, deadline=None)
@given(_EXPRESSION)
def test_every_schedule_we_accept_dagster_accepts(expression):
    try:
        check_cron(expression)
    except CronError:
        return
    assert is_valid_cron_string(expression), expression


@pytest.mark.parametrize(
    "expression",
    [
        "*/30 * * * *",
        "35 * * * *",
        "* * * * *",
        "0 9-17/2 * * mon-fri",
        "0 0 1 jan,jul *",
        "15 3 * * 7",
        "@hourly",
        "@daily",
    ],
)
def test_the_usual_schedules_pass_both(expression):
    assert check_cron(expression) == expression
    assert is_valid_cron_string(expression)


@pytest.mark.parametrize("expression", ["every 30 minutes", "* * * *", "60 * * * *", "0 0 31 2 *"])
def test_what_dagster_refuses_we_refuse_at_load(expression):
    assert not is_valid_cron_string(expression)
    with pytest.raises(CronError):
        check_cron(expression)


def test_a_backwards_range_is_refused_though_dagster_would_wrap_it():
    # Stricter on purpose: '5-1' in the minute field is more likely a slip than a wish.
    with pytest.raises(CronError, match="runs backwards"):
        check_cron("5-1 * * * *")
