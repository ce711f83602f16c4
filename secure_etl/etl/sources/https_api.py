"""An HTTPS API as a source: mutual TLS, pagination, and retries that respect the server.

Every extraction is bounded: next links are followed only to the configured origin (or an
allow-listed one) over https, a URL seen before is a loop, and the pages, each page's
size and the whole extraction's time are capped. Redirects are refused, not followed: the
client certificate goes only where the config says, and a redirect's body is not data.
An API key (read from the environment) goes only to the url's own origin: pages on an
allow-listed origin are fetched without it. Through a forward proxy every request takes
an HTTP CONNECT tunnel, so TLS and the client certificate stay end to end.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pandas as pd

from secure_etl.acme import deadline as socket_deadline
from secure_etl.acme.retry import Backoff, GaveUp, TryAgain, retry
from secure_etl.acme.transport import parse_retry_after
from secure_etl.config import HttpsApiSource
from secure_etl.etl.connector import Runtime
from secure_etl.etl.transforms import UNPARSED_COLUMN
from secure_etl.security import tls as tls_policy
from secure_etl.security.proxy import ProxyError, configured_proxy

RETRY_STATUSES = {429, 500, 502, 503, 504}
DEFAULT_PORTS = {"https": 443, "http": 80}
ERROR_TEXT_BYTES = 200  # of an error answer's body, in its message


class ApiError(Exception):
    """The API refused, failed after its retries, or answered something unusable."""


@dataclass(frozen=True)
class ApiKey:
    """The API key and its header (``Authorization`` carries it as a bearer token); the
    secret is kept out of every repr."""

    header: str
    secret: str = field(repr=False)

    def headers(self) -> dict[str, str]:
        bearer = self.header.lower() == "authorization"
        return {self.header: f"Bearer {self.secret}" if bearer else self.secret}

    def hidden(self, text: str) -> str:
        """``text`` with the key (should a server echo it) replaced by ``<api key>``."""
        return text.replace(self.secret, "<api key>")


@dataclass(frozen=True)
class ApiSource:
    """``GET url?params`` pages of JSON ``{records_key: [...], next_key: cursor-or-url}``."""

    url: str
    records_key: str = "data"
    next_key: str = "next"  # a full URL (next link) or a cursor value
    cursor_param: str | None = None  # set when ``next`` is a cursor sent as this parameter
    params: tuple[tuple[str, str], ...] = ()
    timeout_s: float = 30.0
    max_retries: int = 5
    max_backoff_s: float = 60.0
    allowed_origins: tuple[str, ...] = ()  # besides the url's own, e.g. "https://api2.example.com"
    max_pages: int = 10_000
    max_response_bytes: int = 64 * 1024 * 1024
    deadline_s: float = 600.0
    api_key: ApiKey | None = None  # sent only to the url's own origin


def client_context(
    cert: str, key: str, ca_bundle: str, min_tls: str | None = None
) -> ssl.SSLContext:
    """Verify the server against ``ca_bundle``, present our certificate; nothing below
    ``min_tls`` (default: the security policy's default, TLS 1.3)."""
    context = tls_policy.verifying_context(ca_bundle, min_tls)
    context.load_cert_chain(cert, key)
    return context


def origin(url: str | httpx.URL) -> str:
    """``scheme://host:port`` of a URL, the port always written out."""
    url = httpx.URL(url)
    port = url.port or DEFAULT_PORTS.get(url.scheme)
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}:{port}"


def shown(url: str | httpx.URL) -> str:
    """The URL fit for an error or a log: no user info, and the query (which may carry a
    token) replaced by ``?...``."""
    url = httpx.URL(url)
    return f"{origin(url)}{url.path}{'?...' if url.query else ''}"


def with_params(url: str, params: dict[str, str]) -> httpx.URL:
    """``url`` with ``params`` added to its own query (a name in both takes ``params``'s
    value). httpx would drop the URL's query instead."""
    base = httpx.URL(url)
    kept = [(k, v) for k, v in base.params.multi_items() if k not in params]
    return base.copy_with(params=httpx.QueryParams([*kept, *params.items()]))


