"""Verify before install: a CA that lies gets nothing installed, and says which property
failed. The lying CA is a real Pebble behind a real HTTPS proxy that forges downloads."""

from __future__ import annotations

import json

import pytest

from secure_etl.config import load_config
from secure_etl.pki.internal_ca import InternalCA
from secure_etl.pki.renewal import (
    certificate_store,
    current_leaf,
    ensure_certificate,
    verification_failure,
)
from secure_etl.pki.verify import VerificationError
from secure_etl_tests.acme.hostile_servers import LyingProxy, forged_leaf


@pytest.fixture
def lying_ca(acme_ca, tmp_path):
    proxy = LyingProxy(acme_ca, tmp_path / "proxy")
    yield proxy
    proxy.stop()


@pytest.fixture
def lying_platform(acme_platform, lying_ca, write_config):
    """The ACME platform, but talking to Pebble through the lying proxy."""
    data = json.loads(json.dumps(acme_platform.model_dump(exclude_none=True)))
    data["issuers"]["pebble"]["directory_url"] = lying_ca.directory_url
    data["issuers"]["pebble"]["server_ca_bundle"] = str(lying_ca.ca_bundle)
    return load_config(write_config(data, "lying.yaml"))


@pytest.mark.parametrize(
    ("forge", "prop"),
    [
        (lambda pem: forged_leaf(pem, new_key=True), "public_key"),
        (lambda pem: forged_leaf(pem, names=["web.example.com", "evil.example"]), "identifiers"),
        (lambda pem: forged_leaf(pem, names=["web.example.com"]), "identifiers"),
        (lambda pem: forged_leaf(pem), "chain"),  # right key and names, wrong signature
    ],
    ids=["another-key", "an-extra-name", "a-missing-ip", "not-signed-by-the-intermediate"],
)
def test_a_forged_download_is_refused_and_the_previous_certificate_stays_current(
    lying_platform, lying_ca, forge, prop
):
    first = ensure_certificate(lying_platform, "web")
    assert first.outcome == "issued" and lying_ca.forged == 0
    store = certificate_store(lying_platform)
    before = (store.current_version("web"), current_leaf(lying_platform, "web").serial_number)

    lying_ca.forge = forge
    with pytest.raises(VerificationError) as caught:
        ensure_certificate(lying_platform, "web", force=True)

    assert lying_ca.forged == 1
    assert caught.value.property == prop
    assert f"({prop})" in str(caught.value) and "nothing was installed" in str(caught.value)
    after = (store.current_version("web"), current_leaf(lying_platform, "web").serial_number)
    assert after == before
    assert store.versions("web") == [before[0]]
    # Asking again with the same settings would fail the same way: it is remembered.
    assert f"({prop})" in verification_failure(lying_platform, "web")

    # An honest answer again: installed, and the failure is forgotten.
    lying_ca.forge = None
    assert ensure_certificate(lying_platform, "web", force=True).outcome == "renewed"
    assert verification_failure(lying_platform, "web") is None


def test_the_internal_ca_is_verified_too(platform, monkeypatch):
    ensure_certificate(platform, "db-server")
    version = certificate_store(platform).current_version("db-server")
    honest = InternalCA.issue

    def for_other_names(self, identifiers, use, key, **kwargs):
        return honest(self, ["other.test"], use, key, **kwargs)

    monkeypatch.setattr(InternalCA, "issue", for_other_names)
    with pytest.raises(VerificationError, match=r"\(identifiers\).*missing: 127.0.0.1, localhost"):
        ensure_certificate(platform, "db-server", force=True)
    assert certificate_store(platform).current_version("db-server") == version


def test_emulated_server_auth_only_ca_fails_a_client_certificate_once_clearly(
    lying_platform, lying_ca, write_config, tmp_path
):
    # Pebble 2.4 still gives clientAuth; public CAs no longer do. The proxy re-issues
    # Pebble's answer as such a CA would: serverAuth only, under a root we trust here.
    server_only = InternalCA("server-only", tmp_path / "server-only")
    lying_ca.forge = lambda pem: forged_leaf(
        pem, server_auth_only=True, issuer=server_only.ensure_root()
    )
    data = json.loads(json.dumps(lying_platform.model_dump(exclude_none=True)))
    data["issuers"]["pebble"]["trust_bundle"] = str(server_only.root_path)
    data["certificates"]["mtls"] = {
        "issuer": "pebble",
        "use": "client",
        "identifiers": ["client.example.com"],
    }
    platform = load_config(write_config(data, "client.yaml"))

    with pytest.raises(VerificationError) as caught:
        ensure_certificate(platform, "mtls")

    assert caught.value.property == "eku_fits_use"
    assert "needs clientAuth; has serverAuth" in str(caught.value)
    assert "this CA does not issue clientAuth certificates; configure a private CA" in str(
        caught.value
    )
    assert not certificate_store(platform).has_current("mtls")
    assert "clientAuth" in verification_failure(platform, "mtls")
    # Another issuer for it is another setting: no longer blocked, and it issues.
    data["certificates"]["mtls"]["issuer"] = "test-ca"
    fixed = load_config(write_config(data, "fixed.yaml"))
    assert verification_failure(fixed, "mtls") is None
    assert ensure_certificate(fixed, "mtls").outcome == "issued"
