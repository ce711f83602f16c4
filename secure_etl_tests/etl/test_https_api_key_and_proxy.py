"""The HTTPS API source's API key and forward proxy, against real servers: an HTTPS server
that requires our client certificate and checks the key, and tinyproxy (Debian's forward
proxy) between us. The server listens on 127.0.0.2 and, where it says so, accepts only
the proxy's outgoing address (127.0.0.3), so a direct connection (from 127.0.0.1) fails."""

from __future__ import annotations

import contextlib
import copy
import logging
import secrets
import socket
import ssl
import threading

import pytest

from secure_etl.config import HttpsApiSource
from secure_etl.etl.connector import ClientTls, Runtime
from secure_etl.etl.sources.https_api import ApiError, HttpsApiReader
from secure_etl_tests.servers import (
    PROXY_SOURCE,
    SERVER_HOST,
    Request,
    Tinyproxy,
    TlsServer,
    make_pki,
)

KEY = f"key-{secrets.token_hex(12)}"
KEY_ENV = "SECURE_ETL_TEST_API_KEY"
RECORDS = [{"id": i, "email": f"u{i}@example.com"} for i in range(10)]
PARTITION = "2026-03-01-10:00"


def paged(expect: tuple[str, str] | None = None, next_link: str = "/items?page=1"):
    """Two pages of RECORDS (the first links to ``next_link``); 401 unless the request
    carries the header ``expect`` = (name, value), when given."""

    def answer(request: Request) -> tuple[int, dict]:
        if expect and request.headers.get(expect[0]) != expect[1]:
            return 401, {"error": "a valid API key is required"}
        if "page=1" in request.path:
            return 200, {"data": RECORDS[5:], "next": None}
        return 200, {"data": RECORDS[:5], "next": next_link}

    return answer


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path)


def _read(pki, url: str, **options) -> list[dict]:
    config = HttpsApiSource(type="https_api", url=url, max_retries=0, **options)
    reader = HttpsApiReader(config, Runtime(tls=ClientTls(*pki["client"], pki["ca"])))
    return [row for chunk in reader.chunks(PARTITION) for row in chunk.to_dict("records")]


