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
from secure_etl.acme.errors import (
    AcmeProblem,
    AuthorizationFailed,
    BadNonce,
    PollTimeout,
    ProtocolError,
    RateLimited,
)
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

    def __init__(self, answers, directory: dict | None = None):
        self.directory = DIRECTORY if directory is None else directory
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.nonce = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.nonce += 1
        headers = {"Replay-Nonce": f"n{self.nonce}"}
        if request.url.path == "/dir":
            return httpx.Response(200, json=self.directory, headers=headers)
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


ORDER = {
    "status": "pending",
    "identifiers": [{"type": "dns", "value": "a.example"}],
    "authorizations": [f"{CA}/authz/1"],
    "finalize": f"{CA}/fin",
}


@pytest.mark.parametrize("key", ["newNonce", "newAccount", "newOrder", "renewalInfo"])
def test_recorded_a_directory_with_an_http_url_is_refused(key):
    directory = dict(DIRECTORY, **{key: DIRECTORY[key].replace("https://", "http://")})
    client = _client(Recording([], directory))
    with pytest.raises(ProtocolError, match=f"the directory '{key}': 'http://ca.test/.*https://"):
        _ = client.directory


@pytest.mark.parametrize(
    ("answer", "where"),
    [
        ((201, ORDER, {"Location": "http://ca.test/o/1"}), "Location"),
        ((201, dict(ORDER, finalize="http://ca.test/fin"), {"Location": f"{CA}/o/1"}), "finalize"),
        (
            (201, dict(ORDER, authorizations=["http://ca.test/a"]), {"Location": f"{CA}/o/1"}),
            "authorization",
        ),
        (
            (201, dict(ORDER, certificate="http://ca.test/c"), {"Location": f"{CA}/o/1"}),
            "certificate",
        ),
    ],
)
def test_recorded_http_urls_in_an_order_answer_are_refused(answer, where):
    recording = Recording([answer])
    with pytest.raises(ProtocolError, match=f"{where}.*is not an https:// URL"):
        _client(recording).new_order(["a.example"])
    assert all(r.url.scheme == "https" for r in recording.requests)


def test_recorded_an_http_alternate_chain_link_is_refused():
    link = '<http://ca.test/cert/1/1>;rel="alternate"'
    recording = Recording([(200, b"-----BEGIN CERTIFICATE-----", {"Link": link})])
    with pytest.raises(ProtocolError, match="Link rel=alternate.*not an https:// URL"):
        _client(recording).download(f"{CA}/cert/1")


def test_an_http_directory_url_is_refused_before_any_request():
    with pytest.raises(ProtocolError, match="directory URL: 'http://ca.test/dir'"):
        Transport("http://ca.test/dir")


@pytest.mark.parametrize("retry_after", ["5", "HTTP-DATE"])
def test_recorded_finalize_processing_waits_for_its_retry_after(monkeypatch, retry_after):
    slept = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    if retry_after == "HTTP-DATE":
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=6)
        retry_after = later.strftime("%a, %d %b %Y %H:%M:%S GMT")
    processing = dict(ORDER, status="processing")
    recording = Recording(
        [
            (200, processing, {"Retry-After": retry_after}),  # the finalize answer
            (200, dict(ORDER, status="valid", certificate=f"{CA}/cert"), {}),
        ]
    )
    client = _client(recording)
    ready = client_module.Order.from_json(f"{CA}/o/1", dict(ORDER, status="ready"))

    done = client.finalize(ready, b"csr")

    assert done.status == "valid"
    assert slept[0] >= 4  # never sooner than Retry-After (an HTTP date loses a second)


def test_recorded_a_retry_after_beyond_the_deadline_gives_up_instead_of_polling_early(
    monkeypatch,
):
    slept = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    processing = dict(ORDER, status="processing")
    recording = Recording([(200, processing, {"Retry-After": "600"})])
    client = _client(recording)
    ready = client_module.Order.from_json(f"{CA}/o/1", dict(ORDER, status="ready"))

    with pytest.raises(PollTimeout, match=r"next poll \(600 s from now\) would come after"):
        client.finalize(ready, b"csr", timeout_s=30)
    assert slept == []


