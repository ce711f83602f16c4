"""What counts as a name: a certificate identifier (a DNS name or an IP address) and a
SQL name (a schema, table or column the platform quotes into SQL)."""

from __future__ import annotations

import ipaddress
import re

_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# Unquoted-identifier rules every database we load shares, within PostgreSQL's 63 bytes.
SQL_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
_SQL_NAME = re.compile(SQL_NAME_PATTERN)


def is_sql_name(value: str) -> bool:
    """A plain SQL name: a letter or ``_``, then letters, digits or ``_``; 63 at most."""
    return bool(_SQL_NAME.match(value))


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