class _Deadline:
    """The extraction's overall time limit: the retry helper starts no request and no
    wait that would cross it, the body is checked against it between chunks, and the
    socket itself holds it while a request runs (a read timeout alone never ends an
    answer that arrives a byte at a time)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def passed(self, url: httpx.URL) -> ApiError:
        return ApiError(
            f"GET {shown(url)}: the extraction ran past its deadline_s "
            f"({self.seconds:g} s); raise deadline_s or ask for less (shorter partitions)"
        )

    def check(self, url: httpx.URL) -> None:
        if self.remaining() <= 0:
            raise self.passed(url)

    def timeout(self, timeout_s: float) -> float:
        return max(0.001, min(timeout_s, self.remaining()))


class _Busy(TryAgain):
    """A 429 or 5xx answer: asked again, never sooner than its Retry-After."""

    def __init__(self, status: int, text: str, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}: {text}", retry_after)
        self.status = status


def _read_body(response: httpx.Response, source: ApiSource, url, deadline: _Deadline) -> bytes:
    """The body, streamed: refused as soon as it passes ``max_response_bytes`` or the
    deadline, so a huge or endless answer is never held whole."""
    limit = source.max_response_bytes
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(
            f"GET {shown(url)}: the answer is {int(declared):,} bytes, more than "
            f"max_response_bytes ({limit:,}); raise it or ask for smaller pages"
        )
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise ApiError(
                f"GET {shown(url)}: the answer passed max_response_bytes ({limit:,}); "
                "raise it or ask for smaller pages"
            )
        chunks.append(chunk)
        deadline.check(url)
    return b"".join(chunks)


def _error_text(response: httpx.Response, url: httpx.URL, deadline: _Deadline) -> str:
    """The start of an error answer's body (200 bytes), read no further."""
    head = b""
    for chunk in response.iter_bytes():
        head += chunk
        deadline.check(url)
        if len(head) >= ERROR_TEXT_BYTES:
            break
    return head[:ERROR_TEXT_BYTES].decode(errors="replace")


def _get(
    client: httpx.Client,
    source: ApiSource,
    url: httpx.URL,
    deadline: _Deadline,
    sleep: Callable[[float], None],
) -> dict:
    """One page, asked again after a 429, a 5xx or a lost connection (``max_retries``
    times, backing off from 0.5 s, never sooner than Retry-After, all before the
    deadline)."""

    def attempt(_n: int) -> bytes:
        try:
            return _attempt(client, source, url, deadline)
        except httpx.TransportError as err:
            deadline.check(url)  # a read cut short by the deadline is the deadline's error
            raise TryAgain(f"{type(err).__name__}: {err}") from None

    backoff = Backoff(source.max_retries + 1, 0.5, source.max_backoff_s)
    try:
        content = retry(attempt, backoff, deadline=deadline.end, sleep=sleep)
    except GaveUp as gave_up:
        raise _gave_up(gave_up, source, url, deadline) from None
    return _page(content, source, url)


def _gave_up(gave_up: GaveUp, source: ApiSource, url: httpx.URL, deadline: _Deadline) -> ApiError:
    if gave_up.reason == "wait":  # only an answer names a wait
        status = gave_up.last.status if isinstance(gave_up.last, _Busy) else "?"
        return ApiError(
            f"GET {shown(url)}: HTTP {status}, Retry-After {gave_up.wait_s:.0f} s is "
            f"longer than max_backoff_s ({source.max_backoff_s:.0f} s); giving up"
        )
    if gave_up.reason == "deadline" and gave_up.wait_s > 0:
        return ApiError(
            f"GET {shown(url)}: waiting {gave_up.wait_s:.1f} s to retry would pass the "
            f"extraction's deadline_s ({deadline.seconds:g} s)"
        )
    if gave_up.reason == "deadline":
        return deadline.passed(url)
    tries = f" ({gave_up.attempts} attempts)" if gave_up.attempts > 1 else ""
    return ApiError(f"GET {shown(url)}: {gave_up.last}{tries}")


