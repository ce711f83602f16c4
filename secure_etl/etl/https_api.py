"""An HTTPS API as a source: mutual TLS, pagination, and retries that respect the server."""

from __future__ import annotations

import email.utils
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pandas as pd

RETRY_STATUSES = {429, 500, 502, 503, 504}


class ApiError(Exception):
    """The API refused, failed after its retries, or answered something unusable."""


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


def client_context(cert: str, key: str, ca_bundle: str) -> ssl.SSLContext:
    """Verify the server against ``ca_bundle``, present our certificate; TLS 1.2 at least
    (1.3 is negotiated whenever the server offers it)."""
    context = ssl.create_default_context(cafile=ca_bundle)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _get(client: httpx.Client, source: ApiSource, url: str, params, sleep) -> dict:
    backoff = 0.5
    for attempt in range(source.max_retries + 1):
        try:
            response = client.get(url, params=params)
        except httpx.TransportError as err:
            if attempt == source.max_retries:
                raise ApiError(f"GET {url}: {type(err).__name__}: {err}") from None
            sleep(min(backoff, source.max_backoff_s))
            backoff *= 2
            continue
        if response.status_code in RETRY_STATUSES and attempt < source.max_retries:
            wait = _retry_after(response)
            if wait is not None:  # the server said when: never sooner
                if wait > source.max_backoff_s:
                    raise ApiError(
                        f"GET {url}: HTTP {response.status_code}, Retry-After {wait:.0f} s is "
                        f"longer than max_backoff_s ({source.max_backoff_s:.0f} s); giving up"
                    )
                sleep(wait)
            else:
                sleep(min(backoff, source.max_backoff_s))
                backoff *= 2
            continue
        if response.status_code >= 400:
            raise ApiError(f"GET {url}: HTTP {response.status_code}: {response.text[:200]}")
        try:
            body = response.json()
        except ValueError:
            raise ApiError(f"GET {url}: the answer is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get(source.records_key), list):
            raise ApiError(f"GET {url}: no {source.records_key!r} list in the answer")
        return body
    raise AssertionError("unreachable")


def fetch_pages(
    source: ApiSource,
    context: ssl.SSLContext,
    sleep: Callable[[float], None] = time.sleep,
    client: httpx.Client | None = None,
) -> Iterator[pd.DataFrame]:
    """One DataFrame per page until the API gives no next page."""
    own = client is None
    client = client or httpx.Client(verify=context, timeout=source.timeout_s)
    try:
        url, params = source.url, dict(source.params)
        while True:
            body = _get(client, source, url, params, sleep)
            yield pd.DataFrame.from_records(body[source.records_key])
            following = body.get(source.next_key)
            if not following:
                return
            if source.cursor_param:
                params = {**dict(source.params), source.cursor_param: following}
            else:
                url, params = str(following), None  # the link carries its own query
    finally:
        if own:
            client.close()
