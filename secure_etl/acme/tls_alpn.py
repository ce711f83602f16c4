"""tls-alpn-01 (RFC 8737, RFC 8738 for IP addresses) from a TLS listener of our own.

For each identifier being validated the listener holds a self-signed certificate whose
only SAN is the identifier and whose critical ``id-pe-acmeIdentifier`` extension holds
SHA-256(key authorization); it is chosen by the SNI the CA sends (an IP address arrives
as its ``in-addr.arpa``/``ip6.arpa`` name). Only ``acme-tls/1`` is offered; Python's ssl
cannot refuse a client before the certificate is sent, so a connection that did not
negotiate ``acme-tls/1`` is closed right after the handshake, and no connection ever
carries data. A name with no pending challenge gets no certificate at all.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import socket
import ssl
import tempfile
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from secure_etl.acme.challenges import SharedListener, SolverError

ACME_TLS_1 = "acme-tls/1"
ID_PE_ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
HANDSHAKE_TIMEOUT_S = 10.0


def sni_name(identifier: str) -> str:
    """The TLS server name the CA sends for an identifier (RFC 8738 §6 for addresses)."""
    try:
        return ipaddress.ip_address(identifier).reverse_pointer
    except ValueError:
        return identifier.rstrip(".").lower()


def validation_certificate(identifier: str, key_authorization: str) -> tuple[bytes, bytes]:
    """A self-signed certificate (PEM) for one identifier, and its key (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(identifier))
    except ValueError:
        san = x509.DNSName(identifier.rstrip("."))
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    # The extension's value is the DER OCTET STRING of the digest (RFC 8737 §3).
    acme_identifier = x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, b"\x04\x20" + digest)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme tls-alpn-01")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(acme_identifier, critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _context(cert_pem: bytes | None = None, key_pem: bytes | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ACME_TLS_1])
    if cert_pem is not None and key_pem is not None:
        # ssl loads certificates from files only: a private directory, gone right after.
        with tempfile.TemporaryDirectory(prefix="tls-alpn-") as tmp:
            cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            cert_path.write_bytes(cert_pem)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(key_pem)
            context.load_cert_chain(cert_path, key_path)
    return context


class _TlsListener(SharedListener):
    """The tls-alpn-01 certificates, chosen by SNI on a TLS listener."""

    def __init__(self, address: str, port: int) -> None:
        self.contexts: dict[str, ssl.SSLContext] = {}
        self._stop = threading.Event()
        try:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            self.socket = socket.create_server((address, port), family=family)
        except OSError as err:
            raise SolverError(
                f"tls-alpn-01: cannot listen on {address}:{port}: "
                f"{os.strerror(err.errno) if err.errno else err}"
            ) from None
        self.socket.settimeout(0.05)  # how long close() may wait for the accept loop
        # The default context has no certificate: a name we hold no challenge for fails.
        self.default = _context()
        self.default.sni_callback = self._choose
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _choose(self, sock: ssl.SSLObject, server_name: str | None, _) -> None:
        context = self.contexts.get((server_name or "").rstrip(".").lower())
        if context is not None:
            sock.context = context

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handshake, args=(conn,), daemon=True).start()

    def _handshake(self, conn: socket.socket) -> None:
        conn.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            # The handshake is the whole protocol: no data, close at once (RFC 8737 §4).
            self.default.wrap_socket(conn, server_side=True).close()
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def _close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.socket.close()


class TlsAlpn01:
    """Answers tls-alpn-01 from a listener of its own (shared within the process); the
    listener starts on first use and stops when the last solver using it is closed."""

    challenge_type = "tls-alpn-01"

    def __init__(self, address: str = "0.0.0.0", port: int = 443) -> None:  # noqa: S104
        self.address, self.port = address, port
        self._listener: _TlsListener | None = None
        self._names: dict[str, str] = {}  # token -> SNI name

    def present(self, identifier: str, token: str, key_authorization: str) -> None:
        if identifier.startswith("*."):
            raise SolverError(
                f"tls-alpn-01 cannot validate the wildcard {identifier} (RFC 8737 §3): "
                "use dns-01 for it"
            )
        if self._listener is None:
            self._listener = _TlsListener.acquire(self.address, self.port)
        name = sni_name(identifier)
        self._listener.contexts[name] = _context(
            *validation_certificate(identifier, key_authorization)
        )
        self._names[token] = name

    def cleanup(self, identifier: str, token: str) -> None:
        name = self._names.pop(token, None)
        if self._listener is not None and name is not None:
            self._listener.contexts.pop(name, None)

    def close(self) -> None:
        if self._listener is not None:
            for name in self._names.values():
                self._listener.contexts.pop(name, None)
            self._names.clear()
            self._listener.release()
            self._listener = None