def test_recorded_a_profile_is_refused_by_a_ca_that_lists_none():
    recording = Recording([], dict(DIRECTORY, meta={}))
    with pytest.raises(ProtocolError, match=r"offers no profile 'shortlived' \(offers: none\)"):
        _client(recording).new_order(["a.example"], profile="shortlived")
    assert not [r for r in recording.requests if r.method == "POST"]


@pytest.mark.parametrize("meta", [["a list"], "text", {"profiles": ["classic"]}])
def test_recorded_a_directory_whose_meta_is_not_an_object_is_a_protocol_error(meta):
    client = _client(Recording([], dict(DIRECTORY, meta=meta)))
    with pytest.raises(ProtocolError, match="'meta' and its 'profiles' must be JSON objects"):
        _ = client.directory


def test_recorded_a_failed_wildcard_authorization_names_the_wildcard(monkeypatch):
    monkeypatch.setattr(client_module.time, "sleep", lambda _s: None)
    authz = {
        "status": "pending",
        "identifier": {"type": "dns", "value": "example.test"},
        "wildcard": True,
        "challenges": [{"type": "dns-01", "url": f"{CA}/chall/1", "token": "t"}],
    }
    failed = dict(authz, status="invalid")
    recording = Recording([(200, authz, {}), (200, {}, {}), (200, failed, {})])

    class Quiet:
        challenge_type = "dns-01"

        def present(self, *args):
            pass

        def cleanup(self, *args):
            pass

    order = client_module.Order.from_json(f"{CA}/o/1", ORDER)
    with pytest.raises(AuthorizationFailed) as caught:
        _client(recording).authorize(order, Quiet())
    assert caught.value.identifier == "*.example.test"
    assert str(caught.value).startswith("dns-01 validation of *.example.test failed")


def _issuer(tmp_path, monkeypatch, recording, logs=None):
    """An ACME issuer whose transport replays ``recording`` (its account already exists)."""
    from secure_etl.config import AcmeIssuer as AcmeIssuerConfig
    from secure_etl.pki import acme_issuer

    def replaying(url, **kwargs):
        return Transport(url, client=httpx.Client(transport=httpx.MockTransport(recording)))

    monkeypatch.setattr(acme_issuer, "Transport", replaying)
    state = tmp_path / "acme"
    state.mkdir(exist_ok=True)
    (state / "account.json").write_text(json.dumps({"url": f"{CA}/acct/1"}))
    config = AcmeIssuerConfig.model_validate(
        {"type": "acme", "directory_url": f"{CA}/dir", "challenge": {"type": "http-01"}}
    )
    return acme_issuer.AcmeIssuer(
        "ca", config, state, log=logs.append if logs is not None else None
    )


