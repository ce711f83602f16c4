"""The ACME transport: HTTP, nonces, signed requests, retries and error mapping.

Everything below the protocol flow lives here, so ``client`` can read top to bottom.
"""

from __future__ import annotations

import email.utils
import json
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from secure_etl.acme.deadline import bounded, deadline
from secure_etl.acme.errors import (
    AcmeProblem,
    BadNonce,
    CaUnreachable,
    PollTimeout,
    ProtocolError,
)
from secure_etl.acme.jws import AccountKey
from secure_etl.acme.messages import Directory, https_url

USER_AGENT = "secure_etl-acme/0.1"
PEM_CHAIN = "application/pem-certificate-chain"
# Nothing an ACME server sends is large: a JSON object, or a chain of a few certificates.
MAX_JSON_BYTES = 1 << 20
MAX_CHAIN_BYTES = 4 << 20
# A CA may reject any nonce (Pebble's fault injection rejects half at random); each retry
# costs one round trip, and 20 makes a run of refusals vanishingly unlikely to fail a flow.
MAX_BAD_NONCE_RETRIES = 20


@dataclass(frozen=True)
class Response:
    status: int
    headers: httpx.Headers
    body: bytes
    url: str

    def json(self) -> dict:
        try:
            data = json.loads(self.body)
        except ValueError:
            raise ProtocolError(f"{self.url}: expected JSON, got {self.body[:80]!r}") from None
        if not isinstance(data, dict):
            raise ProtocolError(f"{self.url}: expected a JSON object")
        return data

    @property
    def location(self) -> str | None:
        value = self.headers.get("Location")
        return https_url(value, f"{self.url}: Location") if value else None

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("Retry-After"))

    def links(self, rel: str) -> list[str]:
        """Targets of ``Link: <url>;rel="..."`` headers with the given relation."""
        out = []
        for header in self.headers.get_list("Link"):
            for part in header.split(","):
                target, _, params = part.partition(";")
                target = target.strip()
                if not (target.startswith("<") and target.endswith(">")):
                    continue
                rels = [
                    p.split("=", 1)[1].strip().strip('"')
                    for p in params.split(";")
                    if p.strip().lower().startswith("rel=")
                ]
                if rel in rels:
                    out.append(https_url(target[1:-1], f"{self.url}: Link rel={rel}"))
        return out


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


