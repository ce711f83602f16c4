"""The one retry helper: backoff, Retry-After, attempts and the deadline (a fake clock)."""

from __future__ import annotations

import pytest

from secure_etl.acme.errors import RateLimited
from secure_etl.acme.retry import Backoff, GaveUp, TryAgain, retry


class Clock:
    """Time that moves only when slept through; records each wait."""

    def __init__(self) -> None:
        self.now, self.slept = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def failing(times: int, error=lambda n: TryAgain(f"no {n}")):
    calls = []

    def attempt(n: int) -> str:
        calls.append(n)
        if n <= times:
            raise error(n)
        return f"done at {n}"

    return attempt, calls


def test_waits_double_up_to_the_cap_and_the_attempt_is_numbered():
    clock = Clock()
    attempt, calls = failing(4)
    result = retry(attempt, Backoff(5, 0.5, 1.5), sleep=clock.sleep, clock=clock)
    assert result == "done at 5" and calls == [1, 2, 3, 4, 5]
    assert clock.slept == [0.5, 1.0, 1.5, 1.5]


def test_the_last_error_is_kept_when_every_attempt_fails():
    clock = Clock()
    attempt, calls = failing(9)
    with pytest.raises(GaveUp) as gave_up:
        retry(attempt, Backoff(3, 0.1), sleep=clock.sleep, clock=clock)
    assert (gave_up.value.reason, gave_up.value.attempts, str(gave_up.value.last)) == (
        "attempts",
        3,
        "no 3",
    )
    assert calls == [1, 2, 3] and clock.slept == [0.1, 0.2]


def test_retry_after_is_waited_in_full_never_sooner():
    clock = Clock()
    attempt, _ = failing(2, lambda n: TryAgain("busy", retry_after=7.0 if n == 1 else 0.0))
    assert retry(attempt, Backoff(3, 0.5, 10), sleep=clock.sleep, clock=clock) == "done at 3"
    assert clock.slept == [7.0, 0.0]  # the server's waits, not the 0.5 s backoff


def test_a_wait_the_other_side_named_does_not_advance_the_backoff():
    clock = Clock()
    attempt, _ = failing(3, lambda n: TryAgain("busy", retry_after=7.0 if n == 1 else None))
    assert retry(attempt, Backoff(4, 0.5, 10), sleep=clock.sleep, clock=clock) == "done at 4"
    assert clock.slept == [7.0, 0.5, 1.0]  # the server's 7 s, then our backoff from its start


def test_an_acme_problems_retry_after_is_honoured_too():
    clock = Clock()
    attempt, _ = failing(
        1,
        lambda n: RateLimited(
            "urn:ietf:params:acme:error:rateLimited", "slow down", 429, retry_after=3
        ),
    )
    retry(attempt, Backoff(2, 0.5, 10), retry_on=RateLimited, sleep=clock.sleep, clock=clock)
    assert clock.slept == [3]


def test_a_retry_after_longer_than_the_cap_gives_up_at_once():
    clock = Clock()
    attempt, calls = failing(1, lambda n: TryAgain("later", retry_after=120.0))
    with pytest.raises(GaveUp) as gave_up:
        retry(attempt, Backoff(5, 0.5, 60), sleep=clock.sleep, clock=clock)
    assert (gave_up.value.reason, gave_up.value.wait_s, calls, clock.slept) == (
        "wait",
        120.0,
        [1],
        [],
    )


def test_no_wait_crosses_the_deadline_and_no_attempt_starts_after_it():
    clock = Clock()
    attempt, calls = failing(9)
    with pytest.raises(GaveUp) as gave_up:
        retry(attempt, Backoff(None, 1.0, 8.0), deadline=6.5, sleep=clock.sleep, clock=clock)
    # waits 1, 2 (t=3), then 4 would end at 7 > 6.5: give up without sleeping
    assert (gave_up.value.reason, gave_up.value.wait_s) == ("deadline", 4.0)
    assert calls == [1, 2, 3] and clock.slept == [1.0, 2.0]
    clock.now = 10.0
    late, late_calls = failing(0)
    with pytest.raises(GaveUp) as gave_up:
        retry(late, Backoff(3), deadline=10.0, sleep=clock.sleep, clock=clock)
    assert (gave_up.value.attempts, gave_up.value.last, late_calls) == (0, None, [])


def test_other_errors_are_not_retried():
    clock = Clock()
    attempt, calls = failing(1, lambda n: ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        retry(attempt, Backoff(3), sleep=clock.sleep, clock=clock)
    assert calls == [1] and clock.slept == []
