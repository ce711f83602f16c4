"""What an endpoint really serves: a TLS handshake (after PostgreSQL's SSLRequest when
needed) that returns the certificates it presents, compared by SHA-256 fingerprint with
the store's current version. A serial number proves nothing: anyone can copy it."""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from secure_etl.identifiers import is_ip_address

# PostgreSQL's SSLRequest: length 8, code 1234.5679 (protocol §55.2.10).
SSL_REQUEST = struct.pack("!II", 8, 80877103)


class EndpointError(Exception):
    """The endpoint could not be reached or spoke no TLS; the message says which."""


def short_fingerprint(cert: x509.Certificate) -> str:
    """The first 16 hex digits of the SHA-256 fingerprint, for messages: sha256:1a2b..."""
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()[:16]


def served_chain(
    host: str, port: int, protocol: str = "tls", timeout_s: float = 10.0
) -> list[x509.Certificate]:
    """The certificates ``host:port`` presents, leaf first. Nothing is verified here on
    purpose: the caller compares them with the certificates that should be served."""
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            if protocol == "postgres":
                raw.sendall(SSL_REQUEST)
                answer = raw.recv(1)
                if answer != b"S":
                    raise EndpointError(f"{where}: PostgreSQL refused TLS (answered {answer!r})")
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            name = None if is_ip_address(host) else host
            with context.wrap_socket(raw, server_hostname=name) as tls:
                leaf = tls.getpeercert(binary_form=True)
                ders = _unverified_chain(tls) or ([leaf] if leaf else [])
    except (OSError, ssl.SSLError) as err:
        raise EndpointError(f"{where}: {type(err).__name__}: {err}") from None
    if not ders:
        raise EndpointError(f"{where}: no certificate presented")
    try:
        return [x509.load_der_x509_certificate(der) for der in ders]
    except ValueError as err:
        raise EndpointError(f"{where}: presented a broken certificate ({err})") from None


def _unverified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """The DER certificates the peer sent, leaf first (empty if Python cannot tell).

    ``SSLSocket.get_unverified_chain`` is public from Python 3.13; 3.10 to 3.12 have the
    same call on the private ``_sslobj``, returning certificate objects. This is the only
    use of that private API; with neither, the caller falls back to the leaf alone."""
    public = getattr(tls, "get_unverified_chain", None)
    if public is not None:
        return list(public() or [])
    private = getattr(getattr(tls, "_sslobj", None), "get_unverified_chain", None)
    if private is None:
        return []
    return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in private() or []]  # noqa: SLF001


def served_leaf(
    host: str, port: int, protocol: str = "tls", timeout_s: float = 10.0
) -> x509.Certificate:
    """The leaf certificate ``host:port`` presents (see ``served_chain``)."""
    return served_chain(host, port, protocol, timeout_s)[0]


def chain_mismatch(
    served: Sequence[x509.Certificate], current: Sequence[x509.Certificate]
) -> str | None:
    """How the served chain differs from ``current`` (leaf first), or None if it is the
    same as far as the server sends it; fingerprints name both sides, serials help humans."""
    if served[0].fingerprint(hashes.SHA256()) != current[0].fingerprint(hashes.SHA256()):
        same = served[0].serial_number == current[0].serial_number
        return (
            f"serves {short_fingerprint(served[0])} (serial {served[0].serial_number:x}), "
            f"current is {short_fingerprint(current[0])} (serial {current[0].serial_number:x})"
            + ("; same serial, different certificate" if same else "")
        )
    for position, (got, wanted) in enumerate(zip(served[1:], current[1:], strict=False), 2):
        if got.fingerprint(hashes.SHA256()) != wanted.fingerprint(hashes.SHA256()):
            return (
                f"serves the current leaf, but chain certificate {position} is "
                f"{short_fingerprint(got)} ({got.subject.rfc4514_string()}), current is "
                f"{short_fingerprint(wanted)} ({wanted.subject.rfc4514_string()})"
            )
    return None


def stale_endpoints(endpoints, current: Sequence[x509.Certificate]) -> list[str]:
    """One line per endpoint that does not serve the ``current`` chain (or cannot be
    reached)."""
    problems = []
    for endpoint in endpoints:
        where = f"{endpoint.host}:{endpoint.port}"
        try:
            served = served_chain(endpoint.host, endpoint.port, endpoint.protocol)
        except EndpointError as err:
            problems.append(str(err))
            continue
        mismatch = chain_mismatch(served, current)
        if mismatch:
            problems.append(f"{where} {mismatch}")
    return problems
