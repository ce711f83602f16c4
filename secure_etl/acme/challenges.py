"""Challenge solvers behind one small interface: present, clean up, close.

http-01 standalone (its own listener) and webroot (a token file); dns-01 through a
``DnsProvider`` (set and clear a TXT record), each provider a small class of its own.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol, Self

import httpx

from secure_etl.acme.errors import AcmeError

CHALLENGE_PATH = "/.well-known/acme-challenge/"


class SolverError(AcmeError):
    """A challenge could not be put in place (the message says where and why)."""


class Solver(Protocol):
    challenge_type: str

    def present(self, identifier: str, token: str, key_authorization: str) -> None:
        """Make the challenge answerable; return once it is."""
        ...

    def cleanup(self, identifier: str, token: str) -> None:
        """Remove what ``present`` put in place."""
        ...

    def close(self) -> None:
        """Release what the solver holds (a listener, a connection)."""
        ...


class SharedListener:
    """A listener per (kind, address, port), shared by every solver in the process, so
    concurrent issuances (``certs renew --all``) can all answer on one port. The last
    ``release`` closes it while still holding the registry's lock: a new listener for the
    same port is never opened while the old one holds it (that raced under ``--jobs``)."""

    _lock = threading.Lock()
    _open: dict[tuple[type, str, int], SharedListener] = {}
    users = 0

    @classmethod
    def acquire(cls, address: str, port: int) -> Self:
        with SharedListener._lock:
            key = (cls, address, port)
            listener = SharedListener._open.get(key)
            if listener is None:
                listener = SharedListener._open[key] = cls(address, port)
                listener._registered_as = key
            listener.users += 1
            return listener

    def release(self) -> None:
        with SharedListener._lock:
            self.users -= 1
            if self.users:
                return
            del SharedListener._open[self._registered_as]
            self._close()

    def _close(self) -> None:
        raise NotImplementedError


class _HttpListener(SharedListener):
    """The http-01 answers, served over plain HTTP (RFC 8555 §8.3)."""

    def __init__(self, address: str, port: int) -> None:
        self.answers: dict[str, str] = {}
        answers = self.answers

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                token = self.path.removeprefix(CHALLENGE_PATH)
                body = answers.get(token) if self.path.startswith(CHALLENGE_PATH) else None
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode("ascii"))

            def log_message(self, *args) -> None:
                pass

        try:
            self.server = ThreadingHTTPServer((address, port), Handler)
        except OSError as err:
            raise SolverError(
                f"http-01: cannot listen on {address}:{port}: {err.strerror}"
            ) from None
        self.server.daemon_threads = True
        # A short poll interval: shutdown() waits up to one interval, and closing the
        # listener is on the way out of every issuance (`acme issue` waited 10 ms on
        # average at 0.02 s). The wake-ups cost about 1.5 % of a core while it is open.
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.005}, daemon=True
        ).start()

    def _close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Http01Standalone:
    """Answers http-01 from a listener of its own (shared within the process); the
    listener starts on first use and stops when the last solver using it is closed."""

    challenge_type = "http-01"

    def __init__(self, address: str = "0.0.0.0", port: int = 80) -> None:  # noqa: S104
        self.address, self.port = address, port
        self._listener: _HttpListener | None = None
        self._tokens: set[str] = set()

    def present(self, identifier: str, token: str, key_authorization: str) -> None:
        if self._listener is None:
            self._listener = _HttpListener.acquire(self.address, self.port)
        self._listener.answers[token] = key_authorization
        self._tokens.add(token)

    def cleanup(self, identifier: str, token: str) -> None:
        if self._listener is not None:
            self._listener.answers.pop(token, None)
        self._tokens.discard(token)

    def close(self) -> None:
        if self._listener is not None:
            for token in self._tokens:
                self._listener.answers.pop(token, None)
            self._tokens.clear()
            self._listener.release()
            self._listener = None


class Http01Webroot:
    """Writes the token file under a web server's document root, removes it afterwards."""

    challenge_type = "http-01"

    def __init__(self, webroot: Path | str) -> None:
        self.directory = Path(webroot) / CHALLENGE_PATH.strip("/")

    def present(self, identifier: str, token: str, key_authorization: str) -> None:
        if "/" in token or token.startswith("."):
            raise SolverError(f"http-01: refusing a token that is not a plain name: {token!r}")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / token).write_text(key_authorization)
            os.chmod(self.directory / token, 0o644)  # the web server must read it
        except OSError as err:
            raise SolverError(f"http-01 webroot {self.directory}: {err.strerror}") from None

    def cleanup(self, identifier: str, token: str) -> None:
        (self.directory / token).unlink(missing_ok=True)

    def close(self) -> None:
        pass


def dns01_txt_value(key_authorization: str) -> str:
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def dns01_record_name(identifier: str) -> str:
    """``_acme-challenge.<name>.`` (a wildcard's ``*.`` is dropped, RFC 8555 §8.4)."""
    return f"_acme-challenge.{identifier.removeprefix('*.').rstrip('.')}."


class DnsProvider(Protocol):
    def set_txt(self, fqdn: str, value: str) -> None: ...

    def clear_txt(self, fqdn: str, value: str) -> None: ...


class Dns01:
    """dns-01 through any DnsProvider; ``wait`` (if given) blocks until the record is seen."""

    challenge_type = "dns-01"

    def __init__(self, provider: DnsProvider, wait=None) -> None:
        self.provider, self.wait = provider, wait
        self._values: dict[str, tuple[str, str]] = {}

    def present(self, identifier: str, token: str, key_authorization: str) -> None:
        fqdn, value = dns01_record_name(identifier), dns01_txt_value(key_authorization)
        self.provider.set_txt(fqdn, value)
        self._values[token] = (fqdn, value)
        if self.wait:
            self.wait(fqdn, value)

    def cleanup(self, identifier: str, token: str) -> None:
        if token in self._values:
            self.provider.clear_txt(*self._values.pop(token))

    def close(self) -> None:
        pass


class ExecProvider:
    """Runs a program: ``argv + ["present"|"cleanup", fqdn, value]`` (no shell)."""

    def __init__(self, argv: list[str], timeout_s: float = 120.0) -> None:
        if not argv:
            raise ValueError("the exec DNS provider needs a program")
        self.argv, self.timeout_s = list(argv), timeout_s

    def _run(self, action: str, fqdn: str, value: str) -> None:
        try:
            proc = subprocess.run(
                [*self.argv, action, fqdn, value],
                capture_output=True,
                timeout=self.timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise SolverError(f"dns-01 exec {self.argv[0]!r} {action}: {err}") from None
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise SolverError(
                f"dns-01 exec {self.argv[0]!r} {action} exited {proc.returncode}: {tail[0][:200]}"
            )

    def set_txt(self, fqdn: str, value: str) -> None:
        self._run("present", fqdn, value)

    def clear_txt(self, fqdn: str, value: str) -> None:
        self._run("cleanup", fqdn, value)


class ChallTestSrvProvider:
    """Pebble's challenge test server management API (for tests and local CAs)."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url, self.timeout_s = url.rstrip("/"), timeout_s

    def _post(self, path: str, body: dict) -> None:
        try:
            httpx.post(f"{self.url}{path}", json=body, timeout=self.timeout_s).raise_for_status()
        except httpx.HTTPError as err:
            raise SolverError(f"dns-01 challtestsrv {self.url}{path}: {err}") from None

    def set_txt(self, fqdn: str, value: str) -> None:
        self._post("/set-txt", {"host": fqdn, "value": value})

    def clear_txt(self, fqdn: str, value: str) -> None:
        self._post("/clear-txt", {"host": fqdn})