def test_the_key_from_the_environment_is_sent_as_a_bearer_token_and_accepted(pki, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    answer = paged(expect=("authorization", f"Bearer {KEY}"))
    with TlsServer(pki["server"], answer, client_ca=pki["ca"]) as api:
        rows = _read(pki, f"{api.origin}/items", api_key={"env": KEY_ENV})
    assert [r["id"] for r in rows] == list(range(10))
    assert [(r.client_cn, r.headers["authorization"]) for r in api.requests] == [
        ("etl", f"Bearer {KEY}")
    ] * 2


def test_a_named_header_carries_the_key_itself(pki, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with TlsServer(pki["server"], paged(expect=("x-api-key", KEY)), client_ca=pki["ca"]) as api:
        rows = _read(pki, f"{api.origin}/items", api_key={"env": KEY_ENV, "header": "X-Api-Key"})
    assert len(rows) == 10
    assert all("authorization" not in r.headers for r in api.requests)


def test_a_wrong_key_is_refused_and_an_echo_of_it_is_hidden_in_the_error(pki, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)

    def echoing(request: Request) -> tuple[int, dict]:
        return 401, {"error": f"unknown key {request.headers.get('authorization')}"}

    with (
        TlsServer(pki["server"], echoing, client_ca=pki["ca"]) as api,
        pytest.raises(ApiError, match="HTTP 401") as refused,
    ):
        _read(pki, f"{api.origin}/items", api_key={"env": KEY_ENV})
    assert KEY not in str(refused.value)
    assert "unknown key Bearer <api key>" in str(refused.value)


def test_a_missing_key_variable_is_refused_by_name_before_anything_is_sent(pki, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with TlsServer(pki["server"], paged(), client_ca=pki["ca"]) as api:
        with pytest.raises(ApiError) as refused:
            _read(pki, f"{api.origin}/items", api_key={"env": KEY_ENV})
        assert api.requests == []
    assert str(refused.value) == (
        f"{api.origin}/items: api_key.env: the environment variable {KEY_ENV} is not set "
        "(or is empty); set it to the API key where the pipeline runs"
    )


def test_the_key_goes_to_the_urls_origin_only_not_to_an_allowed_other_origin(pki, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with TlsServer(pki["server"], paged(), client_ca=pki["ca"]) as other:
        answer = paged(
            expect=("authorization", f"Bearer {KEY}"), next_link=f"{other.origin}/items?page=1"
        )
        with TlsServer(pki["server"], answer, client_ca=pki["ca"]) as api:
            rows = _read(
                pki, f"{api.origin}/items", api_key={"env": KEY_ENV}, allowed_origins=[other.origin]
            )
    assert len(rows) == 10  # page two came from the other origin, over mutual TLS
    assert [r.headers.get("authorization") for r in api.requests] == [f"Bearer {KEY}"]
    assert [(r.path, r.client_cn) for r in other.requests] == [("/items?page=1", "etl")]
    assert "authorization" not in other.requests[0].headers


# Through tinyproxy


@pytest.fixture
def proxied_api(pki, tmp_path, monkeypatch):
    """The key-checking API accepting only connections from the proxy, and tinyproxy
    allowed to tunnel to it."""
    monkeypatch.setenv(KEY_ENV, KEY)
    answer = paged(expect=("authorization", f"Bearer {KEY}"))
    with TlsServer(pki["server"], answer, peers={PROXY_SOURCE}, client_ca=pki["ca"]) as api:
        proxy = Tinyproxy(tmp_path / "tinyproxy", [api.port]).start()
        try:
            yield api, proxy
        finally:
            proxy.stop()


@pytest.mark.integration
def test_through_tinyproxy_mutual_tls_runs_end_to_end_and_a_direct_connection_is_refused(
    pki, proxied_api
):
    api, proxy = proxied_api
    with pytest.raises(ApiError, match=f"GET {api.origin}/items"):
        _read(pki, f"{api.origin}/items", api_key={"env": KEY_ENV})
    assert api.refused == ["127.0.0.1"] and api.requests == []

    rows = _read(pki, f"{api.origin}/items", api_key={"env": KEY_ENV}, proxy={"url": proxy.url})
    assert [r["id"] for r in rows] == list(range(10))
    assert proxy.tunnels() == [f"{SERVER_HOST}:{api.port}"]  # one tunnel, both pages
    # The server saw our certificate and our key on connections from the proxy.
    assert {(r.peer, r.client_cn, r.headers["authorization"]) for r in api.requests} == {
        (PROXY_SOURCE, "etl", f"Bearer {KEY}")
    }
    assert KEY not in proxy.log()


@contextlib.contextmanager
def recording_relay(port: int, tls: ssl.SSLContext | None = None):
    """A TCP relay to ``port`` on 127.0.0.1 that records the bytes each way: what a
    proxy there is sent (``sent``) and sends back (``received``). With ``tls`` the relay
    listens on SERVER_HOST behind TLS: an https:// proxy in front of tinyproxy."""
    listener = socket.create_server((SERVER_HOST if tls else "127.0.0.1", 0))
    sent, received, sockets = bytearray(), bytearray(), []

    def pump(source: socket.socket, target: socket.socket, record: bytearray) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                record += data
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                client = listener.accept()[0]
                if tls:
                    try:
                        client = tls.wrap_socket(client, server_side=True)
                    except OSError:  # the client refused our certificate: next one
                        client.close()
                        continue
                upstream = socket.create_connection(("127.0.0.1", port))
                sockets.extend((client, upstream))
                for args in ((client, upstream, sent), (upstream, client, received)):
                    threading.Thread(target=pump, args=args, daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    scheme, host = ("https", SERVER_HOST) if tls else ("http", "127.0.0.1")
    try:
        yield f"{scheme}://{host}:{listener.getsockname()[1]}", sent, received
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        for s in sockets:
            s.close()


@pytest.mark.integration
def test_the_proxy_is_sent_only_the_connect_request_and_then_tls_records(pki, proxied_api):
    api, proxy = proxied_api
    with recording_relay(proxy.port) as (relay, sent, received):
        rows = _read(pki, f"{api.origin}/items", api_key={"env": KEY_ENV}, proxy={"url": relay})
        sent, received = bytes(sent), bytes(received)
    assert len(rows) == 10
    head, _, tunnelled = sent.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == f"CONNECT {SERVER_HOST}:{api.port} HTTP/1.1".encode()
    assert tunnelled[:2] == b"\x16\x03"  # a TLS handshake record: the ClientHello
    answer_head, _, answered = received.partition(b"\r\n\r\n")
    assert answer_head.startswith(b"HTTP/1.") and b" 200 " in answer_head.split(b"\r\n")[0]
    assert answered[:2] == b"\x16\x03"  # the ServerHello
    for plaintext in (KEY.encode(), b"/items", b"GET ", b"u1@example.com", b'"data"'):
        assert plaintext not in sent + received


@pytest.mark.integration
def test_an_https_proxy_is_verified_by_its_ca_bundle_and_the_tls_runs_inside_its_tls(
    pki, proxied_api, tmp_path
):
    api, proxy = proxied_api
    front = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    front.load_cert_chain(*pki["server"])
    url = f"{api.origin}/items"
    with recording_relay(proxy.port, tls=front) as (relay, sent, _):
        stranger = make_pki(tmp_path / "stranger")["ca"]
        with pytest.raises(ApiError, match="CERTIFICATE_VERIFY_FAILED"):
            _read(pki, url, proxy={"url": relay, "ca_bundle": stranger})
        assert api.requests == []
        rows = _read(
            pki, url, api_key={"env": KEY_ENV}, proxy={"url": relay, "ca_bundle": pki["ca"]}
        )
        sent = bytes(sent)
    assert len(rows) == 10
    assert proxy.tunnels() == [f"{SERVER_HOST}:{api.port}"]
    assert {(r.peer, r.client_cn) for r in api.requests} == {(PROXY_SOURCE, "etl")}
    # What the proxy decrypted of its own TLS: the CONNECT, then the server's TLS.
    head, _, tunnelled = sent.partition(b"\r\n\r\n")
    assert head.startswith(f"CONNECT {SERVER_HOST}:{api.port} ".encode())
    assert tunnelled[:2] == b"\x16\x03" and KEY.encode() not in sent


@pytest.mark.integration
def test_the_proxys_login_comes_from_the_environment(pki, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    password = secrets.token_hex(8)
    with TlsServer(pki["server"], paged(), peers={PROXY_SOURCE}, client_ca=pki["ca"]) as api:
        proxy = Tinyproxy(tmp_path / "tp", [api.port], login=("etl", password)).start()
        try:
            login = {"username_env": "T_PROXY_USER", "password_env": "T_PROXY_PASSWORD"}
            through = {"url": proxy.url, **login}
            monkeypatch.setenv("T_PROXY_USER", "etl")
            monkeypatch.delenv("T_PROXY_PASSWORD", raising=False)
            with pytest.raises(ApiError, match="proxy.password_env: the environment variable "):
                _read(pki, f"{api.origin}/items", proxy=through)
            monkeypatch.setenv("T_PROXY_PASSWORD", "not-" + password)
            with pytest.raises(ApiError, match="ProxyError: 40[17] ") as refused:
                _read(pki, f"{api.origin}/items", proxy=through)
            assert password not in str(refused.value)
            assert api.requests == []
            monkeypatch.setenv("T_PROXY_PASSWORD", password)
            assert len(_read(pki, f"{api.origin}/items", proxy=through)) == 10
        finally:
            proxy.stop()
    assert {r.peer for r in api.requests} == {PROXY_SOURCE}


@pytest.mark.integration
def test_a_pipeline_through_the_proxy_keeps_the_key_out_of_logs_output_and_events(
    platform, write_config, instance, tmp_path, monkeypatch, capfd, caplog
):
    import yaml
    from dagster import serialize_value

    from secure_etl.config import load_config
    from secure_etl.defs.build import build_definitions
    from secure_etl.defs.certificates import RENEWAL_JOB
    from secure_etl.pki.renewal import ensure_certificate, trust_bundle

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, KEY)
    ensure_certificate(platform, "etl-client")
    server = make_pki(tmp_path)  # the server's certificate; clients: the platform's CA
    answer = paged(expect=("authorization", f"Bearer {KEY}"))
    client_ca = str(trust_bundle(platform, "etl-client"))
    with TlsServer(server["server"], answer, peers={PROXY_SOURCE}, client_ca=client_ca) as api:
        proxy = Tinyproxy(tmp_path / "tinyproxy", [api.port]).start()
        try:
            data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
            data["pipelines"]["customers"].update(
                source={
                    "type": "https_api",
                    "url": f"{api.origin}/items",
                    "ca_bundle": server["ca"],
                    "api_key": {"env": KEY_ENV},
                    "proxy": {"url": proxy.url},
                },
                key_column="id",
                transforms=[{"type": "pseudonymise", "columns": ["email"], "key": "pseudo-1"}],
            )
            defs = build_definitions(load_config(write_config(data, "api.yaml")))
            defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
            result = defs.resolve_job_def("customers_etl").execute_in_process(
                partition_key=PARTITION, instance=instance
            )
        finally:
            proxy.stop()
    assert result.success
    loaded = {
        e.asset_key.path[0]: e.materialization.metadata["rows"].value
        for e in result.get_asset_materialization_events()
    }
    assert loaded == {"raw": 10, "hashed": 10, "loaded": 10}
    assert {(r.peer, r.client_cn) for r in api.requests} == {(PROXY_SOURCE, "etl-client.test")}
    assert proxy.tunnels() and set(proxy.tunnels()) == {f"{SERVER_HOST}:{api.port}"}
    # Every event of both runs in full (messages, metadata, check results), as stored.
    logs = [instance.all_logs(run.run_id) for run in instance.get_runs()]
    events = [serialize_value(e) for log in logs for e in log]
    assert any("quarantined_rows" in e for e in events)  # metadata is in what is searched
    captured = capfd.readouterr()
    for place, text in {
        "event log": "\n".join(events),
        "stdout": captured.out,
        "stderr": captured.err,
        "logging": caplog.text,
        "proxy log": proxy.log(),
    }.items():
        assert KEY not in text, f"the API key is in the {place}"
