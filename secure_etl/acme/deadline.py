"""A deadline for a whole exchange over TLS, headers and handshake included.

httpx's timeouts bound each socket operation, not a request: a peer that sends one byte
just before every read times out keeps a request alive as long as it likes, and checks
between body chunks cannot help while the status line and headers are still arriving.
A context made deadline-aware here (through the documented ``SSLContext.sslsocket_class``
hook, no private httpx or httpcore API) gives every socket it wraps a timeout no longer
than the time left before the deadline set by ``deadline()`` in the calling thread, so
the exchange ends at the deadline whatever the peer does. Without an active deadline
the sockets behave exactly as plain ``ssl.SSLSocket``s.

Generic (nothing ACME-specific); it lives in ``acme/`` because that package may import
only itself, and the HTTPS source imports it from here.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_active = threading.local()


class DeadlinePassed(TimeoutError):
    """The deadline passed during a socket operation (httpx reports it as a timeout)."""


@contextmanager
def deadline(at: float | None) -> Iterator[None]:
    """Inside, no deadline-aware socket in this thread waits past ``at`` (a
    ``time.monotonic()`` value); None adds none. An outer, earlier deadline still holds."""
    outer = getattr(_active, "at", None)
    if at is not None and (outer is None or at < outer):
        _active.at = at
    try:
        yield
    finally:
        _active.at = outer


def bounded(context: ssl.SSLContext) -> ssl.SSLContext:
    """``context``, whose sockets from now on honour ``deadline()`` (returned for chaining)."""
    context.sslsocket_class = _DeadlineSocket
    return context


class _DeadlineSocket(ssl.SSLSocket):
    def _narrow(self) -> None:
        at = getattr(_active, "at", None)
        if at is None:
            return
        left = at - time.monotonic()
        if left <= 0:
            raise DeadlinePassed("the deadline passed")
        current = self.gettimeout()
        if current is None or current > left:
            self.settimeout(left)

    def do_handshake(self, *args, **kwargs):
        self._narrow()
        return super().do_handshake(*args, **kwargs)

    def recv(self, *args, **kwargs):
        self._narrow()
        return super().recv(*args, **kwargs)

    def recv_into(self, *args, **kwargs):
        self._narrow()
        return super().recv_into(*args, **kwargs)

    def read(self, *args, **kwargs):
        self._narrow()
        return super().read(*args, **kwargs)

    def send(self, *args, **kwargs):
        self._narrow()
        return super().send(*args, **kwargs)

    def sendall(self, *args, **kwargs):
        self._narrow()
        return super().sendall(*args, **kwargs)
