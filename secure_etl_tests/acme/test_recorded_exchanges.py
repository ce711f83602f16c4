"""Client logic Pebble 2.4.0 cannot exercise (ARI, profiles, Retry-After, rate limits),
tested against recorded protocol exchanges replayed through httpx.MockTransport.

Every test here is named `recorded`; the conformance tests against a real Pebble are in
test_pebble_*.py.
"""

from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from secure_etl.acme import client as client_module
from secure_etl.acme.client import AcmeClient, ari_cert_id
from secure_etl.acme.errors import AcmeProblem, BadNonce, ProtocolError, RateLimited
from secure_etl.acme.jws import AccountKey, b64url_decode
from secure_etl.acme.transport import Transport, parse_retry_after
from secure_etl.pki.keys import generate_private_key

CA = "https://ca.test"
DIRECTORY = {
    "newNonce": f"{CA}/nonce",
    "newAccount": f"{CA}/acct",
    "newOrder": f"{CA}/order",
    "revokeCert": f"{CA}/revoke",
    "keyChange": f"{CA}/key-change",
    "renewalInfo": f"{CA}/renewal-info",
    "meta": {"profiles": {"classic": "the usual", "shortlived": "6 days"}},
}
PROBLEM = "application/problem+json"


class Recording:
    """Replays answers in order and keeps the requests the client made."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.nonce = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.nonce += 1
        headers = {"Replay-Nonce": f"n{self.nonce}"}
        if request.url.path == "/dir":
            return httpx.Response(200, json=DIRECTORY, headers=headers)
        if request.method == "HEAD":
            return httpx.Response(200, headers=headers)
        status, body, extra = self.answers.pop(0)
        headers.update(extra)
        if isinstance(body, dict):
            return httpx.Response(status, json=body, headers=headers)
        return httpx.Response(status, content=body, headers=headers)

    def payloads(self) -> list[dict | None]:
        out = []
        for request in self.requests:
            if request.method != "POST":
                continue
            payload = json.loads(request.content)["payload"]
            out.append(json.loads(b64url_decode(payload)) if payload else None)
        return out


def _client(recording: Recording) -> AcmeClient:
    http = httpx.Client(transport=httpx.MockTransport(recording))
    transport = Transport(f"{CA}/dir", client=http)
    return AcmeClient(transport, AccountKey(generate_private_key("ec256")), f"{CA}/acct/1")


def test_recorded_bad_nonce_is_retried_with_a_fresh_nonce():
    recording = Recording(
        [
            (400, {"type": "urn:ietf:params:acme:error:badNonce", "detail": "stale"}, {}),
            (200, {"status": "valid", "contact": []}, {}),
        ]
    )
    account = _client(recording).update_contact([])
    assert account.status == "valid"
    nonces = [
        json.loads(b64url_decode(json.loads(r.content)["protected"]))["nonce"]
        for r in recording.requests
        if r.method == "POST"
    ]
    assert len(nonces) == 2 and nonces[0] != nonces[1]


def test_recorded_bad_nonce_retries_are_bounded():
    bad = (400, {"type": "urn:ietf:params:acme:error:badNonce"}, {})
    recording = Recording([bad] * 30)
    with pytest.raises(BadNonce):
        _client(recording).update_contact([])
    assert sum(r.method == "POST" for r in recording.requests) == 21


def test_recorded_problem_documents_become_typed_errors_with_subproblems():
    problem = {
        "type": "urn:ietf:params:acme:error:rejectedIdentifier",
        "detail": "Some identifiers were rejected",
        "subproblems": [
            {
                "type": "urn:ietf:params:acme:error:rejectedIdentifier",
                "detail": "forbidden by policy",
                "identifier": {"type": "dns", "value": "bad.example"},
            }
        ],
    }
    recording = Recording([(400, problem, {"Content-Type": PROBLEM})])
    with pytest.raises(AcmeProblem) as caught:
        _client(recording).new_order(["bad.example", "ok.example"])
    err = caught.value
    assert err.short_type == "rejectedIdentifier" and err.status == 400
    assert err.subproblems[0].identifier == "bad.example"
    assert "bad.example: rejectedIdentifier: forbidden by policy" in str(err)


def test_recorded_rate_limit_surfaces_its_retry_after():
    recording = Recording(
        [
            (
                429,
                {"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many"},
                {"Retry-After": "3600"},
            )
        ]
    )
    with pytest.raises(RateLimited) as caught:
        _client(recording).new_order(["a.example"])
    assert caught.value.retry_after == 3600
    assert "retry after 3600 s" in str(caught.value)


def test_retry_after_accepts_seconds_and_http_dates():
    assert parse_retry_after("120") == 120
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
    assert parse_retry_after("Thu, 01 Jan 2026 00:01:00 GMT", now=now) == 60
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_recorded_polling_waits_as_long_as_retry_after_asks(monkeypatch):
    slept = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    order = {
        "status": "processing",
        "identifiers": [],
        "authorizations": [],
        "finalize": f"{CA}/fin",
    }
    recording = Recording(
        [
            (200, order, {"Retry-After": "7"}),
            (200, order, {}),
            (200, order, {}),
            (200, dict(order, status="valid", certificate=f"{CA}/cert"), {}),
        ]
    )
    client = _client(recording)
    done = client.wait_for_order(client_module.Order.from_json(f"{CA}/o/1", order))
    assert done.status == "valid"
    assert slept[0] == client_module.FIRST_POLL_S  # a fast first poll
    assert slept[1] == 7  # honours Retry-After
    assert slept[2] < slept[3] <= client_module.MAX_POLL_INTERVAL_S  # then backs off, capped


def _cert_with(serial: int, aki: bytes) -> x509.Certificate:
    key = generate_private_key("ec256")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ari.test")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.AuthorityKeyIdentifier(aki, None, None), critical=False)
        .sign(key, hashes.SHA256())
    )


def test_ari_cert_id_matches_the_rfc_9773_example():
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    assert ari_cert_id(_cert_with(0x0087654321, aki)) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


def test_recorded_renewal_info_gives_the_window_and_renewing_sends_replaces():
    window = {
        "suggestedWindow": {"start": "2026-12-01T00:00:00Z", "end": "2026-12-03T00:00:00Z"},
        "explanationURL": "https://ca.test/why",
    }
    order = {
        "status": "pending",
        "identifiers": [{"type": "dns", "value": "a.example"}],
        "authorizations": [],
        "finalize": f"{CA}/fin",
    }
    recording = Recording(
        [
            (200, window, {"Retry-After": "21600"}),
            (201, order, {"Location": f"{CA}/o/9"}),
        ]
    )
    client = _client(recording)
    cert = _cert_with(0x0087654321, bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4"))

    info = client.renewal_info(cert)
    assert info.start == dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert info.end == dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    assert info.retry_after == 21600 and info.explanation_url == "https://ca.test/why"
    assert info.start <= info.renewal_time() <= info.end
    assert recording.requests[1].url.path == "/renewal-info/aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"

    client.new_order(["a.example"], replaces=ari_cert_id(cert))
    assert recording.payloads()[-1]["replaces"] == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


def test_recorded_profiles_are_sent_when_offered_and_refused_when_not():
    order = {"status": "pending", "identifiers": [], "authorizations": [], "finalize": f"{CA}/f"}
    recording = Recording([(201, order, {"Location": f"{CA}/o/1"})])
    client = _client(recording)
    client.new_order(["a.example"], profile="shortlived")
    assert recording.payloads()[-1]["profile"] == "shortlived"
    with pytest.raises(ProtocolError, match="offers no profile 'tlsserver'.*classic, shortlived"):
        client.new_order(["a.example"], profile="tlsserver")


def test_recorded_alternate_chain_is_chosen_by_issuer_name():
    def chain(issuer_cn: str) -> bytes:
        key = generate_private_key("ec256")
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        from cryptography.hazmat.primitives import serialization

        return cert.public_bytes(serialization.Encoding.PEM)

    link = f'<{CA}/cert/1/1>;rel="alternate", <{CA}/cert/1/2>;rel="alternate"'
    recording = Recording(
        [
            (
                200,
                chain("Root A"),
                {"Link": link, "Content-Type": "application/pem-certificate-chain"},
            ),
            (200, chain("Root B"), {}),
            (200, chain("Root C"), {}),
        ]
    )
    got = _client(recording).download(f"{CA}/cert/1", preferred_issuer="Root C")
    assert got.url == f"{CA}/cert/1/2"
    assert got.alternates == (f"{CA}/cert/1/1", f"{CA}/cert/1/2")
    assert client_module._top_issuer(got.pem) == "Root C"


@pytest.mark.parametrize(
    ("start", "end", "due"),
    [
        ("2020-01-01T00:00:00Z", "2020-01-02T00:00:00Z", True),
        ("2999-01-01T00:00:00Z", "2999-01-02T00:00:00Z", False),
    ],
)
def test_recorded_ari_window_decides_whether_the_issuer_renews(
    tmp_path, monkeypatch, start, end, due
):
    from secure_etl.config import AcmeIssuer as AcmeIssuerConfig
    from secure_etl.pki import acme_issuer

    window = {"suggestedWindow": {"start": start, "end": end}}
    recording = Recording([(200, window, {})])
    http = httpx.Client(transport=httpx.MockTransport(recording))
    monkeypatch.setattr(acme_issuer, "Transport", lambda url, **kwargs: Transport(url, client=http))
    state = tmp_path / "acme"
    state.mkdir()
    (state / "account.json").write_text(json.dumps({"url": f"{CA}/acct/1"}))
    config = AcmeIssuerConfig.model_validate(
        {
            "type": "acme",
            "directory_url": f"{CA}/dir",
            "challenge": {"type": "http-01", "port": 5002},
        }
    )
    issuer = acme_issuer.AcmeIssuer("ca", config, state)
    cert = _cert_with(0x0087654321, bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4"))

    reason = issuer.renewal_due(cert)

    assert (reason is not None) is due
    if due:
        assert "renewal window (ARI) opened at 2020-01-01 00:00 UTC" in reason
    assert recording.requests[-1].url.path.startswith("/renewal-info/aYhba4dGQEHhs3uEe6CuLN4ByNQ")
