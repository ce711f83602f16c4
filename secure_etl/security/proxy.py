"""A forward proxy for outbound HTTPS: every request goes through an HTTP CONNECT tunnel,
so TLS (mutual TLS included) runs end to end between us and the server and the proxy
sees only the host and port it connects to. Its credentials (Basic auth, sent to the
proxy alone in the CONNECT request) come from environment variables the config names.

Plain-http targets are refused by the callers: the proxy would read them. No httpx at
import time: ``config.py`` checks proxy URLs with ``proxy_url_problem`` and must stay light.
"""

from __future__ import annotations

import os
import ssl
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from secure_etl.errors import UserError

if TYPE_CHECKING:
    import httpx


class ProxyError(UserError):
    """A proxy that cannot be used as configured (a credential missing from the environment)."""


def proxy_url_problem(url: str) -> str | None:
    """Why ``url`` is no proxy address (``http://host:port`` or ``https://host:port``), or
    None. The URL itself is never echoed: it may hold a password."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return "not a URL; give http://host:port"
    if "@" in parts.netloc:
        return (
            "credentials in the proxy URL are refused: name the environment variables "
            "holding them in username_env and password_env"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http:// or https:// proxy address; give http://host:port"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "a proxy address is scheme://host:port, without path or query"
    return None


def _env(variable: str, key: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise ProxyError(
            f"proxy.{key}: the environment variable {variable} is not set (or is empty); "
            "set it where the platform runs"
        )
    return value


def outbound_proxy(
    url: str,
    ca_bundle: str | None = None,
    username_env: str | None = None,
    password_env: str | None = None,
) -> httpx.Proxy:
    """The proxy at ``url`` for an httpx client (``proxy=``); an https:// proxy is verified
    against ``ca_bundle`` (default: the system roots); ProxyError names a missing variable."""
    import httpx

    problem = proxy_url_problem(url)
    if problem:
        raise ProxyError(f"proxy.url: {problem}")
    auth = None
    if username_env or password_env:
        auth = (_env(username_env or "", "username_env"), _env(password_env or "", "password_env"))
    context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None
    return httpx.Proxy(url, auth=auth, ssl_context=context)
