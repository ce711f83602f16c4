"""JSON Web Signatures for ACME (RFC 7515 / RFC 8555 §6.2): ES256, ES384, RS256; EAB HS256."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def _int_bytes(value: int, size: int | None = None) -> bytes:
    size = size or max(1, (value.bit_length() + 7) // 8)
    return value.to_bytes(size, "big")


class AccountKey:
    """A private key that signs ACME requests; knows its JWS algorithm and JWK."""

    def __init__(self, key: PrivateKey) -> None:
        self.key = key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            curves = {
                "secp256r1": ("ES256", "P-256", hashes.SHA256(), 32),
                "secp384r1": ("ES384", "P-384", hashes.SHA384(), 48),
            }
            if key.curve.name not in curves:
                raise ValueError(f"unsupported account key curve {key.curve.name}")
            self.alg, crv, self._hash, self._size = curves[key.curve.name]
            numbers = key.public_key().public_numbers()
            self.jwk = {
                "crv": crv,
                "kty": "EC",
                "x": b64url(_int_bytes(numbers.x, self._size)),
                "y": b64url(_int_bytes(numbers.y, self._size)),
            }
        elif isinstance(key, rsa.RSAPrivateKey):
            self.alg, self._hash = "RS256", hashes.SHA256()
            numbers = key.public_key().public_numbers()
            self.jwk = {
                "e": b64url(_int_bytes(numbers.e)),
                "kty": "RSA",
                "n": b64url(_int_bytes(numbers.n)),
            }
        else:
            raise ValueError(f"unsupported account key type {type(key).__name__}")

    @property
    def thumbprint(self) -> str:
        """RFC 7638 thumbprint (SHA-256, base64url) of the public JWK."""
        return b64url(hashlib.sha256(_json(self.jwk)).digest())

    def key_authorization(self, token: str) -> str:
        return f"{token}.{self.thumbprint}"

    def _sign_raw(self, data: bytes) -> bytes:
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(self.key.sign(data, ec.ECDSA(self._hash)))
            return _int_bytes(r, self._size) + _int_bytes(s, self._size)
        return self.key.sign(data, padding.PKCS1v15(), self._hash)

    def sign(
        self, url: str, payload: object | None, nonce: str | None, kid: str | None = None
    ) -> dict:
        """A flattened JWS. ``payload=None`` is POST-as-GET (an empty payload);
        ``kid=None`` embeds the JWK (newAccount, revocation with the certificate key)."""
        protected: dict = {"alg": self.alg, "url": url}
        if nonce is not None:
            protected["nonce"] = nonce
        if kid:
            protected["kid"] = kid
        else:
            protected["jwk"] = self.jwk
        protected_b64 = b64url(_json(protected))
        payload_b64 = "" if payload is None else b64url(_json(payload))
        signature = self._sign_raw(f"{protected_b64}.{payload_b64}".encode())
        return {"protected": protected_b64, "payload": payload_b64, "signature": b64url(signature)}


def external_account_binding(account: AccountKey, kid: str, hmac_key: str, url: str) -> dict:
    """The EAB JWS (RFC 8555 §7.3.4): the account JWK signed with the CA-given MAC key."""
    protected_b64 = b64url(_json({"alg": "HS256", "kid": kid, "url": url}))
    payload_b64 = b64url(_json(account.jwk))
    mac = hmac.new(
        b64url_decode(hmac_key), f"{protected_b64}.{payload_b64}".encode(), hashlib.sha256
    )
    return {"protected": protected_b64, "payload": payload_b64, "signature": b64url(mac.digest())}
