"""The ACME issuer behind ensure_certificate, against a real Pebble."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from secure_etl.acme.errors import AuthorizationFailed
from secure_etl.pki.acme_issuer import AcmeIssuer
from secure_etl.pki.keys import generate_private_key
from secure_etl.pki.renewal import (
    build_issuer,
    certificate_store,
    current_leaf,
    ensure_certificate,
    inspect_current,
)

pytestmark = pytest.mark.integration


def test_issue_through_acme_then_every_check_passes(acme_platform):
    result = ensure_certificate(acme_platform, "web")

    assert result.outcome == "issued"
    assert result.order_url and "/my-order/" in result.order_url
    failing = [r for r in inspect_current(acme_platform, "web") if not r.passed]
    assert failing == []
    account = acme_platform.resolved_state_dir() / "acme" / "pebble" / "account.key"
    assert account.stat().st_mode & 0o777 == 0o600


def test_a_failed_validation_leaves_the_previous_certificate_current(acme_platform):
    ensure_certificate(acme_platform, "web")
    before = current_leaf(acme_platform, "web").serial_number
    issuer = build_issuer(acme_platform, "pebble")
    # Point the http-01 listener elsewhere: Pebble's validator finds nobody.
    config = issuer.config.model_copy(
        update={"challenge": dataclasses.replace(issuer.config.challenge, port=1)}
    )
    broken = AcmeIssuer("pebble", config, issuer.directory)

    with pytest.raises(AuthorizationFailed, match="web.example.com|127.0.0.1"):
        broken.issue(["web.example.com", "127.0.0.1"], "server", generate_private_key("ec256"))

    assert current_leaf(acme_platform, "web").serial_number == before
    assert len(certificate_store(acme_platform).versions("web")) == 1


def test_an_interrupted_issuance_resumes_the_same_order(acme_platform, monkeypatch):
    issuer = build_issuer(acme_platform, "pebble")
    from secure_etl.acme import client as client_module

    original = client_module.AcmeClient.authorize

    def killed(self, order, solver, timeout_s=120.0):
        raise KeyboardInterrupt("killed after the order was created")

    monkeypatch.setattr(client_module.AcmeClient, "authorize", killed)
    with pytest.raises(KeyboardInterrupt):
        issuer.issue(["web.example.com"], "server", generate_private_key("ec256"))
    first_order = issuer.last_order_url
    saved = list((issuer.directory / "orders").glob("*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["order_url"] == first_order

    monkeypatch.setattr(client_module.AcmeClient, "authorize", original)
    issued = issuer.issue(["web.example.com"], "server", generate_private_key("ec256"))

    assert issuer.last_order_url == first_order
    assert issued.order_url == first_order  # what renewal reports
    assert b"BEGIN CERTIFICATE" in issued.cert_pem
    assert not list((issuer.directory / "orders").iterdir())


@pytest.mark.own_pebble
def test_a_restarted_ca_that_forgot_the_account_is_recovered_from(acme_platform, acme_ca):
    ensure_certificate(acme_platform, "web")
    account_file = acme_platform.resolved_state_dir() / "acme" / "pebble" / "account.json"
    old_account = json.loads(account_file.read_text())["url"]

    acme_ca.restart()
    # A restarted Pebble issues under a new root: trust it, or verification refuses.
    roots = acme_platform.issuers["pebble"].trust_bundle
    Path(roots).write_bytes(acme_ca.issuing_roots())
    result = ensure_certificate(acme_platform, "web", force=True)

    assert result.outcome == "renewed"
    assert json.loads(account_file.read_text())["url"] != old_account
