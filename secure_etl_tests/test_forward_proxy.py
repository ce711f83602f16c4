"""Alerts and ACME through a forward proxy: tinyproxy (Debian's) started on loopback, the
receivers real servers. The alert receiver listens on 127.0.0.2 and accepts only the
proxy's outgoing address (127.0.0.3), so a direct post (from 127.0.0.1) is refused.
(The HTTPS source's proxy tests are in etl/test_https_api_key_and_proxy.py.)"""

from __future__ import annotations

import copy
import json
import secrets
import subprocess
import sys

import pytest
import yaml

from secure_etl.config import AlertsConfig, ConfigError, load_config
from secure_etl.monitor.notify import Notification, channels_for, deliver
from secure_etl_tests.conftest import BASE_CONFIG
from secure_etl_tests.servers import PROXY_SOURCE, SERVER_HOST, Tinyproxy, TlsServer, make_pki

NOTE = Notification("check_failed", "expiry_window failed on web", "2 days left", "ERROR", "k-1")


def _channel(kind: str, pki, proxy: dict | None):
    channel = {"type": kind, "url_env": "T_ALERT_URL", "ca_bundle": pki["ca"], "timeout_s": 5}
    if proxy:
        channel["proxy"] = proxy
    return channels_for(AlertsConfig(channels=[channel]))


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["webhook", "slack"])
def test_an_alert_goes_through_tinyproxy_and_a_direct_post_is_refused(kind, tmp_path, monkeypatch):
    pki = make_pki(tmp_path)
    with TlsServer(pki["server"], lambda r: (200, {}), peers={PROXY_SOURCE}) as receiver:
        secret_path = f"/hooks/{secrets.token_hex(8)}"  # a webhook URL is a secret
        monkeypatch.setenv("T_ALERT_URL", receiver.origin + secret_path)
        [direct] = deliver(NOTE, _channel(kind, pki, None), attempts=1)
        assert not direct.ok and receiver.refused == ["127.0.0.1"]

        proxy = Tinyproxy(tmp_path / "tinyproxy", [receiver.port]).start()
        try:
            [through] = deliver(NOTE, _channel(kind, pki, {"url": proxy.url}), attempts=1)
        finally:
            proxy.stop()
    assert through.ok, through.error
    [post] = receiver.requests
    assert (post.peer, post.method, post.path) == (PROXY_SOURCE, "POST", secret_path)
    assert (
        "expiry_window failed on web"
        in json.loads(post.body)["text" if kind == "slack" else "title"]
    )
    assert proxy.tunnels() == [f"{SERVER_HOST}:{receiver.port}"]
    assert secret_path not in proxy.log()  # the proxy saw the host and port only


def test_an_http_alert_url_is_not_sent_through_a_proxy(tmp_path, monkeypatch):
    pki = make_pki(tmp_path)
    monkeypatch.setenv("T_ALERT_URL", "http://127.0.0.1:9/hook")
    [refused] = deliver(NOTE, _channel("webhook", pki, {"url": "http://127.0.0.1:9"}), attempts=1)
    assert not refused.ok
    assert refused.error == (
        "webhook: $T_ALERT_URL is not an https:// URL; through the proxy only https is sent "
        "(the proxy would read anything else)"
    )


