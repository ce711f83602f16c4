"""The lowest TLS version a connection accepts, as the security policy sets it: one
name per version for the config ("1.2", "1.3"), Python's ``ssl`` constant and libpq's
``ssl_min_protocol_version`` spelling. A leaf module (only ``ssl``): every connector,
the alert channels and the ACME transport read it."""

from __future__ import annotations

import ssl

DEFAULT_MIN_TLS = "1.3"  # the policy's default (RFC 8446); every peer we test offers it
_SSL = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_LIBPQ = {"1.2": "TLSv1.2", "1.3": "TLSv1.3"}


def at_least(context: ssl.SSLContext, version: str | None) -> ssl.SSLContext:
    """``context`` refusing anything below ``version`` (None: the default); returned."""
    context.minimum_version = _SSL[version or DEFAULT_MIN_TLS]
    return context


def verifying_context(cafile: str | None, version: str | None) -> ssl.SSLContext:
    """A client context that verifies the server (against ``cafile``, else the system
    roots) and its name, at ``version`` or above."""
    return at_least(ssl.create_default_context(cafile=cafile), version)


def libpq_minimum(version: str | None) -> str:
    """libpq's ``ssl_min_protocol_version`` value for ``version``."""
    return _LIBPQ[version or DEFAULT_MIN_TLS]
