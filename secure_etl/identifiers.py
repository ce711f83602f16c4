"""What counts as a name: a certificate identifier (a DNS name or an IP address), a
SQL name (a schema, table or column the platform quotes into SQL) and a forward proxy's
address."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# The unquoted-identifier rule every database we read or load shares. Its length is each
# database's own: PostgreSQL's 63 bytes (the default, and the limit of any column, since a
# column may reach any destination), MariaDB/MySQL's 64 characters, BigQuery's 1,024.
SQL_NAME_LONGEST = 63
_SQL_FIRST, _SQL_REST = "A-Za-z_", "A-Za-z0-9_"
_SQL_NAME = re.compile(rf"[{_SQL_FIRST}][{_SQL_REST}]*")


def sql_name_pattern(longest: int = SQL_NAME_LONGEST) -> str:
    """The SQL-name rule as a regular expression (for a pydantic ``pattern``)."""
    return rf"^[{_SQL_FIRST}][{_SQL_REST}]{{0,{longest - 1}}}$"


def is_sql_name(value: str, longest: int = SQL_NAME_LONGEST) -> bool:
    """A plain SQL name: a letter or ``_``, then letters, digits or ``_``; at most
    ``longest`` of them."""
    return len(value) <= longest and _SQL_NAME.fullmatch(value) is not None


def is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_dns_name(value: str) -> bool:
    """A lower-case DNS name; a leading ``*.`` wildcard label is allowed."""
    labels = value.split(".")
    if labels[0] == "*":
        labels = labels[1:]
    return len(value) <= 253 and len(labels) >= 1 and all(_DNS_LABEL.match(x) for x in labels)


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