ARI_CERT = dict(serial=0x0087654321, aki=bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4"))


def _renewal_info_requests(recording) -> int:
    return sum("/renewal-info/" in r.url.path for r in recording.requests)


@pytest.mark.parametrize(
    "answer",
    [
        (200, b"<html>maintenance</html>", {}),
        (200, {"explanationURL": "https://ca.test/why"}, {}),
        (200, {"suggestedWindow": {"start": "soon", "end": "later"}}, {}),
        (200, {"suggestedWindow": ["2026-01-01T00:00:00Z"]}, {}),
        (
            200,
            {"suggestedWindow": {"start": "2026-12-03T00:00:00Z", "end": "2026-12-01T00:00:00Z"}},
            {},
        ),
        (500, {"type": "urn:ietf:params:acme:error:serverInternal", "detail": "oops"}, {}),
        (404, b"not found", {}),
    ],
    ids=["not-json", "no-window", "bad-times", "window-not-an-object", "ends-first", "500", "404"],
)
def test_recorded_a_bad_ari_answer_falls_back_to_our_own_schedule(tmp_path, monkeypatch, answer):
    logs: list[str] = []
    recording = Recording([answer])
    issuer = _issuer(tmp_path, monkeypatch, recording, logs)

    assert issuer.renewal_due(_cert_with(**ARI_CERT)) is None

    assert _renewal_info_requests(recording) == 1
    assert any("following our own renewal schedule" in line for line in logs), logs


def test_recorded_ari_retry_after_is_honoured_across_runs(tmp_path, monkeypatch):
    now = dt.datetime.now(dt.UTC)
    start = now + dt.timedelta(hours=1)
    window = {
        "suggestedWindow": {
            "start": start.isoformat(),
            "end": (start + dt.timedelta(seconds=1)).isoformat(),
        }
    }
    recording = Recording([(200, window, {"Retry-After": "21600"})])
    issuer = _issuer(tmp_path, monkeypatch, recording)
    cert = _cert_with(**ARI_CERT)

    assert issuer.renewal_due(cert, now=now) is None  # the window has not opened
    # Later runs inside the CA's Retry-After do not ask again, but use the window it gave.
    assert issuer.renewal_due(cert, now=now + dt.timedelta(minutes=10)) is None
    due = issuer.renewal_due(cert, now=now + dt.timedelta(hours=2))
    assert due and "renewal window (ARI) opened" in due
    assert _renewal_info_requests(recording) == 1

    # After the Retry-After, the CA is asked again.
    recording.answers.append((200, window, {"Retry-After": "21600"}))
    issuer.renewal_due(cert, now=now + dt.timedelta(hours=7))
    assert _renewal_info_requests(recording) == 2


def test_recorded_ari_errors_are_not_asked_again_before_their_retry_after(tmp_path, monkeypatch):
    problem = {"type": "urn:ietf:params:acme:error:serverInternal", "detail": "busy"}
    recording = Recording([(503, problem, {"Retry-After": "7200"})])
    issuer = _issuer(tmp_path, monkeypatch, recording)
    cert = _cert_with(**ARI_CERT)
    now = dt.datetime.now(dt.UTC)

    assert issuer.renewal_due(cert, now=now) is None
    assert issuer.renewal_due(cert, now=now + dt.timedelta(hours=1)) is None
    assert _renewal_info_requests(recording) == 1


def test_replaces_is_sent_only_for_a_certificate_issued_here_and_not_yet_replaced(
    tmp_path, monkeypatch
):
    issuer = _issuer(tmp_path, monkeypatch, Recording([]))
    previous = _cert_with(**ARI_CERT)
    renewed = _cert_with(0x1234, ARI_CERT["aki"])

    # From another issuer (say the internal CA before a switch to ACME): not sent.
    assert issuer.replaces_id(previous, offers_ari=True) is None
    issuer._remember_issued(previous, None)
    assert issuer.replaces_id(previous, offers_ari=True) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    assert issuer.replaces_id(previous, offers_ari=False) is None
    # Once renewed, a rollback to it must not name it again (the CA says alreadyReplaced).
    issuer._remember_issued(renewed, previous)
    assert issuer.replaces_id(previous, offers_ari=True) is None
    assert issuer.replaces_id(renewed, offers_ari=True) == ari_cert_id(renewed)


@pytest.mark.parametrize(
    ("status", "kind", "detail"),
    [
        (409, "alreadyReplaced", "certificate already replaced"),
        (400, "malformed", "parsing ARI CertID failed"),
        (409, "conflict", "duplicate replacement"),
    ],
)
def test_recorded_a_ca_refusing_replaces_gets_the_order_once_more_without_it(status, kind, detail):
    problem = {"type": f"urn:ietf:params:acme:error:{kind}", "detail": detail}
    recording = Recording(
        [(status, problem, {"Content-Type": PROBLEM}), (201, ORDER, {"Location": f"{CA}/o/1"})]
    )
    logs: list[str] = []
    client = _client(recording)
    client.log = logs.append

    order = client.new_order(["a.example"], replaces="aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")

    assert order.url == f"{CA}/o/1"
    first, second = recording.payloads()
    assert first["replaces"] == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE" and "replaces" not in second
    assert any("refused replaces=" in line and detail in line for line in logs)


def test_recorded_replaces_is_dropped_once_only_and_other_refusals_are_not_retried():
    malformed = {"type": "urn:ietf:params:acme:error:malformed", "detail": "bad identifier"}
    recording = Recording([(400, malformed, {})] * 2)
    with pytest.raises(AcmeProblem, match="bad identifier"):
        _client(recording).new_order(["a.example"], replaces="x.y")
    assert len(recording.payloads()) == 2

    rejected = {"type": "urn:ietf:params:acme:error:rejectedIdentifier", "detail": "policy"}
    recording = Recording([(400, rejected, {})])
    with pytest.raises(AcmeProblem, match="policy"):
        _client(recording).new_order(["a.example"], replaces="x.y")
    assert len(recording.payloads()) == 1
