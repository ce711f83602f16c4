"""ensure_certificate: issue when missing, leave alone when fine, renew when failing; deploy."""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import yaml

from secure_etl.config import load_config
from secure_etl.pki.deploy import DeployError
from secure_etl.pki.renewal import (
    certificate_store,
    current_leaf,
    ensure_certificate,
    inspect_current,
)


def _platform_with(write_config, name, change):
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    change(data["certificates"]["db-server"])
    return load_config(write_config(data, name))


def test_issue_then_not_due_then_renew_when_the_config_asks_for_more(platform, write_config):
    first = ensure_certificate(platform, "db-server")
    second = ensure_certificate(platform, "db-server")
    assert (first.outcome, second.outcome) == ("issued", "not_due")
    assert second.version == first.version

    wider = _platform_with(
        write_config, "wider.yaml", lambda c: c["identifiers"].append("db.internal.test")
    )
    third = ensure_certificate(wider, "db-server")
    assert third.outcome == "renewed"
    assert "covers_identifiers" in third.reason and "db.internal.test" in third.reason
    assert all(r.passed for r in inspect_current(wider, "db-server"))


def test_a_deploy_command_runs_with_the_certificate_in_its_environment(write_config, tmp_path):
    marker = tmp_path / "deployed"
    script = f'printf "%s %s" "$SECURE_ETL_CERT_NAME" "$SECURE_ETL_CERT_VERSION" > {marker}'
    platform = _platform_with(
        write_config,
        "deploy.yaml",
        lambda c: c.update(deploy=[{"type": "command", "argv": ["sh", "-c", script]}]),
    )
    result = ensure_certificate(platform, "db-server")
    assert marker.read_text() == f"db-server {result.version}"
    assert result.deployed == ["command sh exited 0"]


def test_a_failing_deploy_is_reported_and_the_new_certificate_stays(write_config):
    platform = _platform_with(
        write_config,
        "fail.yaml",
        lambda c: c.update(
            deploy=[{"type": "command", "argv": ["sh", "-c", "echo no >&2; exit 3"]}]
        ),
    )
    with pytest.raises(DeployError, match="'sh' exited 3: no"):
        ensure_certificate(platform, "db-server")
    assert certificate_store(platform).has_current("db-server")


def test_a_deploy_webhook_is_called_with_a_json_notice(write_config, monkeypatch):
    received = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (the http.server API)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.handle_request, daemon=True).start()
    monkeypatch.setenv("DEPLOY_URL", f"http://127.0.0.1:{server.server_port}/hook")
    platform = _platform_with(
        write_config,
        "hook.yaml",
        lambda c: c.update(deploy=[{"type": "webhook", "url_env": "DEPLOY_URL"}]),
    )
    try:
        result = ensure_certificate(platform, "db-server")
    finally:
        server.server_close()
    assert received == [{"certificate": "db-server", "version": result.version, "event": "issued"}]
    assert result.deployed == ["webhook $DEPLOY_URL answered 204"]


def test_a_busy_deploy_webhook_is_asked_again_after_its_retry_after(write_config, monkeypatch):
    import time

    answers, asked_at = [503, 204], []

    class Busy(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (the http.server API)
            self.rfile.read(int(self.headers["Content-Length"]))
            asked_at.append(time.monotonic())
            self.send_response(answers.pop(0))
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(
        target=lambda: [server.handle_request() for _ in range(2)], daemon=True
    ).start()
    monkeypatch.setenv("DEPLOY_URL", f"http://127.0.0.1:{server.server_port}/hook")
    platform = _platform_with(
        write_config,
        "busy.yaml",
        lambda c: c.update(deploy=[{"type": "webhook", "url_env": "DEPLOY_URL"}]),
    )
    try:
        result = ensure_certificate(platform, "db-server")
    finally:
        server.server_close()
    assert result.deployed == ["webhook $DEPLOY_URL answered 204"]
    assert len(asked_at) == 2 and asked_at[1] - asked_at[0] >= 1.0  # never sooner


def _public(platform, name) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return (
        current_leaf(platform, name)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def test_a_new_key_at_each_renewal_unless_reuse_is_configured(platform, write_config):
    ensure_certificate(platform, "db-server")
    first = _public(platform, "db-server")
    ensure_certificate(platform, "db-server", force=True)
    second = _public(platform, "db-server")
    assert second != first

    reusing = _platform_with(write_config, "reuse.yaml", lambda c: c.update(reuse_key=True))
    ensure_certificate(reusing, "db-server", force=True)
    assert _public(reusing, "db-server") == second

    other_type = _platform_with(
        write_config, "rsa.yaml", lambda c: c.update(reuse_key=True, key_type="rsa2048")
    )
    ensure_certificate(other_type, "db-server", force=True)
    assert _public(other_type, "db-server") != second  # a key of the new type, not the old
