"""dns-01 through RFC 2136 dynamic updates signed with TSIG (BIND, Knot, PowerDNS...)."""

from __future__ import annotations

import time

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

from secure_etl.acme.challenges import SolverError
from secure_etl.acme.propagation import hostport, wait_for_txt
from secure_etl.acme.retry import Backoff, GaveUp, retry

__all__ = ["TSIG_ALGORITHMS", "Rfc2136Provider", "wait_for_txt"]  # wait_for_txt: old home

TSIG_ALGORITHMS = {
    "hmac-sha256": "hmac-sha256.",
    "hmac-sha384": "hmac-sha384.",
    "hmac-sha512": "hmac-sha512.",
}

EXCHANGE_RETRY = Backoff(attempts=3, first_s=0.2, max_s=1.0)
_TRANSIENT = (dns.exception.Timeout, ConnectionError)


class Rfc2136Provider:
    """Adds and removes TXT records at ``server`` (host or host:port) with a TSIG key."""

    def __init__(
        self,
        server: str,
        key_name: str,
        key_secret: str,
        *,
        algorithm: str = "hmac-sha256",
        zone: str | None = None,
        ttl: int = 60,
        timeout_s: float = 10.0,
    ) -> None:
        if algorithm not in TSIG_ALGORITHMS:
            raise ValueError(f"unknown TSIG algorithm {algorithm!r} ({', '.join(TSIG_ALGORITHMS)})")
        self.host, self.port = hostport(server)
        self.keyring = dns.tsigkeyring.from_text({key_name: key_secret})
        self.key_name, self.algorithm = key_name, TSIG_ALGORITHMS[algorithm]
        self.zone, self.ttl, self.timeout_s = zone, ttl, timeout_s

    def _exchange(self, send, message: dns.message.Message) -> dns.message.Message:
        """``send`` (UDP or TCP) ``message``, again after a timeout or a refused or reset
        connection (a server restarting), all within ``timeout_s``; an update adds or
        deletes one exact record, so sending it twice does no harm."""
        deadline = time.monotonic() + self.timeout_s

        def once(_attempt: int) -> dns.message.Message:
            left = max(0.001, deadline - time.monotonic())
            return send(message, self.host, left, port=self.port)

        try:
            return retry(once, EXCHANGE_RETRY, deadline=deadline, retry_on=_TRANSIENT)
        except GaveUp as gave_up:
            raise gave_up.last or dns.exception.Timeout() from None

    def _zone_of(self, fqdn: str) -> dns.name.Name:
        """The configured zone, else the closest enclosing name the server has an SOA for."""
        if self.zone:
            return dns.name.from_text(self.zone)
        name = dns.name.from_text(fqdn)
        while name != dns.name.root:
            query = dns.message.make_query(name, dns.rdatatype.SOA)
            try:
                answer = self._exchange(dns.query.udp, query)
            except (dns.exception.DNSException, OSError) as err:
                raise SolverError(
                    f"dns-01 rfc2136: SOA query to {self.host}:{self.port}: {err}"
                ) from None
            if any(r.rdtype == dns.rdatatype.SOA and r.name == name for r in answer.answer):
                return name
            name = name.parent()
        raise SolverError(f"dns-01 rfc2136: {self.host}:{self.port} serves no zone for {fqdn}")

    def _send(self, fqdn: str, value: str, action: str) -> None:
        zone = self._zone_of(fqdn)
        update = dns.update.UpdateMessage(
            zone, keyring=self.keyring, keyname=self.key_name, keyalgorithm=self.algorithm
        )
        name = dns.name.from_text(fqdn)
        if action == "add":
            update.add(name, self.ttl, dns.rdatatype.TXT, f'"{value}"')
        else:
            update.delete(name, dns.rdatatype.TXT, f'"{value}"')
        try:
            response = self._exchange(dns.query.tcp, update)
        except dns.tsig.PeerError as err:
            raise SolverError(
                f"dns-01 rfc2136 {action} {fqdn}: {self.host}:{self.port} refused the TSIG "
                f"signature of key {self.key_name!r} ({type(err).__name__}): check the key "
                "name, algorithm and secret"
            ) from None
        except (dns.exception.DNSException, OSError) as err:
            raise SolverError(
                f"dns-01 rfc2136 {action} {fqdn}: {type(err).__name__}: {err}"
            ) from None
        if response.rcode() != dns.rcode.NOERROR:
            raise SolverError(
                f"dns-01 rfc2136 {action} {fqdn} in zone {zone}: the server answered "
                f"{dns.rcode.to_text(response.rcode())}"
            )

    def set_txt(self, fqdn: str, value: str) -> None:
        self._send(fqdn, value, "add")

    def clear_txt(self, fqdn: str, value: str) -> None:
        self._send(fqdn, value, "delete")
