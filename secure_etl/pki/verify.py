"""Verify what an issuer returned before anything is installed or written (decision 12).

The CA, or anyone on the path to it, controls the certificate; we control the key and
the names we asked for. ``verify_issued`` checks that they agree, that the chain links
leaf to issuer, and that the result passes the same inspection the checks run.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from secure_etl.errors import UserError
from secure_etl.identifiers import is_ip_address
from secure_etl.pki.inspect import PemError, inspect_chain, load_pem_chain
from secure_etl.pki.issuer import IssuedCertificate, Use
from secure_etl.pki.keys import load_private_key

# A CA whose clock runs a little ahead may date a fresh certificate a moment in the future.
CLOCK_SKEW = dt.timedelta(minutes=5)


class VerificationError(UserError):
    """An issued certificate fails a property; ``property`` names it. Nothing was installed."""

    def __init__(self, issuer: str, property: str, detail: str) -> None:
        self.issuer, self.property, self.detail = issuer, property, detail
        super().__init__(
            f"issuer {issuer!r} returned a certificate that fails verification "
            f"({property}): {detail}; nothing was installed"
        )


def verify_issued(
    issued: IssuedCertificate,
    *,
    identifiers: Sequence[str],
    use: Use,
    roots: Sequence[x509.Certificate] | None = None,
    roots_source: str = "",
    issuer: str = "",
    now: dt.datetime | None = None,
) -> list[x509.Certificate]:
    """The chain (leaf first) if it is fit to install next to ``issued.key_pem``; else
    raise VerificationError naming the first property that fails."""

    def fail(prop: str, detail: str) -> VerificationError:
        return VerificationError(issuer, prop, detail)

    try:
        chain = load_pem_chain(issued.fullchain_pem, "the issued certificate")
    except PemError as err:
        raise fail("parses", str(err)) from None
    leaf = chain[0]
    if _spki(leaf.public_key()) != _spki(load_private_key(issued.key_pem).public_key()):
        raise fail("public_key", "the leaf's public key is not the key we sent in the CSR")
    extra, missing = _name_differences(leaf, identifiers)
    if extra or missing:
        raise fail(
            "identifiers",
            f"the SANs are not the requested identifiers (missing: {', '.join(missing) or '-'};"
            f" not requested: {', '.join(extra) or '-'})",
        )
    for cert, parent in zip(chain, chain[1:], strict=False):
        if not _signed_by(cert, parent):
            raise fail(
                "chain",
                f"{cert.subject.rfc4514_string()} is not signed by the next certificate "
                f"in the chain ({parent.subject.rfc4514_string()})",
            )
    now = now or dt.datetime.now(dt.UTC)
    results = inspect_chain(
        chain, identifiers=identifiers, use=use, roots=roots, roots_source=roots_source, now=now
    )
    for result in results:
        if result.passed:
            continue
        if result.name == "validity_started" and leaf.not_valid_before_utc <= now + CLOCK_SKEW:
            continue
        raise fail(result.name, _explain(result.name, result.reason, use))
    return chain


def _explain(check: str, reason: str, use: Use) -> str:
    if check == "eku_fits_use" and use == "client":
        return (
            f"{reason}: this CA does not issue clientAuth certificates; configure a private "
            "CA for this client certificate (an internal_ca issuer, or a private ACME CA such "
            "as OpenBao/Vault PKI or step-ca with a role allowing clientAuth)"
        )
    return reason


def _spki(key) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _name_differences(
    leaf: x509.Certificate, identifiers: Sequence[str]
) -> tuple[list[str], list[str]]:
    """SANs nobody asked for, and requested identifiers with no SAN (order-insensitive)."""
    wanted = {_normal(i) for i in identifiers}
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = []
    have = set()
    for name in sans:
        if isinstance(name, x509.DNSName):
            have.add(_normal(name.value))
        elif isinstance(name, x509.IPAddress):
            have.add(str(name.value))
        else:
            have.add(f"{type(name).__name__}:{name.value}")
    return sorted(have - wanted), sorted(wanted - have)


def _normal(identifier: str) -> str:
    if is_ip_address(identifier):
        return str(ipaddress.ip_address(identifier))
    return identifier.lower().rstrip(".")


def _signed_by(cert: x509.Certificate, parent: x509.Certificate) -> bool:
    if cert.issuer != parent.subject:
        return False
    try:
        cert.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
