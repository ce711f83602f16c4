"""The HTTPS API source against a real local HTTPS server that requires client certificates."""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from secure_etl.etl.https_api import ApiError, ApiSource, client_context, fetch_pages
from secure_etl.pki.internal_ca import InternalCA
from secure_etl.pki.keys import generate_private_key

RECORDS = [{"id": i, "email": f"u{i}@example.com"} for i in range(25)]


class Api(BaseHTTPRequestHandler):
    script: list = []  # statuses to answer before the real page (e.g. 429, 503)
    seen_clients: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.seen_clients.append(self.connection.getpeercert()["subject"])
        if self.script:
            status, headers = self.script.pop(0)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        start = int(query.get("cursor", ["0"])[0])
        page = RECORDS[start : start + 10]
        following = start + 10 if start + 10 < len(RECORDS) else None
        if url.path == "/links":
            following = (
                f"https://localhost:{self.server.server_port}/links?cursor={following}"
                if following is not None
                else None
            )
        body = json.dumps({"data": page, "next": following}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

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
def serve_api(pki):
    """The Api handler behind TLS that requires a client certificate from pki["ca"]."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki["ca"])
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS
    context.load_cert_chain(*pki["server"])
    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Api.script, Api.seen_clients = [], []
    try:
        yield f"https://localhost:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def api(pki):
    with serve_api(pki) as url:
        yield url


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


def test_a_pipeline_extracts_from_the_api_with_the_platforms_client_certificate(
    platform, write_config, instance
):
    import copy

    import yaml

    from secure_etl.config import load_config
    from secure_etl.defs.build import build_definitions
    from secure_etl.defs.certificates import RENEWAL_JOB
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
                "url": f"{url}/items",
                "cursor_param": "cursor",
                "start_param": "since",
                "end_param": "until",
            },
            key_column="id",
            transforms=[{"type": "pseudonymise", "columns": ["email"], "key": "pseudo-1"}],
        )
        defs = build_definitions(load_config(write_config(data, "api.yaml")))
        defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
        result = defs.resolve_job_def("customers_etl").execute_in_process(
            partition_key="2026-03-01-10:00", instance=instance
        )
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert all(checks.values()), checks
    rows = {
        e.asset_key.path[0]: e.materialization.metadata["rows"].value
        for e in result.get_asset_materialization_events()
    }
    assert rows == {"raw": 25, "hashed": 25, "loaded": 25}
    assert ((("commonName", "etl-client.test"),),) in Api.seen_clients
