"""Is a dns-01 record visible yet? Ask the zone's own authoritative servers.

The zone of a record name is found by SOA lookups walking up its labels, its name
servers from its NS set, their addresses from A/AAAA; each is then asked directly until
all of them answer the TXT value. The lookups start from a resolver (default: the
system's); the authoritative servers are asked on ``port`` (53 but in tests). A list of
servers given by the user replaces the discovery.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rdatatype
import dns.resolver

from secure_etl.acme.challenges import SolverError

_QUERY_TIMEOUT_S = 5.0


def hostport(server: str, default_port: int = 53) -> tuple[str, int]:
    """``host``, ``host:port``, ``v6addr`` or ``[v6addr]:port`` as (host, port)."""
    if server.startswith("[") and "]" in server:
        host, _, rest = server[1:].partition("]")
        return host, int(rest.removeprefix(":")) if rest.startswith(":") else default_port
    host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
    return (host, int(port)) if port else (server, default_port)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_resolver(server: str | None = None, timeout_s: float = _QUERY_TIMEOUT_S):
    """A stub resolver: the system's (``server`` None) or one at ``host[:port]``."""
    if server is None:
        resolver = dns.resolver.Resolver()
    else:
        host, port = hostport(server)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port = [host], port
    resolver.lifetime = timeout_s
    return resolver


def authoritative_servers(
    fqdn: str, resolver: str | None = None, port: int = 53
) -> tuple[str, list[str]]:
    """The zone containing ``fqdn`` and its name servers' addresses as ``host:port``,
    looked up through ``resolver`` (``host[:port]``; default: the system resolver)."""
    stub = make_resolver(resolver)
    where = f"resolver {resolver}" if resolver else "the system resolver"
    try:
        zone = dns.resolver.zone_for_name(fqdn, resolver=stub, lifetime=_QUERY_TIMEOUT_S)
        names = sorted(str(r.target) for r in stub.resolve(zone, dns.rdatatype.NS))
    except (dns.exception.DNSException, OSError) as err:
        raise SolverError(
            f"dns-01: cannot find the authoritative servers of {fqdn} through {where}: "
            f"{type(err).__name__}: {err}"
        ) from None
    addresses: list[str] = []
    for name in names:
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = stub.resolve(name, rdtype, raise_on_no_answer=False)
            except (dns.exception.DNSException, OSError):
                continue
            addresses += [_join(r.address, port) for r in answer.rrset or []]
    if not addresses:
        raise SolverError(
            f"dns-01: no address found for the name servers of zone {zone} "
            f"({', '.join(names)}) through {where}"
        )
    return str(zone), sorted(set(addresses))


def _txt_values(fqdn: str, server: str, timeout_s: float) -> set[str]:
    host, port = hostport(server)
    query = dns.message.make_query(fqdn, dns.rdatatype.TXT)
    answer, _ = dns.query.udp_with_fallback(query, host, timeout_s, port=port)
    return {
        b"".join(r.strings).decode()
        for rrset in answer.answer
        if rrset.rdtype == dns.rdatatype.TXT
        for r in rrset
    }


def wait_for_txt(
    fqdn: str, value: str, servers: Sequence[str], timeout_s: float = 60.0, interval_s=0.2
) -> float:
    """Block until every server answers the TXT value; returns the seconds it took."""
    started = time.monotonic()
    pending = list(servers)
    last_error = ""
    while pending:
        try:
            left = timeout_s - (time.monotonic() - started)
            if value in _txt_values(fqdn, pending[0], min(_QUERY_TIMEOUT_S, max(left, 0.2))):
                pending.pop(0)
                continue
            last_error = f"{pending[0]} does not serve it yet"
        except (dns.exception.DNSException, OSError) as err:
            last_error = f"{pending[0]}: {type(err).__name__}"
        if time.monotonic() - started > timeout_s:
            raise SolverError(
                f"dns-01: TXT {fqdn} not visible within {timeout_s:.0f} s ({last_error})"
            )
        time.sleep(interval_s)
    return time.monotonic() - started


def wait_for_authoritative(
    fqdn: str,
    value: str,
    *,
    resolver: str | None = None,
    port: int = 53,
    timeout_s: float = 120.0,
    interval_s: float = 0.5,
) -> float:
    """Find the zone's authoritative servers, then wait until all of them serve it."""
    started = time.monotonic()
    _, servers = authoritative_servers(fqdn, resolver, port)
    left = max(timeout_s - (time.monotonic() - started), 0.0)
    wait_for_txt(fqdn, value, servers, left, interval_s)
    return time.monotonic() - started


def propagation_wait(
    servers: Sequence[str] | None = None,
    *,
    resolver: str | None = None,
    port: int = 53,
    timeout_s: float = 120.0,
) -> Callable[[str, str], float]:
    """The ``wait`` for ``Dns01``: the given servers, else the discovered ones."""
    if servers:
        fixed = list(servers)
        return lambda fqdn, value: wait_for_txt(fqdn, value, fixed, timeout_s)
    return lambda fqdn, value: wait_for_authoritative(
        fqdn, value, resolver=resolver, port=port, timeout_s=timeout_s
    )
