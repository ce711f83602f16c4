"""A forward proxy for outbound HTTPS: every request goes through an HTTP CONNECT tunnel,
so TLS (mutual TLS included) runs end to end between us and the server and the proxy
sees only the host and port it connects to. Its credentials (Basic auth, sent to the
proxy alone in the CONNECT request) come from environment variables the config names.

Plain-http targets are refused by the callers: the proxy would read them. An https://
proxy gets a context of its own, which callers make deadline-aware like their own.
"""

from __future__ import annotations

import os
import ssl

import httpx

from secure_etl.errors import UserError
from secure_etl.identifiers import proxy_url_problem


class ProxyError(UserError):
    """A proxy that cannot be used as configured (a credential missing from the environment)."""


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
    problem = proxy_url_problem(url)
    if problem:
        raise ProxyError(f"proxy.url: {problem}")
    auth = None
    if username_env or password_env:
        auth = (_env(username_env or "", "username_env"), _env(password_env or "", "password_env"))
    https = url.lower().startswith("https://")
    context = ssl.create_default_context(cafile=ca_bundle) if https else None
    return httpx.Proxy(url, auth=auth, ssl_context=context)


def configured_proxy(config) -> httpx.Proxy | None:
    """The proxy a config's ``proxy:`` section names (a ``ProxyConfig``), None without one;
    ProxyError as ``outbound_proxy``."""
    if config is None:
        return None
    return outbound_proxy(config.url, config.ca_bundle, config.username_env, config.password_env)