def _attempt(client: httpx.Client, source: ApiSource, url: httpx.URL, deadline: _Deadline) -> bytes:
    """One GET's body; a 429 or 5xx raises ``_Busy`` (to be asked again), other errors,
    redirects and oversized bodies raise ``ApiError``."""
    timeout = deadline.timeout(source.timeout_s)
    key = source.api_key
    headers = key.headers() if key and origin(url) == origin(source.url) else {}
    with (
        socket_deadline.deadline(deadline.end),
        client.stream("GET", url, headers=headers, timeout=timeout) as response,
    ):
        status = response.status_code
        _refuse_redirect(response, url)
        if status >= 400:
            text = _error_text(response, url, deadline)
            text = key.hidden(text) if key else text
            if status in RETRY_STATUSES:
                wait = parse_retry_after(response.headers.get("Retry-After"))
                raise _Busy(status, text, wait)
            raise ApiError(f"GET {shown(url)}: HTTP {status}: {text}")
        return _read_body(response, source, url, deadline)


def _page(content: bytes, source: ApiSource, url: httpx.URL) -> dict:
    try:
        body = json.loads(content)
    except ValueError:
        raise ApiError(f"GET {shown(url)}: the answer is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get(source.records_key), list):
        raise ApiError(f"GET {shown(url)}: no {source.records_key!r} list in the answer")
    return body


def _refuse_redirect(response: httpx.Response, url: httpx.URL) -> None:
    """A redirect is refused: following it would present our certificate where the config
    did not say, and its body is not data."""
    if 300 <= response.status_code < 400:
        location = response.headers.get("Location")
        where = "no Location"
        if location:
            try:
                where = f"a redirect to {origin(url.join(location))}"
            except (httpx.InvalidURL, TypeError):
                where = "an unreadable Location"
        raise ApiError(
            f"GET {shown(url)}: HTTP {response.status_code}, {where}; redirects are not "
            "followed: set url to the address that answers"
        )


def _next_link(source: ApiSource, current: httpx.URL, link: object) -> httpx.URL:
    """The next page's URL, refused unless it is https on an origin we may present our
    client certificate to (the configured one, or one in ``allowed_origins``)."""
    try:
        following = current.join(str(link))
    except (httpx.InvalidURL, TypeError):
        raise ApiError(f"GET {shown(current)}: the next link is not a URL") from None
    allowed = {origin(source.url), *(origin(o) for o in source.allowed_origins)}
    if following.scheme != "https" or origin(following) not in allowed:
        raise ApiError(
            f"GET {shown(current)}: refused the next link {shown(following)}: only https "
            f"links on {origin(source.url)} are followed; add its origin to allowed_origins "
            "if the API may send our client certificate there"
        )
    return following


def page_frame(records: list, columns: list[str]) -> pd.DataFrame:
    """One DataFrame of a page's records. A record that is not an object becomes a row
    with only ``UNPARSED_COLUMN`` (its JSON text), which has no key and so goes to
    quarantine. ``columns`` (the fields seen so far, updated here) keeps every page's
    columns in the same order, missing ones empty."""
    rows = [r if isinstance(r, dict) else {UNPARSED_COLUMN: json.dumps(r)} for r in records]
    frame = pd.DataFrame.from_records(rows)
    columns.extend(c for c in frame.columns if c not in columns and c != UNPARSED_COLUMN)
    frame = frame.reindex(columns=[*columns, UNPARSED_COLUMN])
    frame[UNPARSED_COLUMN] = frame[UNPARSED_COLUMN].astype("string")
    return frame


def fetch_pages(
    source: ApiSource,
    context: ssl.SSLContext,
    sleep: Callable[[float], None] = time.sleep,
    client: httpx.Client | None = None,
    proxy: httpx.Proxy | None = None,
) -> Iterator[pd.DataFrame]:
    """One DataFrame per page until the API gives no next page (through ``proxy``'s
    CONNECT tunnels when given)."""
    own = client is None
    context = socket_deadline.bounded(context)  # the deadline holds while headers drip in
    if proxy is not None and proxy.ssl_context is not None:  # an https:// proxy's TLS too
        socket_deadline.bounded(proxy.ssl_context)
    client = client or httpx.Client(verify=context, timeout=source.timeout_s, proxy=proxy)
    deadline = _Deadline(source.deadline_s)
    columns: list[str] = []
    try:
        url = with_params(source.url, dict(source.params))
        seen = {url}
        held: list = []  # records of the first pages while none is an object yet
        while True:
            body = _get(client, source, url, deadline, sleep)
            held.extend(body[source.records_key])
            if any(isinstance(r, dict) for r in held):  # the columns are known
                yield page_frame(held, columns)
                held = []
            following = body.get(source.next_key)
            if not following:
                if held:
                    raise ApiError(
                        f"GET {shown(source.url)}: none of the {len(held):,} records is a JSON "
                        f"object (the first is {type(held[0]).__name__}); nothing to load"
                    )
                return
            if source.cursor_param:
                paging = {**dict(source.params), source.cursor_param: str(following)}
                next_url = with_params(source.url, paging)
            else:
                next_url = _next_link(source, url, following)  # the link carries its query
            if next_url in seen:
                raise ApiError(
                    f"GET {shown(url)}: the next page {shown(next_url)} was fetched before "
                    "in this extraction; the API's paging loops"
                )
            if len(seen) >= source.max_pages:
                raise ApiError(
                    f"GET {shown(source.url)}: more than max_pages ({source.max_pages:,}) "
                    "pages; raise max_pages or ask for less (shorter partitions)"
                )
            seen.add(next_url)
            url = next_url
    finally:
        if own:
            client.close()


class HttpsApiReader:
    """JSON pages of an HTTPS API over mutual TLS; the server is always verified."""

    pii_columns: tuple[str, ...] = ()

    def __init__(self, config: HttpsApiSource, runtime: Runtime | None = None) -> None:
        self.config = config
        self.runtime = runtime or Runtime()

    def describe(self) -> str:
        return self.config.url

    def known_columns(self) -> set[str] | None:
        return self.config.known_columns()

    def api(self, partition: str) -> ApiSource:
        """The requests for one hourly partition (its bounds sent when the config says)."""
        c = self.config
        start, end = self.runtime.partition_window(partition)
        params = dict(c.params)
        if c.start_param:
            params[c.start_param] = start.isoformat()
        if c.end_param:
            params[c.end_param] = end.isoformat()
        return ApiSource(
            url=c.url,
            records_key=c.records_key,
            next_key=c.next_key,
            cursor_param=c.cursor_param,
            params=tuple(params.items()),
            timeout_s=c.timeout_s,
            max_retries=c.max_retries,
            allowed_origins=tuple(c.allowed_origins),
            max_pages=c.max_pages,
            max_response_bytes=c.max_response_bytes,
            deadline_s=c.deadline_s,
            api_key=self.api_key(),
        )

    def api_key(self) -> ApiKey | None:
        """The configured key, read from its environment variable now (Dagster ``EnvVar``
        style: the config names the variable); the error names the variable, never a value."""
        key = self.config.api_key
        if key is None:
            return None
        secret = os.environ.get(key.env, "")
        where = f"{shown(self.config.url)}: api_key.env"
        if not secret:
            raise ApiError(
                f"{where}: the environment variable {key.env} is not set (or is empty); "
                "set it to the API key where the pipeline runs"
            )
        if not secret.isprintable() or not secret.isascii() or secret != secret.strip():
            raise ApiError(
                f"{where}: the value of {key.env} cannot be sent in a header (control "
                "characters, spaces at an end or non-ASCII); set it to the key alone"
            )
        return ApiKey(key.header, secret)

    def proxy(self) -> httpx.Proxy | None:
        try:
            return configured_proxy(self.config.proxy)
        except ProxyError as err:
            raise ApiError(f"{shown(self.config.url)}: {err}") from None

    def chunks(self, partition: str) -> Iterator[pd.DataFrame]:
        tls = self.runtime.client_tls(shown(self.config.url))
        context = client_context(
            str(tls.fullchain_path),
            str(tls.privkey_path),
            self.config.ca_bundle or tls.ca_bundle,
            self.config.min_tls,
        )
        yield from fetch_pages(self.api(partition), context, proxy=self.proxy())

    def chunks_since(self, since: dt.datetime | None) -> Iterator[pd.DataFrame]:
        raise ValueError(f"{shown(self.config.url)}: the source is not incremental")
