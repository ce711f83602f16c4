"""JWS signing: verifiable signatures, RFC 7638 thumbprints, EAB MACs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from secure_etl.acme.jws import AccountKey, b64url, b64url_decode, external_account_binding
from secure_etl.pki.keys import generate_private_key


def _decode(part: str) -> dict:
    return json.loads(b64url_decode(part))


@pytest.mark.parametrize(
    ("key_type", "alg", "size"), [("ec256", "ES256", 32), ("ec384", "ES384", 48)]
)
def test_ec_signatures_verify_with_the_public_key(key_type, alg, size):
    key = generate_private_key(key_type)
    jws = AccountKey(key).sign("https://ca/new-order", {"a": 1}, "nonce-1", kid="https://ca/acct/1")

    protected = _decode(jws["protected"])
    assert protected == {
        "alg": alg,
        "kid": "https://ca/acct/1",
        "nonce": "nonce-1",
        "url": "https://ca/new-order",
    }
    raw = b64url_decode(jws["signature"])
    assert len(raw) == 2 * size
    der = encode_dss_signature(int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big"))
    digest = hashes.SHA256() if alg == "ES256" else hashes.SHA384()
    key.public_key().verify(der, f"{jws['protected']}.{jws['payload']}".encode(), ec.ECDSA(digest))


def test_rs256_signature_verifies_and_new_account_embeds_the_jwk():
    key = generate_private_key("rsa2048")
    jws = AccountKey(key).sign("https://ca/new-acct", {"termsOfServiceAgreed": True}, "n")
    protected = _decode(jws["protected"])
    assert protected["alg"] == "RS256" and protected["jwk"]["kty"] == "RSA"
    assert "kid" not in protected
    key.public_key().verify(
        b64url_decode(jws["signature"]),
        f"{jws['protected']}.{jws['payload']}".encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


def test_post_as_get_has_an_empty_payload():
    jws = AccountKey(generate_private_key("ec256")).sign("https://ca/order/1", None, "n", kid="k")
    assert jws["payload"] == ""


def test_thumbprint_matches_rfc_7638_example():
    # The RSA key of RFC 7638 §3.1; its thumbprint is given there.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_"
        "BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_"
        "FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
        "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    e = "AQAB"
    public = rsa.RSAPublicNumbers(
        int.from_bytes(b64url_decode(e), "big"), int.from_bytes(b64url_decode(n), "big")
    )
    key = AccountKey.__new__(AccountKey)
    key.jwk = {"e": e, "kty": "RSA", "n": n}
    assert public.n.bit_length() == 2048
    assert key.thumbprint == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_key_authorization_is_token_dot_thumbprint():
    key = AccountKey(generate_private_key("ec256"))
    assert key.key_authorization("tok") == f"tok.{key.thumbprint}"


def test_external_account_binding_is_an_hs256_mac_over_the_account_jwk():
    account = AccountKey(generate_private_key("ec256"))
    mac_key = b64url(b"0123456789abcdef0123456789abcdef")
    eab = external_account_binding(account, "kid-1", mac_key, "https://ca/new-acct")

    assert _decode(eab["protected"]) == {
        "alg": "HS256",
        "kid": "kid-1",
        "url": "https://ca/new-acct",
    }
    assert _decode(eab["payload"]) == account.jwk
    expected = hmac.new(
        b"0123456789abcdef0123456789abcdef",
        f"{eab['protected']}.{eab['payload']}".encode(),
        hashlib.sha256,
    ).digest()
    assert (
        base64.urlsafe_b64decode(eab["signature"] + "=" * (-len(eab["signature"]) % 4)) == expected
    )
