"""The HTTPS API source against a real local HTTPS server that requires client certificates."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import pandas as pd
import pytest

from secure_etl.etl.sources.https_api import ApiError, ApiSource, client_context, fetch_pages
from secure_etl.etl.transforms import UNPARSED_COLUMN
from secure_etl.pki.internal_ca import InternalCA
from secure_etl.pki.keys import generate_private_key

RECORDS = [{"id": i, "email": f"u{i}@example.com"} for i in range(25)]


class Api(BaseHTTPRequestHandler):
    script: list = []  # (status, headers[, body]) to answer before the real page
    seen_clients: list = []
    requests: list = []  # (port, path) of every request, on every server
    big: dict = {}  # what /big managed to send, and whether the client hung up

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.seen_clients.append(self.connection.getpeercert()["subject"])
        self.requests.append((self.server.server_port, self.path))
        if self.script:
            status, headers, *body = self.script.pop(0)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if body:
                self.wfile.write(body[0])
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path in ("/drip", "/drip_headers", "/big"):
            return getattr(self, "_" + url.path[1:])(query)
        start = int(query.get("cursor", ["0"])[0])
        page = RECORDS[start : start + 10]
        following = start + 10 if start + 10 < len(RECORDS) else None
        if url.path == "/links":
            following = (
                f"https://localhost:{self.server.server_port}/links?cursor={following}"
                if following is not None
                else None
            )
        elif url.path == "/jump":  # the next link is whatever the test asked for
            following = query["to"][0]
        elif url.path == "/loop":  # the next link is this page again
            following = f"https://localhost:{self.server.server_port}{self.path}"
        elif url.path == "/stuck":  # the cursor never moves
            following = "0"
        elif url.path == "/mixed":  # records that are not objects among objects
            page = [*page[:3], "a string", 7, None, ["a", "list"], *page[3:]]
        elif url.path == "/junk":  # no record is an object
            page, following = ["a", 1, None], None
        self._json({"data": page, "next": following})

    def _json(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _drip(self, query) -> None:
        """A valid-looking answer, one byte every 0.1 s: each read is quick, the whole
        never ends within any sensible time."""
        self.send_response(200)
        self.send_header("Content-Length", "200")
        self.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(200):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.1)

    def _drip_headers(self, query) -> None:
        """The status line and headers themselves, one byte every 0.1 s: each read gets
        its byte long before ``timeout_s``; only a deadline on the socket ends it."""
        head = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: 1\r\n" * 50
        Api.big.update(sent=0, hung_up=False)
        try:
            for byte in head:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                Api.big["sent"] += 1
                time.sleep(0.1)
        except OSError:
            Api.big["hung_up"] = True

    def _big(self, query) -> None:
        """100 MB, its length declared only when asked (else it ends when the server
        closes, HTTP/1.0 style)."""
        total, chunk = 100 * 1024 * 1024, b" " * 65536
        self.send_response(200)
        if "declared" in query:
            self.send_header("Content-Length", str(total))
        self.end_headers()
        Api.big.update(sent=0, hung_up=False)
        try:
            while Api.big["sent"] < total:
                self.wfile.write(chunk)
                Api.big["sent"] += len(chunk)
        except OSError:
            Api.big["hung_up"] = True

    def log_message(self, *args):
        pass


@pytest.fixture
def pki(tmp_path):
    ca = InternalCA("api", tmp_path / "ca")
    out = {}
    for name, use, ids in (("server", "server", ["localhost"]), ("client", "client", ["etl"])):
        issued = ca.issue(ids, use, generate_private_key("ec256"))
        (tmp_path / f"{name}.pem").write_bytes(issued.fullchain_pem)
        (tmp_path / f"{name}.key").write_bytes(issued.key_pem)
        out[name] = (str(tmp_path / f"{name}.pem"), str(tmp_path / f"{name}.key"))
    out["ca"] = str(ca.root_path)
    return out


@contextlib.contextmanager
def serve_api(pki, fresh: bool = True):
    """The Api handler behind TLS that requires a client certificate from pki["ca"]
    (``fresh``: forget what earlier servers saw)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki["ca"])
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS
    context.load_cert_chain(*pki["server"])
    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    if fresh:
        Api.script, Api.seen_clients, Api.requests, Api.big = [], [], [], {}
    try:
        yield f"https://localhost:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def api(pki):
    with serve_api(pki) as url:
        yield url


