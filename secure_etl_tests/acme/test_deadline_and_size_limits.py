"""One deadline per issuance and a cap on response sizes, against a real local HTTPS
server that feeds its answer one byte a second or sends far too much."""

from __future__ import annotations

import time

import pytest

from secure_etl.acme.client import AcmeClient
from secure_etl.acme.errors import PollTimeout, ProtocolError
from secure_etl.acme.jws import AccountKey
from secure_etl.acme.transport import MAX_JSON_BYTES, Transport
from secure_etl.pki.keys import generate_private_key
from secure_etl_tests.acme.hostile_servers import SlowServer


@pytest.fixture
def slow(tmp_path):
    server = SlowServer(tmp_path / "slow")
    yield server
    server.stop()


def _client(slow, path: str) -> AcmeClient:
    transport = Transport(f"{slow.base_url}{path}", verify=str(slow.ca_bundle))
    return AcmeClient(transport, AccountKey(generate_private_key("ec256")), "https://x/acct/1")


def test_a_directory_fed_one_byte_a_second_hits_the_issuance_deadline(slow):
    client = _client(slow, "/drip")
    started = time.monotonic()

    with pytest.raises(PollTimeout, match="deadline for this issuance has passed"):
        client.issue(["a.example"], generate_private_key("ec256"), solver=None, timeout_s=2)

    assert time.monotonic() - started < 10  # not the 600 s the server would take
    assert slow.requests == 1


def test_headers_fed_one_byte_a_second_hit_the_issuance_deadline(slow):
    # Each byte arrives well within the 30 s read timeout: without a deadline on the
    # socket itself this request would last the 400 s the server takes.
    client = _client(slow, "/drip-headers")
    started = time.monotonic()

    with pytest.raises(PollTimeout, match="deadline for this issuance has passed"):
        client.issue(["a.example"], generate_private_key("ec256"), solver=None, timeout_s=2)

    assert time.monotonic() - started < 10
    assert slow.requests == 1


@pytest.mark.parametrize("path", ["/huge", "/huge-chunked"])
def test_a_response_larger_than_the_cap_is_refused_without_reading_it_all(slow, path):
    transport = Transport(f"{slow.base_url}{path}", verify=str(slow.ca_bundle))
    with pytest.raises(ProtocolError, match=f"larger than {MAX_JSON_BYTES} bytes; refused"):
        _ = transport.directory


def test_the_issuers_timeout_s_bounds_the_whole_issuance(slow, tmp_path):
    from secure_etl.config import AcmeIssuer as AcmeIssuerConfig
    from secure_etl.pki.acme_issuer import AcmeIssuer

    config = AcmeIssuerConfig.model_validate(
        {
            "type": "acme",
            "directory_url": f"{slow.base_url}/drip",
            "server_ca_bundle": str(slow.ca_bundle),
            "challenge": {"type": "http-01", "port": 5002},
            "timeout_s": 2,
        }
    )
    issuer = AcmeIssuer("slow", config, tmp_path / "state")
    started = time.monotonic()

    with pytest.raises(PollTimeout, match="deadline for this issuance has passed"):
        issuer.issue(["a.example"], "server", generate_private_key("ec256"))

    assert time.monotonic() - started < 10
