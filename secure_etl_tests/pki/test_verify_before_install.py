"""Verify before install: a CA that lies gets nothing installed, and says which property
failed. The lying CA is a real Pebble behind a real HTTPS proxy that forges downloads."""

from __future__ import annotations

import pytest

from secure_etl.pki.internal_ca import InternalCA
from secure_etl.pki.renewal import (
    certificate_store,
    current_leaf,
    ensure_certificate,
    verification_failure,
)
from secure_etl.pki.verify import VerificationError
from secure_etl_tests.acme.hostile_servers import (
    LyingProxy,
    forged_leaf,
    server_auth_only_ca,
    through,
)


@pytest.fixture
def lying_ca(acme_ca, tmp_path):
    proxy = LyingProxy(acme_ca, tmp_path / "proxy")
    yield proxy
    proxy.stop()


@pytest.fixture
def lying_platform(acme_platform, lying_ca, write_config):
    """The ACME platform, but talking to Pebble through the lying proxy."""
    return through(lying_ca, acme_platform, write_config)


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
@pytest.mark.integration
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


@pytest.mark.integration
def test_emulated_server_auth_only_ca_fails_a_client_certificate_once_clearly(
    acme_platform, lying_ca, write_config, tmp_path
):
    root = server_auth_only_ca(lying_ca, tmp_path / "server-only")

    def add_client(data):
        data["issuers"]["pebble"]["trust_bundle"] = str(root)
        data["certificates"]["mtls"] = {
            "issuer": "pebble",
            "use": "client",
            "identifiers": ["client.example.com"],
        }

    platform = through(lying_ca, acme_platform, write_config, add_client)

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
    fixed = through(
        lying_ca,
        acme_platform,
        write_config,
        lambda data: (add_client(data), data["certificates"]["mtls"].update(issuer="test-ca")),
    )
    assert verification_failure(fixed, "mtls") is None
    assert ensure_certificate(fixed, "mtls").outcome == "issued"
