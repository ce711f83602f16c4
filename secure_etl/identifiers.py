"""What counts as a certificate identifier: a DNS name or an IP address."""

from __future__ import annotations

import ipaddress
import re

_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


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
