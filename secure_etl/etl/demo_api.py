"""The offline demo's HTTPS API: the synthetic customers as JSON pages over mutual TLS.

A stdlib ``http.server`` on 127.0.0.1 that presents a server certificate from the store
(``<certificate_dir>/current``, re-read when that link moves, so a renewal takes effect at
the next connection), requires a client certificate that chains to ``ca_bundle`` and
speaks TLS 1.2 at least. ``GET /customers?start=<ISO>&end=<ISO>`` answers the hour's
rows (``generate_partition``, so the same seed gives the same rows) in pages of
``{"data": [...], "next": "/customers?...&page=N"}``, the shape the ``https_api``
source reads. It records what it saw: the SHA-256 fingerprint of every client
certificate it accepted and every handshake it refused, so a test or the demo's summary
can show that the connection really was mutual TLS.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import hashlib
import json
import os
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pandas as pd

from secure_etl.etl.sources.demo import generate_partition

HOST = "127.0.0.1"  # loopback only: the demo serves no one else
PATH = "/customers"
HANDSHAKE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class DemoApiSettings:
    """What to serve and with which certificate; ``port`` 0 takes a free one."""

    port: int
    certificate_dir: Path  # the store's <root>/<name>: current/fullchain.pem, privkey.pem
    ca_bundle: Path  # client certificates must chain to these roots
    rows_per_partition: int = 1000
    seed: int = 0
    bad_row_rate: float = 0.005
    page_size: int = 250


@dataclass
class Seen:
    """What the server observed: client certificates accepted (SHA-256 hex of the DER ->
    connections), requests answered, handshakes refused (why, one line each)."""

    clients: Counter = field(default_factory=Counter)
    requests: int = 0
    refused: list[str] = field(default_factory=list)
    protocols: set[str] = field(default_factory=set)


class DemoApiServer(ThreadingHTTPServer):
    """The API on ``HOST``; ``serve_in_thread`` runs it until ``stop``."""

    daemon_threads = True
    allow_reuse_port = False  # a second server on the port would take half the connections

    def __init__(self, settings: DemoApiSettings) -> None:
        self.settings = settings
        self.seen = Seen()
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None
        self._version: str | None = None
        self._thread: threading.Thread | None = None
        self._records: dict[str, list[dict]] = {}
        super().__init__((HOST, settings.port), _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def origin(self) -> str:
        return f"https://{HOST}:{self.port}"

    def serve_in_thread(self) -> DemoApiServer:
        self._thread = threading.Thread(
            target=self.serve_forever, name=f"demo-api-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def tls_context(self) -> ssl.SSLContext:
        """The context for the certificate ``current`` points at now; rebuilt only when
        the link has moved (a renewal or rollback)."""
        current = self.settings.certificate_dir / "current"
        version = os.readlink(current)  # FileNotFoundError: nothing issued yet
        with self._lock:
            if version != self._version or self._context is None:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS
                context.load_verify_locations(cafile=str(self.settings.ca_bundle))
                directory = self.settings.certificate_dir / version  # one version's files
                context.load_cert_chain(directory / "fullchain.pem", directory / "privkey.pem")
                self._context, self._version = context, version
            return self._context

    def get_request(self) -> tuple[socket.socket, tuple]:
        raw, address = self.socket.accept()
        try:
            context = self.tls_context()
        except (OSError, ssl.SSLError) as err:
            raw.close()
            self._refuse(f"no usable server certificate: {err}")
            raise OSError("refused") from None  # socketserver drops the request
        # The handshake happens in the request's own thread (finish_request), so a slow
        # or silent client never holds up the accept loop.
        return context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False), address

    def finish_request(self, request, client_address) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            request.do_handshake()
        except (OSError, ssl.SSLError) as err:
            self._refuse(_why(err))
            return
        der = request.getpeercert(binary_form=True)
        with self._lock:
            self.seen.clients[hashlib.sha256(der).hexdigest()] += 1
            self.seen.protocols.add(request.version() or "")
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        # A client that hangs up mid-answer is its own business; no traceback on stderr.
        pass

    def _refuse(self, why: str) -> None:
        with self._lock:
            self.seen.refused.append(why)

    def counted_request(self) -> None:
        with self._lock:
            self.seen.requests += 1

    def records(self, partition: str) -> list[dict]:
        """The partition's rows as JSON objects (made once per partition): ids and times
        as strings, a bad row's missing id as null."""
        with self._lock:
            if partition not in self._records:
                self._records[partition] = self._generate(partition)
            return self._records[partition]

    def _generate(self, partition: str) -> list[dict]:
        s = self.settings
        frame = generate_partition(partition, s.rows_per_partition, s.seed, s.bad_row_rate)
        out = []
        for row in frame.itertuples(index=False):
            out.append(
                {
                    "customer_id": None if pd.isna(row.customer_id) else str(row.customer_id),
                    "full_name": row.full_name,
                    "email": row.email,
                    "phone": row.phone,
                    "country": row.country,
                    "signup_at": row.signup_at.isoformat(),
                    "amount_eur": float(row.amount_eur),
                }
            )
        return out


