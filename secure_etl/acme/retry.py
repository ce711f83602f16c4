"""Retry an attempt: exponential backoff (capped), the other side's Retry-After (never
sooner), at most so many attempts, and one overall deadline that no wait may cross.

Generic (nothing ACME-specific): the notifier, the deploy actions, RFC 2136 updates and
the HTTPS source use it. It lives in ``acme/`` because that package may import only
itself; everything above may import it from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

T = TypeVar("T")


class TryAgain(Exception):
    """Raised by an attempt that may work if made again; ``retry_after``: the seconds the
    other side asked us to wait (its Retry-After), if it said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GaveUp(Exception):
    """No further attempt. ``last``: the last attempt's error (None if none ran);
    ``attempts``: how many ran; ``reason``: every attempt was used (``attempts``), the
    next wait would cross the deadline (``deadline``), or the other side asked for a
    wait longer than the backoff cap (``wait``); ``wait_s``: that wait."""

    def __init__(
        self,
        last: BaseException | None,
        attempts: int,
        reason: Literal["attempts", "deadline", "wait"],
        wait_s: float = 0.0,
    ) -> None:
        super().__init__(str(last) if last is not None else f"gave up ({reason})")
        self.last, self.attempts, self.reason, self.wait_s = last, attempts, reason, wait_s


@dataclass(frozen=True)
class Backoff:
    """At most ``attempts`` attempts (None: until the deadline), waiting ``first_s``
    after the first failure the other side named no wait for, doubling with each such
    failure up to ``max_s``. A Retry-After is waited out as given and does not advance
    the doubling; one longer than ``max_s`` is not waited for."""

    attempts: int | None = 3
    first_s: float = 0.5
    max_s: float = 60.0

    def delay(self, unguided: int) -> float:
        """Our wait after the ``unguided``-th failure the other side named no wait for."""
        return min(self.first_s * 2 ** (unguided - 1), self.max_s)


def retry(
    attempt: Callable[[int], T],
    backoff: Backoff,
    *,
    deadline: float | None = None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = TryAgain,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``attempt(n)`` (n = 1, 2, ...) until it returns, retrying on ``retry_on``.

    ``deadline`` is a ``clock()`` value: no attempt starts after it and no wait would
    end past it. An error with a ``retry_after`` (``TryAgain``, an ACME problem) is
    waited out in full, and the backoff then resumes where it was. ``on_retry(failures,
    error, wait_s)`` is told before each wait.
    Raises ``GaveUp`` (from the last error) when no further attempt will be made; any
    other error goes straight through."""
    failures, unguided, last = 0, 0, None
    while True:
        if deadline is not None and clock() >= deadline:
            raise GaveUp(last, failures, "deadline") from last
        try:
            return attempt(failures + 1)
        except retry_on as err:
            failures, last = failures + 1, err
        if backoff.attempts is not None and failures >= backoff.attempts:
            raise GaveUp(last, failures, "attempts") from last
        asked = getattr(last, "retry_after", None)
        if asked is not None and asked > backoff.max_s:
            raise GaveUp(last, failures, "wait", asked) from last
        if asked is None:
            unguided += 1
        wait = asked if asked is not None else backoff.delay(unguided)
        if deadline is not None and clock() + wait >= deadline:
            raise GaveUp(last, failures, "deadline", wait) from last
        if on_retry is not None:
            on_retry(failures, last, wait)
        sleep(wait)