@pytest.mark.parametrize(
    ("proxy", "message"),
    [
        ({"url": "http://etl:hunter2@proxy:3128"}, "credentials in the proxy URL are refused"),
        ({"url": "socks5://proxy:1080"}, "not an http:// or https:// proxy address"),
        ({"url": "http://proxy:3128/path"}, "without path or query"),
        ({"url": "http://proxy:port"}, "not a URL"),
        ({"url": "http://proxy:3128", "username_env": "U"}, "username_env and password_env"),
        ({"url": "http://proxy:3128", "ca_bundle": "ca.pem"}, "verifies an https:// proxy"),
        (
            {"url": "http://proxy:3128", "username_env": "NOT A NAME", "password_env": "P"},
            "pattern",
        ),
    ],
)
def test_a_bad_proxy_is_refused_at_load_naming_the_key_and_never_echoing_a_password(
    proxy, message, write_config
):
    data = copy.deepcopy(BASE_CONFIG)
    data["pipelines"]["customers"]["source"] = {
        "type": "https_api",
        "url": "https://api.example.com/items",
        "proxy": proxy,
    }
    with pytest.raises(ConfigError) as refused:
        load_config(write_config(data))
    assert "pipelines.customers.source" in str(refused.value) and message in str(refused.value)
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("header", ["Host", "Proxy-Authorization", "Bad Header", "X-Key:"])
def test_an_api_key_header_that_cannot_carry_it_is_refused_at_load(header, write_config):
    data = copy.deepcopy(BASE_CONFIG)
    data["pipelines"]["customers"]["source"] = {
        "type": "https_api",
        "url": "https://api.example.com/items",
        "api_key": {"env": "API_KEY", "header": header},
    }
    with pytest.raises(ConfigError, match=r"pipelines\.customers\.source.*api_key\.header"):
        load_config(write_config(data))


def test_an_email_channel_with_a_proxy_is_refused_at_load(write_config):
    data = {
        **BASE_CONFIG,
        "alerts": {
            "channels": [
                {
                    "type": "email",
                    "host": "smtp.example.com",
                    "sender": "etl@example.com",
                    "recipients": ["ops@example.com"],
                    "proxy": {"url": "http://proxy.example.com:3128"},
                }
            ]
        },
    }
    with pytest.raises(ConfigError, match="email goes over SMTP, which an HTTP CONNECT proxy"):
        load_config(write_config(data))


@pytest.mark.integration
def test_an_acme_issuer_with_a_proxy_issues_from_pebble_through_tinyproxy(
    acme_platform, acme_ca, write_config, tmp_path
):
    from secure_etl.pki.renewal import certificate_store, ensure_certificate

    proxy = Tinyproxy(tmp_path / "tinyproxy", [acme_ca.ports["listen"]]).start()
    try:
        data = yaml.safe_load((tmp_path / "acme.yaml").read_text())
        data["issuers"]["pebble"]["proxy"] = {"url": proxy.url}
        config = load_config(write_config(data, "acme-proxy.yaml"))
        result = ensure_certificate(config, "web")
    finally:
        proxy.stop()
    assert result.outcome == "issued", result
    assert certificate_store(config).paths("web").fullchain.exists()
    tunnels = proxy.tunnels()
    assert tunnels and set(tunnels) == {f"127.0.0.1:{acme_ca.ports['listen']}"}


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "secure_etl.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.integration
def test_acme_issue_with_proxy_goes_through_tinyproxy(acme_ca, tmp_path):
    proxy = Tinyproxy(tmp_path / "tinyproxy", [acme_ca.ports["listen"]]).start()
    try:
        issued = _cli(
            "acme", "issue", "-d", "proxied.example.com", "--directory", acme_ca.directory_url,
            "--ca-bundle", str(acme_ca.ca_bundle), "--http-01-address", "127.0.0.1",
            "--http-01-port", str(acme_ca.http_port), "--account-key", str(tmp_path / "a.key"),
            "--out", str(tmp_path / "out"), "--proxy", proxy.url,
        )  # fmt: skip
    finally:
        proxy.stop()
    assert issued.returncode == 0, issued.stderr
    assert (tmp_path / "out" / "fullchain.pem").exists()
    assert set(proxy.tunnels()) == {f"127.0.0.1:{acme_ca.ports['listen']}"}


def test_acme_issue_refuses_a_proxy_url_with_a_password_without_showing_it(tmp_path):
    refused = _cli(
        "acme", "issue", "-d", "a.example.com", "--directory", "https://127.0.0.1:9/dir",
        "--http-01-port", "5002", "--account-key", str(tmp_path / "a.key"),
        "--out", str(tmp_path / "out"), "--proxy", "http://etl:hunter2@127.0.0.1:3128",
    )  # fmt: skip
    assert refused.returncode == 2
    assert "--proxy: credentials in the proxy URL are refused" in refused.stderr
    assert "hunter2" not in refused.stderr + refused.stdout
    assert not (tmp_path / "a.key").exists()
