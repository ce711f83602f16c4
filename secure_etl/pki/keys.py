"""Private keys: generation, serialisation and a short description of strength."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = (
    ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

_CURVES = {"ec256": ec.SECP256R1, "ec384": ec.SECP384R1}
_RSA_BITS = {"rsa2048": 2048, "rsa3072": 3072, "rsa4096": 4096}
KEY_TYPES = tuple(_CURVES) + tuple(_RSA_BITS)


def generate_private_key(key_type: str) -> PrivateKey:
    """A new key of type ec256, ec384, rsa2048, rsa3072 or rsa4096."""
    if key_type in _CURVES:
        return ec.generate_private_key(_CURVES[key_type]())
    if key_type in _RSA_BITS:
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[key_type])
    raise ValueError(f"unknown key type {key_type!r} (expected one of {', '.join(KEY_TYPES)})")


def key_type_of(key: PrivateKey) -> str | None:
    """The key type name (ec256, rsa2048...) of a key, or None if it is none of ours."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return next((t for t, c in _CURVES.items() if key.curve.name == c.name), None)
    if isinstance(key, rsa.RSAPrivateKey):
        return next((t for t, bits in _RSA_BITS.items() if key.key_size == bits), None)
    return None


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(data: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    return key


def describe_key(key: PublicKey) -> str:
    """'EC P-256', 'RSA 2048', 'Ed25519'..."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"EC {names.get(key.curve.name, key.curve.name)}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA {key.key_size}"
    return type(key).__name__
