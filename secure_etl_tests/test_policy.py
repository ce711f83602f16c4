"""The security policy as code: each point has a config that breaks it, refused at load
with one line naming the place, the point and what to change; an exemption with its
reason lets it load and is reported; the bundled demo keeps the default policy."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from secure_etl import policy
from secure_etl.config import ConfigError, default_config_path, load_config
from secure_etl.monitor import health
from secure_etl_tests.conftest import BASE_CONFIG

API = {"type": "https_api", "url": "https://api.example.test/rows"}
PG = {"host": "db.example.test", "dbname": "shop", "user": "etl", "table": "orders"}
ACME = {
    "type": "acme",
    "directory_url": "https://acme.example.test/directory",
    "challenge": {"type": "http-01", "port": 5002},
}


def _pipeline(d: dict) -> dict:
    return d["pipelines"]["customers"]


def _api_source(d: dict) -> None:
    _pipeline(d)["source"] = dict(API)


# point -> (a change that breaks it, where the refusal points, what it says to change)
BREAKS = {
    "min_tls_sources": (
        lambda d: _pipeline(d).update(source={**API, "min_tls": "1.2"}),
        "pipelines.customers.source.min_tls",
        "raise it or leave min_tls out",
    ),
    "min_tls_destinations": (
        lambda d: _pipeline(d).update(destination={"type": "postgres", **PG, "min_tls": "1.2"}),
        "pipelines.customers.destination.min_tls",
        "below the policy's 1.3",
    ),
    "min_tls_alerts": (
        lambda d: d.update(
            alerts={
                "channels": [
                    {"type": "email", "host": "smtp.example.test", "tls": "none"}
                    | {"sender": "a@example.test", "recipients": ["b@example.test"]}
                ]
            }
        ),
        "alerts.channels[0].tls",
        "use starttls or implicit",
    ),
    "min_tls_acme": (
        lambda d: d["issuers"].update(corp={**ACME, "min_tls": "1.2"}),
        "issuers.corp.min_tls",
        "below the policy's 1.3",
    ),
    "mtls_sources": (
        lambda d: _pipeline(d).update(
            source={"type": "postgres", **PG, "time_column": "created_at"}
            | {"sslmode": "disable", "allow_insecure_sslmode": True},
            # The TLS point set aside, so that the refusal is the mutual-TLS point's.
            exemption={"min_tls_sources": "a legacy database on the same host"},
        ),
        "pipelines.customers.source.sslmode",
        "use verify-full",
    ),
    "key_strength": (
        lambda d: (
            d.update(security_policy={"min_rsa_bits": 3072}),
            d["certificates"]["etl-client"].update(key_type="rsa2048"),
        ),
        "certificates.etl-client.key_type",
        "use ec256 or ec384 or rsa3072 or rsa4096",
    ),
    "encrypt_at_rest": (
        lambda d: d.update(encrypt_raw=False),
        "encrypt_raw",
        "set encrypt_raw: true",
    ),
    "key_sources": (
        lambda d: d.update(security_policy={"kms_types": ["vault_transit"]}),
        "kms.type",
        "not among security_policy.kms_types (vault_transit)",
    ),
    "raw_retention": (
        lambda d: _pipeline(d).update(retention={"raw_grace_hours": 48}),
        "pipelines.customers.retention.raw_grace_hours",
        "longer than the policy's 24 h; lower it",
    ),
    "audit_trail": (
        lambda d: d.update(audit={"path": "audit/audit.log", "checkpoint_dir": "audit/cp"}),
        "audit.checkpoint_dir",
        "put them elsewhere",
    ),
    "pii_transformed": (
        lambda d: _pipeline(d).update(pii=["country"]),
        "pipelines.customers.pii",
        "PII column country would be loaded as it is; pseudonymise, encrypt, mask or drop",
    ),
    "api_key_sources": (
        lambda d: (_api_source(d), d.update(security_policy={"api_key_sources": True})),
        "pipelines.customers.source",
        "add api_key: {env: VAR}",
    ),
    "proxy_outbound": (
        lambda d: (_api_source(d), d.update(security_policy={"proxy_outbound": True})),
        "pipelines.customers.source",
        "set proxy: {url: http://host:port}",
    ),
}
# Where each point's exemption goes in the breaking config.
EXEMPT_AT = {
    "min_tls_alerts": lambda d: d["alerts"]["channels"][0],
    "min_tls_acme": lambda d: d["issuers"]["corp"],
    "key_strength": lambda d: d["certificates"]["etl-client"],
    "encrypt_at_rest": lambda d: d.setdefault("security_policy", {}),
    "key_sources": lambda d: d.setdefault("security_policy", {}),
    "audit_trail": lambda d: d.setdefault("security_policy", {}),
}


def _broken(point: str) -> dict:
    data = copy.deepcopy(BASE_CONFIG)
    BREAKS[point][0](data)
    return data


def test_every_point_has_a_config_that_breaks_it():
    assert set(BREAKS) == set(policy.POINTS)


@pytest.mark.parametrize("point", list(BREAKS))
def test_a_config_that_breaks_a_point_is_refused_naming_the_place_the_point_and_the_fix(
    point, write_config
):
    path = write_config(_broken(point))

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    err = caught.value
    _, where, fix = BREAKS[point]
    assert err.key == where
    assert f"policy point {point}:" in err.message and fix in err.message
    assert "\n" not in str(err) and str(path) in str(err)


@pytest.mark.parametrize("point", list(BREAKS))
def test_an_exemption_with_its_reason_lets_it_load_and_is_reported(point, write_config):
    data = _broken(point)
    holder = EXEMPT_AT.get(point, _pipeline)(data)
    holder.setdefault("exemption", {})[point] = "ticket SEC-42: accepted until the migration"

    config = load_config(write_config(data))

    entry = config.policy_report().points[point]
    assert entry.status == "exempted" and not entry.violations
    assert [e.reason for e in entry.exemptions] == ["ticket SEC-42: accepted until the migration"]
    assert "ticket SEC-42" in "\n".join(policy.render_text(config.policy_report()))


@pytest.mark.parametrize("reason", [None, "", "   "])
def test_an_exemption_without_a_reason_is_refused(reason, write_config):
    data = _broken("raw_retention")
    _pipeline(data)["exemption"] = {"raw_retention": reason}

    with pytest.raises(ConfigError) as caught:
        load_config(write_config(data))

    assert caught.value.key == "pipelines.customers.exemption.raw_retention"
    assert "needs its reason" in caught.value.message


def test_exemptions_may_be_a_list_of_points_and_reasons(write_config):
    data = _broken("raw_retention")
    _pipeline(data)["exemption"] = [{"point": "raw_retention", "reason": "audit hold, case 7"}]

    entry = load_config(write_config(data)).policy_report().points["raw_retention"]

    assert [(e.where, e.reason) for e in entry.exemptions] == [
        ("pipelines.customers", "audit hold, case 7")
    ]


def test_an_exemption_in_a_place_the_point_does_not_apply_is_refused(write_config):
    data = copy.deepcopy(BASE_CONFIG)
    _pipeline(data)["exemption"] = {"encrypt_at_rest": "not here"}

    with pytest.raises(ConfigError) as caught:
        load_config(write_config(data))

    assert caught.value.key == "pipelines.customers.exemption.encrypt_at_rest"
    assert "only on a platform" in caught.value.message


def test_an_unknown_point_is_refused_with_the_known_ones(write_config):
    data = copy.deepcopy(BASE_CONFIG)
    _pipeline(data)["exemption"] = {"no_tls": "typo"}

    with pytest.raises(ConfigError) as caught:
        load_config(write_config(data))

    assert "mtls_sources" in caught.value.message


def test_the_bundled_demo_keeps_the_default_policy_with_no_exemption():
    config = load_config(default_config_path())
    report = config.policy_report()

    assert not report.violations
    assert all(not p.exemptions for p in report.points.values())
    required = [p for p in report.points.values() if p.required]
    assert {p.status for p in required} == {"enforced"}
    # The source reads the policy's TLS version: its connector sets it as the minimum.
    assert config.pipelines["customers"].source.min_tls == "1.3"
    assert report.points["pii_transformed"].enforced_at == [
        "pipelines.customers (PII: full_name, email, phone)"
    ]


def test_the_policy_minimum_reaches_the_connectors(write_config):
    from secure_etl.etl.sources.https_api import client_context
    from secure_etl.security.tls import libpq_minimum, verifying_context

    data = copy.deepcopy(BASE_CONFIG)
    _pipeline(data)["source"] = dict(API)
    _pipeline(data)["destination"] = {"type": "postgres", **PG}
    data["security_policy"] = {"min_tls": {"sources": "1.2"}}

    config = load_config(write_config(data))

    p = config.pipelines["customers"]
    assert (p.source.min_tls, p.destination.min_tls) == ("1.2", "1.3")
    assert verifying_context(None, p.source.min_tls).minimum_version.name == "TLSv1_2"
    assert libpq_minimum(p.destination.min_tls) == "TLSv1.3"
    assert client_context.__defaults__ == (None,)  # no caller gets 1.2 by default


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "secure_etl.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_policy_check_exits_1_on_a_violation_and_lists_every_point(write_config):
    path = write_config(_broken("pii_transformed"))

    result = _cli("policy", "check", "--config", str(path))

    assert result.returncode == 1, result.stderr
    assert "VIOLATED: pipelines.customers.pii: PII column country" in result.stdout
    assert all(point in result.stdout for point in policy.POINTS)


def test_policy_check_of_the_demo_exits_0_and_gives_json():
    result = _cli("policy", "check", "--json", "--config", str(default_config_path()))

    assert result.returncode == 0, result.stderr
    points = json.loads(result.stdout)["points"]
    assert {p["point"] for p in points} == set(policy.POINTS)
    assert {p["status"] for p in points} == {"enforced", "not required"}


def test_the_health_report_has_a_policy_section_and_a_gauge_per_point():
    config = load_config(default_config_path())
    report = health.HealthReport(
        generated_at="2026-12-02T13:00:00+00:00",
        instance="none",
        pipelines=[],
        certificates=[],
        security=health.SecurityHealth(0, 0, True, 0, 0, "", True, 0),
        policy=health.policy_status(config),
    )

    text = health.render_text(report)
    metrics = health.render_prometheus(report)

    assert "Security policy" in text and "- pii_transformed: enforced (true)" in text
    for point in policy.POINTS:
        assert f'secure_etl_policy_point_violations{{point="{point}"}} 0.0' in metrics
    assert 'secure_etl_policy_point_enforced{point="mtls_sources"} 1.0' in metrics
    assert 'secure_etl_policy_point_enforced{point="proxy_outbound"} 0.0' in metrics


@pytest.fixture
def tls12_only_server(tmp_path):
    """A real HTTPS server on loopback that speaks TLS 1.2 at most, answering 200."""
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from cryptography.hazmat.primitives import serialization

    from secure_etl_tests.pki.certs import authority, leaf, new_key, pem

    ca, key = authority(), new_key("ec256")
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    (tmp_path / "server.pem").write_bytes(pem(leaf(ca, ["127.0.0.1"], key=key)))
    (tmp_path / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    class Ok(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], str(tmp_path / "ca.pem")
    finally:
        server.shutdown()
        server.server_close()


def _handshake(port: int, context) -> str:
    import socket

    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.version()


def test_a_tls_1_2_server_is_refused_by_the_default_policy_and_reached_when_exempted(
    tls12_only_server, monkeypatch
):
    import ssl

    from secure_etl.config import WebhookChannel
    from secure_etl.monitor import notify
    from secure_etl.security.tls import verifying_context

    port, ca = tls12_only_server

    with pytest.raises(ssl.SSLError, match="(?i)protocol version|unsupported protocol"):
        _handshake(port, verifying_context(ca, None))  # what every connector builds
    assert _handshake(port, verifying_context(ca, "1.2")) == "TLSv1.2"

    monkeypatch.setenv("HOOK_URL", f"https://127.0.0.1:{port}/hook")
    hook = {"type": "webhook", "url_env": "HOOK_URL", "ca_bundle": ca}
    note = notify.Notification("check_failed", "t", "x", "WARN", "policy-test")
    [strict] = notify.channels_for(_alerts([WebhookChannel.model_validate(hook)]))
    with pytest.raises(notify.DeliveryError, match="ConnectError"):
        strict.send(note)
    [relaxed] = notify.channels_for(
        _alerts([WebhookChannel.model_validate({**hook, "min_tls": "1.2"})])
    )
    relaxed.send(note)  # no error: delivered over TLS 1.2


def _alerts(channels):
    from secure_etl.config import AlertsConfig

    return AlertsConfig(channels=channels)


def test_every_command_refuses_a_config_that_breaks_the_policy_in_one_line_exit_2(write_config):
    path = write_config(_broken("encrypt_at_rest"))

    result = _cli("certs", "list", "--config", str(path))

    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line == (
        f"secure-etl: {path}: encrypt_raw: policy point encrypt_at_rest: encrypt_raw is "
        "false, so raw partitions (they hold PII) are written in the clear; set encrypt_raw: true"
    )