def _why(err: Exception) -> str:
    """A refused handshake in one line: OpenSSL's reason when it gives one."""
    reason = getattr(err, "reason", None)
    return (reason or f"{type(err).__name__}: {err}").lower().replace("_", " ")


def partition_of(query: dict[str, list[str]]) -> str:
    """The partition key ``start`` and ``end`` stand for (an hour, or a cron partition
    of whole minutes up to an hour); ValueError if they are missing or another span."""
    try:
        start = dt.datetime.fromisoformat(query["start"][0])
        end = dt.datetime.fromisoformat(query["end"][0])
    except (KeyError, IndexError, ValueError):
        raise ValueError("start and end must be ISO-8601 times (up to one hour apart)") from None
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end need a time zone")
    start = start.astimezone(dt.UTC)
    span = end - start
    whole = not (start.second or start.microsecond or span.total_seconds() % 60)
    if not whole or not dt.timedelta(0) < span <= dt.timedelta(hours=1):
        raise ValueError("start and end must bound whole minutes, at most one hour")
    return start.strftime("%Y-%m-%d-%H:%M")


class _Handler(BaseHTTPRequestHandler):
    server: DemoApiServer
    protocol_version = "HTTP/1.1"  # keep-alive: the pages share one connection
    server_version = "secure_etl-demo-api"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.counted_request()
        url = urlsplit(self.path)
        if url.path != PATH:
            return self._answer(404, {"error": f"no such resource; the data is at {PATH}"})
        query = parse_qs(url.query)
        try:
            partition = partition_of(query)
            page = int(query.get("page", ["0"])[0])
            if page < 0:
                raise ValueError
        except ValueError as err:
            return self._answer(400, {"error": str(err) or "page must be a whole number >= 0"})
        size = self.server.settings.page_size
        records = self.server.records(partition)
        following = None
        if (page + 1) * size < len(records):
            paging = {"start": query["start"][0], "end": query["end"][0], "page": page + 1}
            following = f"{PATH}?{urlencode(paging)}"
        return self._answer(
            200, {"data": records[page * size : (page + 1) * size], "next": following}
        )

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
        pass  # no request lines on stderr


# This process's servers by port, and how many users each has: the demo command and the
# steps it runs in-process share one server.
_RUNNING: dict[int, tuple[DemoApiServer, int]] = {}
_RUNNING_LOCK = threading.Lock()


@contextmanager
def serving(
    settings: DemoApiSettings, *, fallback: bool = False, log: Callable[[str], None] = print
) -> Iterator[DemoApiServer | None]:
    """The API running for the duration: this process's server on that port if there is
    one, else a new one in a thread.

    If another process holds the port: with ``fallback``, a free port instead (the
    caller must then point its config at ``server.port``); without, None: whatever
    listens there serves, and the client's verification of its certificate tells whether
    it is ours."""
    with _RUNNING_LOCK:
        server = _take(settings, fallback, log)
    try:
        yield server
    finally:
        if server is not None:
            with _RUNNING_LOCK:
                running, users = _RUNNING[server.port]
                if users > 1:
                    _RUNNING[server.port] = (running, users - 1)
                else:
                    del _RUNNING[server.port]
                    running.stop()


def _take(settings: DemoApiSettings, fallback: bool, log) -> DemoApiServer | None:
    if settings.port in _RUNNING:
        running, users = _RUNNING[settings.port]
        _RUNNING[settings.port] = (running, users + 1)
        return running
    try:
        server = DemoApiServer(settings)
    except OSError as err:
        if err.errno != errno.EADDRINUSE:
            raise
        if not fallback:
            log(f"demo API: {HOST}:{settings.port} is taken; using whatever serves there")
            return None
        taken = settings.port
        server = DemoApiServer(dataclasses.replace(settings, port=0))
        log(f"demo API: {HOST}:{taken} is taken; serving on {HOST}:{server.port} instead")
    server.serve_in_thread()
    _RUNNING[server.port] = (server, 1)
    return server
