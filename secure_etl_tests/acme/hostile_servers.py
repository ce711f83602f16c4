"""Real local HTTPS servers that misbehave on purpose, for the tests of a CA that lies.

``LyingProxy`` forwards every request to a real Pebble and, when asked, swaps the
certificate it downloads for a forged one. ``SlowServer`` answers with a body fed one
byte a second, or with a body far too large.
"""

from __future__ import annotations

import datetime as dt
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from secure_etl.pki.internal_ca import InternalCA
from secure_etl.pki.keys import generate_private_key

PEM_CHAIN = "application/pem-certificate-chain"
FORWARDED = ("Replay-Nonce", "Location", "Link", "Retry-After", "Content-Type", "Cache-Control")


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def _tls_context(workdir: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1 and the root that verifies it."""
    ca = InternalCA("hostile-tls", workdir / "tls-ca")
    served = ca.issue(["127.0.0.1", "localhost"], "server", generate_private_key("ec256"))
    (workdir / "cert.pem").write_bytes(served.fullchain_pem)
    (workdir / "key.pem").write_bytes(served.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(workdir / "cert.pem", workdir / "key.pem")
    return context, ca.root_path


class _Running:
    def __init__(self, handler: type[BaseHTTPRequestHandler], workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        context, self.ca_bundle = _tls_context(workdir)
        self.server = _Server(("127.0.0.1", 0), handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.server.owner = self  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _forward(self) -> None:
        proxy: LyingProxy = self.server.owner  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {"Host": self.headers["Host"]}  # Pebble builds its URLs from it
        for name in ("Content-Type", "Accept"):
            if self.headers.get(name):
                headers[name] = self.headers[name]
        upstream = httpx.request(
            self.command,
            proxy.upstream + self.path,
            content=body,
            headers=headers,
            verify=proxy.upstream_verify,
        )
        content = upstream.content
        if upstream.headers.get("Content-Type", "").startswith(PEM_CHAIN) and proxy.forge:
            content = proxy.forge(content)
            proxy.forged += 1
        self.send_response(upstream.status_code)
        for name in FORWARDED:
            for value in upstream.headers.get_list(name):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    do_GET = do_POST = do_HEAD = _forward  # noqa: N815 (the http.server API)


class LyingProxy(_Running):
    """HTTPS in front of a Pebble; ``forge`` (PEM chain -> PEM chain) rewrites downloads."""

    def __init__(self, pebble, workdir: Path) -> None:
        self.upstream = f"https://127.0.0.1:{pebble.ports['listen']}"
        self.upstream_verify = pebble.verify()
        self.forge: Callable[[bytes], bytes] | None = None
        self.forged = 0
        super().__init__(_ProxyHandler, workdir)

    @property
    def directory_url(self) -> str:
        return f"{self.base_url}/dir"


def through(proxy: LyingProxy, platform, write_config, change=None):
    """``platform`` (a PlatformConfig with an issuer ``pebble``) talking to Pebble
    through ``proxy``; ``change(data)`` may edit the config data first."""
    import json

    from secure_etl.config import load_config

    data = json.loads(json.dumps(platform.model_dump(exclude_none=True)))
    data["issuers"]["pebble"]["directory_url"] = proxy.directory_url
    data["issuers"]["pebble"]["server_ca_bundle"] = str(proxy.ca_bundle)
    if change:
        change(data)
    return load_config(write_config(data, f"through-proxy-{proxy.port}.yaml"))


def server_auth_only_ca(proxy: LyingProxy, workdir: Path) -> Path:
    """Make ``proxy`` re-issue every download as a CA that gives serverAuth only (as public
    CAs now do; Pebble 2.4 still adds clientAuth); returns that CA's root file."""
    ca = InternalCA("server-auth-only", workdir)
    root = ca.ensure_root()
    proxy.forge = lambda pem: forged_leaf(pem, server_auth_only=True, issuer=root)
    return ca.root_path


def forged_leaf(
    chain_pem: bytes,
    *,
    names: list[str] | None = None,
    new_key: bool = False,
    server_auth_only: bool = False,
    issuer: tuple[x509.Certificate, object] | None = None,
) -> bytes:
    """The chain with its leaf replaced: the same certificate but for another key, other
    names or only serverAuth, signed by a key of our own (what a lying CA or a man in the
    middle sends) or by ``issuer`` (a root and its key; the chain is then leaf + root)."""
    leaf, *rest = x509.load_pem_x509_certificates(chain_pem)
    signer = generate_private_key("ec256") if issuer is None else issuer[1]
    if issuer is not None:
        rest = [issuer[0]]
    public = generate_private_key("ec256").public_key() if new_key else leaf.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(leaf.issuer if issuer is None else issuer[0].subject)
        .public_key(public)
        .serial_number(leaf.serial_number)
        .not_valid_before(leaf.not_valid_before_utc)
        .not_valid_after(leaf.not_valid_after_utc)
    )
    for ext in leaf.extensions:
        value = ext.value
        if isinstance(value, x509.SubjectKeyIdentifier | x509.AuthorityKeyIdentifier):
            continue
        if names is not None and isinstance(value, x509.SubjectAlternativeName):
            value = x509.SubjectAlternativeName([x509.DNSName(n) for n in names])
        if server_auth_only and isinstance(value, x509.ExtendedKeyUsage):
            value = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
        builder = builder.add_extension(value, ext.critical)
    cert = builder.sign(signer, hashes.SHA256())
    pems = [c.public_bytes(serialization.Encoding.PEM) for c in (cert, *rest)]
    return b"".join(pems)


class _SlowHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        owner: SlowServer = self.server.owner  # type: ignore[attr-defined]
        owner.requests += 1
        if self.path == "/huge":
            body = b'{"pad": "' + b"x" * (8 << 20) + b'"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass  # the client hung up: that is the point
            return
        if self.path == "/huge-chunked":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"x" * 65536
            try:
                for _ in range(256):  # 16 MiB unless the client hangs up first
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            return
        if self.path == "/drip-headers":
            # The status line and headers themselves, one byte a second: only a deadline
            # on the socket can end this (each read gets its byte well within a timeout).
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"X-Pad: " * 100
            try:
                for byte in head:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(1)
            except OSError:
                owner.hung_up_at = dt.datetime.now(dt.UTC)
            return
        # /drip: a directory-sized body, one byte a second.
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "600")
        self.end_headers()
        try:
            for _ in range(600):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(1)
        except OSError:
            owner.hung_up_at = dt.datetime.now(dt.UTC)


class SlowServer(_Running):
    """``/drip`` feeds its body one byte a second, ``/drip-headers`` its headers; ``/huge``
    and ``/huge-chunked`` send 8-16 MiB."""

    def __init__(self, workdir: Path) -> None:
        self.requests = 0
        self.hung_up_at: dt.datetime | None = None
        super().__init__(_SlowHandler, workdir)