@pytest.fixture
def other_api(api, pki):
    """A second server like ``api``, on another port (another origin)."""
    with serve_api(pki, fresh=False) as url:
        yield url


@pytest.fixture
def plain_listener():
    """A plain TCP port that counts the connections made to it."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.1)
    accepted, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(sock.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        sock.close()


def _context(pki):
    return client_context(*pki["client"], pki["ca"])


def test_cursor_pagination_over_mutual_tls_collects_every_record(api, pki):
    source = ApiSource(url=f"{api}/items", cursor_param="cursor")
    pages = list(fetch_pages(source, _context(pki)))
    assert [len(p) for p in pages] == [10, 10, 5]
    assert sorted(id_ for p in pages for id_ in p["id"]) == list(range(25))
    assert ((("commonName", "etl"),),) in Api.seen_clients


def test_next_link_pagination(api, pki):
    pages = list(fetch_pages(ApiSource(url=f"{api}/links"), _context(pki)))
    assert sum(len(p) for p in pages) == 25


def test_429_waits_as_long_as_retry_after_and_5xx_backs_off(api, pki):
    Api.script = [(429, {"Retry-After": "7"}), (503, {}), (503, {})]
    slept = []
    pages = list(
        fetch_pages(
            ApiSource(url=f"{api}/items", cursor_param="cursor"), _context(pki), sleep=slept.append
        )
    )
    assert sum(len(p) for p in pages) == 25
    assert slept == [7.0, 0.5, 1.0]


def test_retries_are_bounded(api, pki):
    Api.script = [(503, {})] * 3
    with pytest.raises(ApiError, match="HTTP 503"):
        list(
            fetch_pages(
                ApiSource(url=f"{api}/items", max_retries=2), _context(pki), sleep=lambda s: None
            )
        )


def test_a_client_without_a_certificate_is_refused(api, pki):
    context = ssl.create_default_context(cafile=pki["ca"])
    with pytest.raises(ApiError, match="GET .*items"):
        list(fetch_pages(ApiSource(url=f"{api}/items", max_retries=0), context))


def test_a_server_from_another_ca_is_refused(api, pki, tmp_path):
    other = InternalCA("other", tmp_path / "other")
    other.ensure_root()
    context = client_context(*pki["client"], str(other.root_path))
    with pytest.raises(ApiError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        list(fetch_pages(ApiSource(url=f"{api}/items", max_retries=0), context))


def test_a_retry_after_longer_than_we_may_wait_fails_clearly(api, pki):
    Api.script = [(429, {"Retry-After": "3600"})]
    with pytest.raises(ApiError, match="Retry-After 3600 s is longer than max_backoff_s"):
        list(fetch_pages(ApiSource(url=f"{api}/items"), _context(pki), sleep=lambda s: None))


def test_the_last_busy_answer_is_named_with_its_text_and_the_attempts(api, pki):
    Api.script = [(503, {}, b"maintenance until noon")] * 3
    with pytest.raises(ApiError, match=r"HTTP 503: maintenance until noon \(3 attempts\)"):
        list(
            fetch_pages(
                ApiSource(url=f"{api}/items", max_retries=2), _context(pki), sleep=lambda s: None
            )
        )
    assert len(Api.requests) == 3


def test_a_retry_after_past_the_deadline_fails_without_waiting(api, pki):
    Api.script = [(503, {"Retry-After": "30"})]
    slept = []
    with pytest.raises(ApiError, match=r"waiting 30.0 s to retry would pass .*deadline_s \(5 s\)"):
        list(fetch_pages(ApiSource(url=f"{api}/items", deadline_s=5), _context(pki), slept.append))
    assert slept == [] and len(Api.requests) == 1


def _ports(server_url: str) -> list[int]:
    port = urlsplit(server_url).port
    return [p for p, _ in Api.requests if p == port]


# Where next links may lead (the client certificate goes only where the config says)


def test_a_next_link_to_http_is_refused_and_never_requested(api, pki, plain_listener):
    port, accepted = plain_listener
    link = f"http://localhost:{port}/items?token=s3cret"
    source = ApiSource(url=f"{api}/jump?to={quote(link)}")
    with pytest.raises(
        ApiError, match=f"refused the next link http://localhost:{port}/items"
    ) as err:
        list(fetch_pages(source, _context(pki)))
    assert "s3cret" not in str(err.value)  # a query may carry a token: never shown
    time.sleep(0.3)  # the listener would have seen a connection by now
    assert accepted == []


def test_a_next_link_to_another_port_is_refused_and_the_other_server_sees_nothing(
    api, other_api, pki
):
    link = f"{other_api}/links?cursor=10"
    with pytest.raises(ApiError, match=f"refused the next link {other_api}:?/links"):
        list(fetch_pages(ApiSource(url=f"{api}/jump?to={quote(link)}"), _context(pki)))
    assert _ports(other_api) == [] and len(_ports(api)) == 1


def test_a_next_link_to_another_host_is_refused(api, pki):
    port = urlsplit(api).port
    link = f"https://127.0.0.1:{port}/links?cursor=10"  # the same server under another name
    with pytest.raises(ApiError, match=f"refused the next link https://127.0.0.1:{port}/links"):
        list(fetch_pages(ApiSource(url=f"{api}/jump?to={quote(link)}"), _context(pki)))
    assert len(Api.requests) == 1


def test_a_next_link_to_an_allowed_origin_is_followed(api, other_api, pki):
    link = f"{other_api}/links?cursor=10"
    source = ApiSource(url=f"{api}/jump?to={quote(link)}", allowed_origins=(other_api,))
    pages = list(fetch_pages(source, _context(pki)))
    assert sum(len(p) for p in pages) == 25
    assert len(_ports(other_api)) == 2  # cursor 10 and 20, with our client certificate


# Bounds: loops, pages, bytes, time


def test_a_next_link_to_the_same_page_is_a_loop(api, pki):
    with pytest.raises(ApiError, match="fetched before in this extraction; the API's paging loops"):
        list(fetch_pages(ApiSource(url=f"{api}/loop"), _context(pki)))
    assert len(Api.requests) == 1


def test_a_cursor_that_never_moves_is_a_loop(api, pki):
    source = ApiSource(url=f"{api}/stuck", cursor_param="cursor")
    with pytest.raises(ApiError, match="paging loops"):
        list(fetch_pages(source, _context(pki)))
    assert len(Api.requests) == 2  # the first page, then cursor=0 once


def test_max_pages_is_honoured(api, pki):
    source = ApiSource(url=f"{api}/links", max_pages=2)
    with pytest.raises(ApiError, match=r"more than max_pages \(2\) pages"):
        list(fetch_pages(source, _context(pki)))
    assert len(Api.requests) == 2
    assert len(list(fetch_pages(ApiSource(url=f"{api}/links", max_pages=3), _context(pki)))) == 3


def test_a_drip_fed_answer_hits_the_extraction_deadline(api, pki):
    source = ApiSource(url=f"{api}/drip", timeout_s=2, deadline_s=1.5, max_retries=0)
    with pytest.raises(ApiError, match=r"ran past its deadline_s \(1.5 s\)"):
        list(fetch_pages(source, _context(pki)))


def test_headers_fed_a_byte_at_a_time_hit_the_extraction_deadline(api, pki):
    source = ApiSource(url=f"{api}/drip_headers", timeout_s=2, deadline_s=1.5, max_retries=0)
    with pytest.raises(ApiError, match=r"ran past its deadline_s \(1.5 s\)"):
        list(fetch_pages(source, _context(pki)))
    for _ in range(50):  # the server notices the hang-up when its next write fails
        if Api.big.get("hung_up"):
            break
        time.sleep(0.1)
    # Cut off at the deadline, about 15 bytes in: not after the whole 563-byte head.
    assert Api.big["hung_up"] and Api.big["sent"] < 100


@pytest.mark.parametrize("declared", [False, True], ids=["streamed", "content-length"])
def test_an_answer_over_max_response_bytes_is_refused_without_reading_it_all(api, pki, declared):
    source = ApiSource(
        url=f"{api}/big{'?declared=1' if declared else ''}", max_response_bytes=1024 * 1024
    )
    with pytest.raises(ApiError, match=r"max_response_bytes \(1,048,576\)"):
        list(fetch_pages(source, _context(pki)))
    for _ in range(50):  # the server notices the hang-up when its next write fails
        if Api.big.get("hung_up"):
            break
        time.sleep(0.1)
    assert Api.big["hung_up"] and Api.big["sent"] < 20 * 1024 * 1024  # of 100 MB


# What the answer means


def test_the_urls_own_query_is_kept_beside_the_paging_parameters(api, pki):
    source = ApiSource(
        url=f"{api}/items?tenant=a&since=old", cursor_param="cursor", params=(("since", "new"),)
    )
    assert sum(len(p) for p in fetch_pages(source, _context(pki))) == 25
    queries = [parse_qs(urlsplit(path).query) for _, path in Api.requests]
    assert all(q["tenant"] == ["a"] and q["since"] == ["new"] for q in queries), queries
    assert [q.get("cursor") for q in queries] == [None, ["10"], ["20"]]


def test_a_redirect_with_a_json_body_is_refused_not_taken_as_data(api, pki):
    body = json.dumps({"data": [{"id": 666}], "next": None}).encode()
    Api.script = [
        (302, {"Location": "https://elsewhere.example:8443/x?token=s3cret"}, body),
    ]
    with pytest.raises(
        ApiError, match="HTTP 302, a redirect to https://elsewhere.example:8443; redirects are"
    ) as err:
        list(fetch_pages(ApiSource(url=f"{api}/items"), _context(pki)))
    assert "s3cret" not in str(err.value)


def test_records_that_are_not_objects_become_unparsed_rows_without_a_key(api, pki):
    pages = list(fetch_pages(ApiSource(url=f"{api}/mixed", cursor_param="cursor"), _context(pki)))
    frame = pd.concat(pages)
    assert len(frame) == 25 + 3 * 4
    unparsed = frame[UNPARSED_COLUMN].dropna().tolist()
    assert unparsed == ['"a string"', "7", "null", '["a", "list"]'] * 3
    assert frame.loc[frame[UNPARSED_COLUMN].notna(), "id"].isna().all()
    assert [list(p.columns) for p in pages] == [["id", "email", UNPARSED_COLUMN]] * 3


def test_an_answer_whose_records_are_none_objects_fails_clearly(api, pki):
    with pytest.raises(ApiError, match="none of the 3 records is a JSON object"):
        list(fetch_pages(ApiSource(url=f"{api}/junk"), _context(pki)))


def test_records_that_are_not_objects_are_quarantined_in_one_pass_and_staged(api, pki, tmp_path):
    from secure_etl.etl import storage
    from secure_etl.etl.one_pass import run_one_pass
    from secure_etl.etl.transforms import Lineage, transform_partition

    source = ApiSource(url=f"{api}/mixed", cursor_param="cursor")
    lineage = Lineage("run", "v1", dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    one = run_one_pass(
        fetch_pages(source, _context(pki)),
        tmp_path / "raw.parquet",
        tmp_path / "hashed.parquet",
        tmp_path / "quarantine.parquet",
        "id",
        [],
        lineage,
        load=None,
        workers=1,
    )
    assert (one.raw_rows, one.rows, one.quarantined) == (37, 25, 12)
    staged = transform_partition(
        tmp_path / "raw.parquet",
        tmp_path / "hashed2.parquet",
        tmp_path / "quarantine2.parquet",
        "id",
        [],
        lineage,
        workers=1,
    )
    assert (staged.rows, staged.quarantined) == (25, 12)
    for name in ("quarantine.parquet", "quarantine2.parquet"):
        kept = storage.read_partition(tmp_path / name)
        assert kept[UNPARSED_COLUMN].tolist() == ['"a string"', "7", "null", '["a", "list"]'] * 3
    for name in ("hashed.parquet", "hashed2.parquet"):
        hashed = storage.read_partition(tmp_path / name)
        assert UNPARSED_COLUMN not in hashed.columns and len(hashed) == 25


@pytest.mark.parametrize(
    ("path", "one_pass", "raw", "quarantined"),
    [("items", False, 25, 0), ("mixed", False, 37, 12), ("mixed", True, 37, 12)],
    ids=["objects", "non-objects-staged", "non-objects-one-pass"],
)
def test_a_pipeline_extracts_from_the_api_with_the_platforms_client_certificate(
    platform, write_config, instance, path, one_pass, raw, quarantined
):
    import copy

    import yaml

    from secure_etl.config import load_config
    from secure_etl.defs.build import build_definitions
    from secure_etl.defs.certificates import RENEWAL_JOB
    from secure_etl.etl import storage
    from secure_etl.pki.renewal import certificate_store, ensure_certificate, trust_bundle

    for name in ("db-server", "etl-client"):
        ensure_certificate(platform, name)
    server_files = certificate_store(platform).paths("db-server")
    pki = {
        "ca": str(trust_bundle(platform, "db-server")),
        "server": (str(server_files.fullchain), str(server_files.privkey)),
    }
    with serve_api(pki) as url:  # the same mutual-TLS server, platform certificates
        data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
        data["pipelines"]["customers"].update(
            source={
                "type": "https_api",
                "url": f"{url}/{path}?tenant=a",
                "cursor_param": "cursor",
                "start_param": "since",
                "end_param": "until",
                "max_pages": 3,
                "max_response_bytes": 4096,
                "deadline_s": 60,
            },
            key_column="id",
            one_pass=one_pass,
            transforms=[{"type": "pseudonymise", "columns": ["email"], "key": "pseudo-1"}],
        )
        config = load_config(write_config(data, "api.yaml"))
        defs = build_definitions(config)
        defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
        result = defs.resolve_job_def("customers_etl").execute_in_process(
            partition_key="2026-03-01-10:00", instance=instance
        )
    checks = {e.check_name: (e.passed, e.description) for e in result.get_asset_check_evaluations()}
    assert all(passed for passed, _ in checks.values()), checks
    assert checks["rows_reconcile"][1] == (
        f"raw {raw} = loaded 25 + quarantined {quarantined} + filtered 0"
    )
    metadata = {
        e.asset_key.path[0]: e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert {stage: m["rows"].value for stage, m in metadata.items()} == {
        "raw": raw,
        "hashed": 25,
        "loaded": 25,
    }
    assert metadata["hashed"]["quarantined_rows"].value == quarantined
    assert ((("commonName", "etl-client.test"),),) in Api.seen_clients
    assert all("tenant=a" in p for _, p in Api.requests)
    if quarantined:  # the records are kept, encrypted, in the quarantine file
        qfile = storage.partition_file(
            config.resolved_state_dir(), "quarantine", "customers", "2026-03-01-10:00"
        )
        assert b"a string" not in qfile.read_bytes()
        kept = storage.read_partition(qfile, storage.raw_crypto(config))
        assert kept[UNPARSED_COLUMN].tolist() == ['"a string"', "7", "null", '["a", "list"]'] * 3


def test_the_pipelines_bounds_reach_the_source(api, pki):
    from secure_etl.config import HttpsApiSource
    from secure_etl.etl import registry
    from secure_etl.etl.connector import ClientTls, Runtime

    config = HttpsApiSource(type="https_api", url=f"{api}/links", max_pages=1)
    source = registry.source(config, Runtime(tls=ClientTls(*pki["client"], pki["ca"])))
    with pytest.raises(ApiError, match=r"max_pages \(1\)"):
        list(source.chunks("2026-03-01-10:00"))


@pytest.mark.parametrize(
    "origin", ["http://api2.example.com", "https://api2.example.com/path", "https://u@h"]
)
def test_an_allowed_origin_is_https_scheme_host_and_port_only(origin):
    from pydantic import ValidationError

    from secure_etl.config import HttpsApiSource

    with pytest.raises(ValidationError, match="allowed_origins.0"):
        HttpsApiSource(type="https_api", url="https://api.example.com", allowed_origins=[origin])
