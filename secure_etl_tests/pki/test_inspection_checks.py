"""Each inspection check fails for its own reason on a crafted certificate."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from secure_etl.pki.inspect import (
    CHECKS,
    PemError,
    covers,
    inspect_chain,
    load_chain_file,
    load_pem_chain,
)
from secure_etl_tests.pki.certs import (
    CLIENT,
    NOW,
    SERVER,
    authority,
    leaf,
    new_key,
    pem,
    resign_with_sha1,
)

DAY = dt.timedelta(days=1)


def _results(chain, ca, **kwargs) -> dict:
    kwargs.setdefault("identifiers", ["svc.example.com"])
    kwargs.setdefault("use", "server")
    results = inspect_chain(chain, roots=[ca.cert], **kwargs)
    assert [r.name for r in results] == list(CHECKS)
    return {r.name: r for r in results}


def _only_failure(results: dict) -> str:
    failed = [name for name, r in results.items() if not r.passed]
    assert len(failed) == 1, {n: r.reason for n, r in results.items() if not r.passed}
    return failed[0]


def test_a_good_certificate_passes_every_check():
    ca = authority()
    results = _results([leaf(ca)], ca)
    assert all(r.passed and not r.skipped for r in results.values())


def test_expired():
    ca = authority()
    results = _results([leaf(ca, not_before=NOW - 90 * DAY, not_after=NOW - 2 * DAY)], ca)
    assert _only_failure(results) == "expiry_window"
    assert results["expiry_window"].severity == "ERROR"
    assert "expired 2.0 days ago" in results["expiry_window"].reason


def test_inside_the_renewal_window_is_a_warning():
    ca = authority()
    cert = leaf(ca, not_before=NOW - 80 * DAY, not_after=NOW + 10 * DAY)
    results = _results([cert], ca, fraction_left=1 / 3)
    assert _only_failure(results) == "expiry_window"
    assert results["expiry_window"].severity == "WARN"
    assert "renewal is due below 30.0 days" in results["expiry_window"].reason
    assert _results([cert], ca, fraction_left=0.1)["expiry_window"].passed
    assert not _results([cert], ca, min_days=14)["expiry_window"].passed


def test_not_yet_valid():
    ca = authority()
    results = _results([leaf(ca, not_before=NOW + 2 * DAY, not_after=NOW + 90 * DAY)], ca)
    assert _only_failure(results) == "validity_started"
    assert "not valid before" in results["validity_started"].reason


def test_wrong_san():
    ca = authority()
    results = _results([leaf(ca, ["other.example.com"])], ca)
    assert _only_failure(results) == "covers_identifiers"
    assert "not covered: svc.example.com" in results["covers_identifiers"].reason


def test_rsa_1024_is_too_weak():
    ca = authority()
    results = _results([leaf(ca, key=new_key("rsa1024"))], ca)
    assert _only_failure(results) == "key_strength"
    assert "RSA 1024 is too weak" in results["key_strength"].reason


def test_ec_p192_is_too_weak_and_p384_is_fine():
    ca = authority()
    assert _only_failure(_results([leaf(ca, key=new_key("ec192"))], ca)) == "key_strength"
    assert _results([leaf(ca, key=new_key("ec384"))], ca)["key_strength"].reason == "EC P-384"


@pytest.mark.parametrize(
    ("kind", "named"),
    [("dsa1024", "DSA 1024 is not allowed"), ("secp256k1", "EC secp256k1 is not allowed")],
)
def test_keys_outside_the_allow_list_fail_by_name(kind, named):
    ca = authority()
    results = _results([leaf(ca, key=new_key(kind))], ca)
    assert _only_failure(results) == "key_strength"
    assert named in results["key_strength"].reason


def test_p521_and_rsa_4096_are_allowed():
    ca = authority()
    assert _results([leaf(ca, key=new_key("ec521"))], ca)["key_strength"].reason == "EC P-521"
    assert _results([leaf(ca, key=new_key("rsa4096"))], ca)["key_strength"].passed


def test_ed25519_is_allowed_for_a_client_certificate_only():
    ca = authority()
    client = leaf(ca, key=new_key("ed25519"), eku=[CLIENT])
    assert _results([client], ca, use="client")["key_strength"].passed
    server = _results([leaf(ca, key=new_key("ed25519"))], ca, use="server")
    assert _only_failure(server) == "key_strength"
    assert "Ed25519 is allowed for client certificates only" in server["key_strength"].reason
    assert not {r.name: r for r in inspect_chain([client])}["key_strength"].passed


def test_sha1_signature():
    ca = authority("RSA Root", key_kind="rsa2048")
    cert = resign_with_sha1(leaf(ca), ca.key)
    # The crafted certificate really is signed with SHA-1 by the CA.
    ca.cert.public_key().verify(
        cert.signature,
        cert.tbs_certificate_bytes,
        padding.PKCS1v15(),
        hashes.SHA1(),  # noqa: S303
    )
    results = _results([cert], ca)
    assert not results["signature_algorithm"].passed
    assert "signed with SHA1" in results["signature_algorithm"].reason
    # The chain check says why it cannot vouch for it, instead of blaming the root.
    assert "cannot be verified" in results["chain_trusted"].reason


def test_untrusted_chain():
    ca, stranger = authority("Test Root"), authority("Stranger Root")
    results = inspect_chain(
        [leaf(stranger)],
        identifiers=["svc.example.com"],
        use="server",
        roots=[ca.cert],
        roots_source="bundle.pem",
    )
    failed = {r.name: r for r in results if not r.passed}
    assert set(failed) == {"chain_trusted"}
    assert "no trusted root in bundle.pem" in failed["chain_trusted"].reason


def test_a_root_impersonated_by_name_is_not_trusted():
    ca, impostor = authority("Test Root"), authority("Test Root")  # same name, other key
    results = _results([leaf(impostor)], ca)
    assert _only_failure(results) == "chain_trusted"
    assert "signature does not verify" in results["chain_trusted"].reason


def test_a_dns_name_spelling_an_ip_does_not_cover_that_ip():
    # RFC 2818 §3.1: an IP is matched by an iPAddress SAN only (TLS clients agree).
    ca = authority()
    cert = leaf(ca, ["svc.example.com"], dns_names_only=["10.0.0.1"])
    results = _results([cert], ca, identifiers=["10.0.0.1"])
    assert _only_failure(results) == "covers_identifiers"


def test_a_chain_through_an_intermediate_is_trusted_only_with_the_intermediate():
    root = authority("Root")
    intermediate = authority("Intermediate", parent=root)
    cert = leaf(intermediate)
    assert _results([cert, intermediate.cert], root)["chain_trusted"].passed
    assert not _results([cert], root)["chain_trusted"].passed


@pytest.mark.parametrize(
    ("eku", "use"), [([CLIENT], "server"), ([SERVER], "client"), (None, "server")]
)
def test_wrong_or_missing_eku(eku, use):
    ca = authority()
    results = _results([leaf(ca, eku=eku)], ca, use=use)
    assert _only_failure(results) == "eku_fits_use"
    reason = results["eku_fits_use"].reason
    assert ("needs clientAuth" if use == "client" else "needs serverAuth") in reason


def test_a_client_certificate_for_client_use_passes():
    ca = authority()
    assert _results([leaf(ca, eku=[CLIENT])], ca, use="client")["eku_fits_use"].passed


def test_checks_without_anything_to_judge_against_are_skipped():
    ca = authority()
    results = {r.name: r for r in inspect_chain([leaf(ca)])}
    assert results["covers_identifiers"].skipped
    assert results["eku_fits_use"].skipped
    assert results["chain_trusted"].skipped
    assert not results["key_strength"].skipped


@pytest.mark.parametrize(
    ("sans", "identifier", "expected"),
    [
        (["*.example.com"], "a.example.com", True),
        (["*.example.com"], "example.com", False),
        (["*.example.com"], "a.b.example.com", False),
        (["*.example.com"], "*.example.com", True),
        (["A.Example.COM"], "a.example.com", True),
        (["*.com"], "example.com", False),
        (["192.0.2.1"], "192.0.2.1", True),
        (["192.0.2.1"], "192.0.2.2", False),
        (["2001:db8::1"], "2001:db8:0::1", True),
        (["a.example.com"], "192.0.2.1", False),
    ],
)
def test_rfc_6125_matching(sans, identifier, expected):
    assert covers(sans, identifier) is expected


def test_ip_sans_are_checked():
    ca = authority()
    results = _results(
        [leaf(ca, ["svc.example.com", "192.0.2.7"])],
        ca,
        identifiers=["svc.example.com", "192.0.2.7", "192.0.2.8"],
    )
    assert _only_failure(results) == "covers_identifiers"
    assert "not covered: 192.0.2.8" in results["covers_identifiers"].reason


def test_broken_and_empty_pem_name_the_source(tmp_path):
    ca = authority()
    good = pem(leaf(ca))
    broken = tmp_path / "broken.pem"
    broken.write_bytes(good[:60] + b"!!!" + good[63:])
    with pytest.raises(PemError, match="broken.pem: broken PEM"):
        load_chain_file(broken)
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing here\n")
    with pytest.raises(PemError, match="empty.pem: no PEM certificate found"):
        load_chain_file(empty)
    with pytest.raises(PemError, match="missing.pem"):
        load_chain_file(tmp_path / "missing.pem")
    assert len(load_pem_chain(good + ca.pem, "two")) == 2


def test_a_malformed_extension_is_a_pem_error_at_load_time(tmp_path):
    ca = authority()
    der = leaf(ca, ["svc.example.com"]).public_bytes(serialization.Encoding.DER)
    # Corrupt the SAN's inner DNS name tag (0x82) to an invalid context tag (0x9f).
    broken = der.replace(b"\x82\x0fsvc.example.com", b"\x9f\x0fsvc.example.com", 1)
    assert broken != der
    path = tmp_path / "bad-ext.pem"
    path.write_bytes(
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.encodebytes(broken)
        + b"-----END CERTIFICATE-----\n"
    )
    with pytest.raises(PemError, match="bad-ext.pem: broken PEM certificate"):
        load_chain_file(path)


def test_a_stricter_policy_raises_the_floor_for_the_keys_we_accept():
    ca = authority()
    chain = [leaf(ca, key=new_key("ec256"))]

    result = _results(chain, ca, key_floor=(3072, 384))["key_strength"]

    assert not result.passed and "below the security policy's EC >= P-384" in result.reason
    assert _results(chain, ca)["key_strength"].passed  # the default floor: the allow-list's
