"""What an endpoint really serves: a TLS handshake (after PostgreSQL's SSLRequest when
needed) that returns the leaf certificate, compared with the store's current version."""

from __future__ import annotations

import socket
import ssl
import struct

from cryptography import x509

from secure_etl.identifiers import is_ip_address

# PostgreSQL's SSLRequest: length 8, code 1234.5679 (protocol §55.2.10).
SSL_REQUEST = struct.pack("!II", 8, 80877103)


class EndpointError(Exception):
    """The endpoint could not be reached or spoke no TLS; the message says which."""


def served_leaf(
    host: str, port: int, protocol: str = "tls", timeout_s: float = 10.0
) -> x509.Certificate:
    """The leaf certificate ``host:port`` presents. Nothing is verified here on purpose:
    the caller compares it with the certificate that should be served."""
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
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as err:
        raise EndpointError(f"{where}: {type(err).__name__}: {err}") from None
    if not der:
        raise EndpointError(f"{where}: no certificate presented")
    return x509.load_der_x509_certificate(der)


def stale_endpoints(endpoints, current: x509.Certificate) -> list[str]:
    """One line per endpoint that does not serve ``current`` (or cannot be reached)."""
    problems = []
    for endpoint in endpoints:
        where = f"{endpoint.host}:{endpoint.port}"
        try:
            served = served_leaf(endpoint.host, endpoint.port, endpoint.protocol)
        except EndpointError as err:
            problems.append(str(err))
            continue
        if served.serial_number != current.serial_number:
            problems.append(
                f"{where} serves serial {served.serial_number:x}, current is "
                f"{current.serial_number:x}"
            )
    return problems
