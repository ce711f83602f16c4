"""Crafting certificates for tests: any validity, SANs, key, hash and EKU, on demand."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.UTC)
SERVER = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def new_key(kind: str = "ec256"):
    if kind == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ec192":
        return ec.generate_private_key(ec.SECP192R1())
    if kind == "ec521":
        return ec.generate_private_key(ec.SECP521R1())
    if kind == "secp256k1":
        return ec.generate_private_key(ec.SECP256K1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind.startswith("dsa"):
        return dsa.generate_private_key(key_size=int(kind[3:]))
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    raise ValueError(kind)


@dataclass
class Authority:
    cert: x509.Certificate
    key: object

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def authority(
    cn: str = "Test Root", parent: Authority | None = None, key_kind: str = "ec256"
) -> Authority:
    key = new_key(key_kind)
    signer = parent.key if parent else key
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(parent.cert.subject if parent else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )
    return Authority(cert, key)


def leaf(
    ca: Authority,
    sans: list[str] = ("svc.example.com",),
    *,
    key=None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    eku: list | None = (SERVER,),
    dns_names_only: list[str] = (),
) -> x509.Certificate:
    """``dns_names_only``: extra SANs put in as DNS names even when they spell an IP."""
    key = key or new_key("ec256")
    names = [x509.DNSName(n) for n in dns_names_only]
    for san in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(sans[0] if sans else "no-san"))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - dt.timedelta(days=1))
        .not_valid_after(not_after or NOW + dt.timedelta(days=89))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


_SHA256_RSA = bytes.fromhex("06092a864886f70d01010b")  # OID 1.2.840.113549.1.1.11
_SHA1_RSA = bytes.fromhex("06092a864886f70d010105")  # OID 1.2.840.113549.1.1.5


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = (
        bytes([n])
        if n < 0x80
        else bytes([0x80 | ((n.bit_length() + 7) // 8)])
        + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + length + content


def resign_with_sha1(cert: x509.Certificate, ca_key: rsa.RSAPrivateKey) -> x509.Certificate:
    """The same certificate signed with SHA-1 by an RSA CA.

    cryptography no longer builds SHA-1 certificates, but real ones still turn up: swap the
    algorithm OID in the to-be-signed part (same length for RSA), sign it with SHA-1 and
    assemble the DER ourselves.
    """
    tbs = cert.tbs_certificate_bytes
    assert tbs.count(_SHA256_RSA) == 1, "expected one sha256WithRSAEncryption in the TBS"
    tbs = tbs.replace(_SHA256_RSA, _SHA1_RSA)
    signature = ca_key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 (crafting a weak certificate on purpose)
    algorithm = _der(0x30, _SHA1_RSA + b"\x05\x00")
    der = _der(0x30, tbs + algorithm + _der(0x03, b"\x00" + signature))
    return x509.load_der_x509_certificate(der)


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