class Transport:
    """One ACME server: its directory, a nonce pool and signed POSTs."""

    def __init__(
        self,
        directory_url: str,
        *,
        verify: str | bool | ssl.SSLContext = True,
        timeout: float = 30.0,
        client: httpx.Client | None = None,
        log: Callable[[str], None] | None = None,
        deadline_s: float | None = None,
        proxy: httpx.Proxy | str | None = None,
    ) -> None:
        """``deadline_s``: every request through this transport ends within that many
        seconds from now (``within`` narrows it further). ``proxy``: a forward proxy every
        request tunnels through (HTTP CONNECT; TLS stays end to end with the CA)."""
        self.directory_url = https_url(directory_url, "the ACME directory URL")
        # When set (a time.monotonic() value), no request may run past it.
        self.deadline = None if deadline_s is None else time.monotonic() + deadline_s
        self.timeout = timeout
        if isinstance(verify, str):
            verify = ssl.create_default_context(cafile=verify)
        elif verify is True:
            verify = httpx.create_ssl_context()
        if isinstance(verify, ssl.SSLContext):
            bounded(verify)  # the deadline holds while headers drip in, not only the body
        if isinstance(proxy, httpx.Proxy) and proxy.ssl_context is not None:
            bounded(proxy.ssl_context)  # an https:// proxy's own TLS too
        self.http = client or httpx.Client(
            verify=verify, timeout=timeout, headers={"User-Agent": USER_AGENT}, proxy=proxy
        )
        self._nonces: list[str] = []
        self._directory: Directory | None = None
        self.log = log or (lambda _msg: None)
        self.requests = 0
        self.bad_nonce_retries = 0

    def close(self) -> None:
        self.http.close()

    @property
    def directory(self) -> Directory:
        if self._directory is None:
            self._directory = Directory.from_json(self.get(self.directory_url).json())
        return self._directory

    @contextmanager
    def within(self, seconds: float | None) -> Iterator[None]:
        """Inside, every request (and the client's polls) must end within ``seconds``
        from now; None adds no deadline. An outer, earlier deadline still holds."""
        outer = self.deadline
        if seconds is not None:
            mine = time.monotonic() + seconds
            self.deadline = mine if outer is None else min(outer, mine)
        try:
            yield
        finally:
            self.deadline = outer

    def remaining(self) -> float:
        """Seconds left before the deadline (infinite without one)."""
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def _check_deadline(self, what: str) -> float:
        left = self.remaining()
        if left <= 0:
            raise PollTimeout(f"{what}: the deadline for this issuance has passed")
        return left

    def _send(self, method: str, url: str, accept: str | None = None, **kwargs) -> Response:
        https_url(url, f"{method} {url}")
        what = f"{method} {url}"
        timeout = min(self.timeout, self._check_deadline(what))
        limit = MAX_CHAIN_BYTES if accept == PEM_CHAIN else MAX_JSON_BYTES
        if accept:
            kwargs.setdefault("headers", {})["Accept"] = accept
        try:
            with (
                deadline(self.deadline),
                self.http.stream(method, url, timeout=timeout, **kwargs) as raw,
            ):
                body = self._read_body(raw, limit, what)
        except httpx.HTTPError as err:
            self._check_deadline(what)  # a read cut short by the deadline is its error
            kind = CaUnreachable if isinstance(err, httpx.TransportError) else ProtocolError
            raise kind(f"{what}: {type(err).__name__}: {err}") from None
        self.requests += 1
        response = Response(raw.status_code, raw.headers, body, url)
        nonce = raw.headers.get("Replay-Nonce")
        if nonce:
            self._nonces.append(nonce)
        return response

    def _read_body(self, raw: httpx.Response, limit: int, what: str) -> bytes:
        """The body, refused past ``limit`` bytes or past the deadline (a slow drip)."""
        declared = raw.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ProtocolError(f"{what}: the response is larger than {limit} bytes; refused")
        chunks, size = [], 0
        for chunk in raw.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise ProtocolError(f"{what}: the response is larger than {limit} bytes; refused")
            chunks.append(chunk)
            self._check_deadline(what)
        return b"".join(chunks)

    def get(self, url: str) -> Response:
        response = self._send("GET", url)
        self._raise_for_problem(response)
        return response

    def nonce(self) -> str:
        if self._nonces:
            return self._nonces.pop()
        response = self._send("HEAD", self.directory.new_nonce)
        if not self._nonces:
            raise ProtocolError(f"{response.url}: no Replay-Nonce (HTTP {response.status})")
        return self._nonces.pop()

    def post(
        self,
        url: str,
        payload: object | None,
        key: AccountKey,
        kid: str | None,
        accept: str | None = None,
    ) -> Response:
        """A signed POST (``payload=None`` is POST-as-GET); badNonce is retried, bounded."""
        for attempt in range(MAX_BAD_NONCE_RETRIES + 1):
            body = key.sign(url, payload, self.nonce(), kid)
            headers = {"Content-Type": "application/jose+json"}
            response = self._send("POST", url, accept, content=json.dumps(body), headers=headers)
            try:
                self._raise_for_problem(response)
            except BadNonce:
                if attempt == MAX_BAD_NONCE_RETRIES:
                    raise
                self.bad_nonce_retries += 1
                self.log(f"badNonce from {url}, retrying ({attempt + 1})")
                continue
            return response
        raise AssertionError("unreachable")

    @staticmethod
    def _raise_for_problem(response: Response) -> None:
        if response.status < 400:
            return
        raise AcmeProblem.from_response(
            response.body, response.status, response.url, response.retry_after
        )
