"""Certificate inspection: the one place that parses PEM chains and judges certificates.

``inspect_chain`` answers every question the platform asks of a certificate (expiry,
validity start, identifiers, key strength, signature algorithm, chain, EKU) as a list of
``CheckResult`` in a fixed order; the CLI prints them and the Dagster checks report them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import ssl
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID

from secure_etl.errors import UserError
from secure_etl.identifiers import is_ip_address
from secure_etl.pki.keys import describe_key

Severity = Literal["ERROR", "WARN"]
WEAK_HASHES = (hashes.MD5, hashes.SHA1)
EKU_OID = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
MAX_CHAIN_DEPTH = 8
ALLOWED_CURVES = ("secp256r1", "secp384r1", "secp521r1")

# name -> what passing means; the order in which checks are reported.
CHECKS: dict[str, str] = {
    "expiry_window": "more time is left than the renewal window",
    "validity_started": "the certificate's notBefore has passed",
    "covers_identifiers": "the SANs cover every configured identifier (RFC 6125 wildcards)",
    "key_strength": "RSA of at least 2048 bits, EC on P-256, P-384 or P-521, or Ed25519 for a "
    "client certificate; nothing else",
    "signature_algorithm": "no certificate in the chain is signed with MD5 or SHA-1",
    "chain_trusted": "the chain leads to a configured root",
    "eku_fits_use": "the extended key usage fits the certificate's use",
}


class PemError(UserError):
    """A file or blob that holds no readable PEM certificate; the message names it."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    severity: Severity
    reason: str
    skipped: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CertificateFacts:
    subject: str
    issuer: str
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    days_remaining: float
    lifetime_days: float
    sans: tuple[str, ...]
    key_type: str
    signature_hash: str | None
    extended_key_usage: tuple[str, ...]
    fingerprint_sha256: str

    def as_dict(self) -> dict:
        out = asdict(self)
        out["not_before"] = self.not_before.isoformat()
        out["not_after"] = self.not_after.isoformat()
        out["sans"] = list(self.sans)
        out["extended_key_usage"] = list(self.extended_key_usage)
        return out


def load_pem_chain(data: bytes, source: str) -> list[x509.Certificate]:
    """Every certificate in a PEM blob, leaf first; ``source`` names it in errors.

    cryptography parses most fields only when they are read, so a malformed key, algorithm,
    version or date would otherwise fail mid-check; every field is read here instead."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise PemError(f"{source}: no PEM certificate found: {what_it_holds(data)}")
    try:
        chain = x509.load_pem_x509_certificates(data)
        for cert in chain:
            _read_every_field(cert)
    except BROKEN_CERTIFICATE as err:
        raise PemError(f"{source}: broken PEM certificate ({_one_line(err)})") from None
    return chain


BROKEN_CERTIFICATE = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion)


def _read_every_field(cert: x509.Certificate) -> None:
    """Read what the checks and facts read, so that parsing errors surface at load time."""
    _ = cert.version, cert.serial_number, cert.signature_algorithm_oid
    _ = cert.not_valid_before_utc, cert.not_valid_after_utc
    _ = cert.subject.rfc4514_string(), cert.issuer.rfc4514_string()
    _ = cert.signature_hash_algorithm, cert.public_key()
    for extension in cert.extensions:
        _ = extension.value


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 160 else text[:157] + "..."


def load_chain_file(path: Path | str) -> list[x509.Certificate]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PemError(f"{path}: {err.strerror or err}") from None
    return load_pem_chain(data, str(path))


_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,40})-----")
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
_PEM_KINDS = {
    "PRIVATE KEY": "a private key",
    "RSA PRIVATE KEY": "an RSA private key",
    "EC PRIVATE KEY": "an EC private key",
    "ENCRYPTED PRIVATE KEY": "an encrypted private key",
    "OPENSSH PRIVATE KEY": "an OpenSSH private key",
    "PUBLIC KEY": "a public key",
    "RSA PUBLIC KEY": "an RSA public key",
    "CERTIFICATE REQUEST": "a certificate signing request (CSR)",
    "NEW CERTIFICATE REQUEST": "a certificate signing request (CSR)",
    "X509 CRL": "a certificate revocation list",
    "TRUSTED CERTIFICATE": "an OpenSSL 'TRUSTED CERTIFICATE' (export it as a plain certificate)",
    "PKCS7": "a PKCS#7 bundle (extract the certificates: openssl pkcs7 -print_certs)",
}


def what_it_holds(data: bytes) -> str:
    """What a file that is not a PEM certificate is, as far as can be told: empty, a
    PEM key, CSR or CRL, a DER (binary) certificate or key, other text or binary data."""
    if not data.strip():
        return "the file is empty"
    label = _PEM_LABEL.search(data)
    if label:
        kind = label.group(1).decode("ascii")
        return f"it holds {_PEM_KINDS.get(kind, f'a PEM {kind!r} block')}, not a certificate"
    if data[:1] == b"\x30":  # a DER SEQUENCE
        from cryptography.hazmat.primitives import serialization

        try:
            x509.load_der_x509_certificate(data)
            return "it is a DER (binary) certificate; convert it: openssl x509 -inform der -in FILE"
        except ValueError:
            pass
        try:
            serialization.load_der_private_key(data, password=None)
            return "it holds a DER (binary) private key, not a certificate"
        except TypeError:  # it needs a password: a key all the same
            return "it holds an encrypted DER (binary) private key, not a certificate"
        except (ValueError, UnsupportedAlgorithm):
            pass
        return "it is binary (DER?) data that is not a certificate"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "it is binary data, not a PEM certificate"
    return "it is text with no -----BEGIN CERTIFICATE----- line"


def load_roots_file(path: Path | str) -> list[x509.Certificate]:
    """The trusted roots in a PEM bundle, read quietly: a bundle (the system's above
    all) may hold certificates that cryptography warns about (a negative serial) or
    cannot read; those are left out, not reported, as they are not what is judged. A
    file that holds no certificate at all is an error, as for ``load_chain_file``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PemError(f"{path}: {err.strerror or err}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise PemError(f"{path}: no PEM certificate found: {what_it_holds(data)}")
    roots = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        for block in _PEM_CERTIFICATE.findall(data):
            try:
                cert = x509.load_pem_x509_certificate(block)
                _read_every_field(cert)
            except BROKEN_CERTIFICATE:
                continue
            roots.append(cert)
    return roots


def system_trust_bundle() -> Path | None:
    """The system's PEM bundle of trusted roots, if it has one."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def san_identifiers(cert: x509.Certificate) -> tuple[str, ...]:
    dns_names, ip_addresses = _sans_by_type(cert)
    return dns_names + ip_addresses


def _sans_by_type(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The DNS-name SANs (lower case) and the IP-address SANs, as strings."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), ()
    dns_names = tuple(n.lower() for n in san.get_values_for_type(x509.DNSName))
    return dns_names, tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))


def _eku(cert: x509.Certificate) -> tuple[x509.ObjectIdentifier, ...] | None:
    try:
        return tuple(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None


def facts(cert: x509.Certificate, now: dt.datetime | None = None) -> CertificateFacts:
    now = now or dt.datetime.now(dt.UTC)
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    hash_alg = cert.signature_hash_algorithm
    return CertificateFacts(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
        not_before=not_before,
        not_after=not_after,
        days_remaining=round((not_after - now).total_seconds() / 86400, 3),
        lifetime_days=round((not_after - not_before).total_seconds() / 86400, 3),
        sans=san_identifiers(cert),
        key_type=describe_key(cert.public_key()),
        signature_hash=hash_alg.name if hash_alg else None,
        extended_key_usage=tuple(o._name for o in (_eku(cert) or ())),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(":"),
    )


def covers(sans: Sequence[str], identifier: str) -> bool:
    """Whether the SAN list covers ``identifier`` (RFC 6125: a wildcard is one whole label)."""
    if is_ip_address(identifier):
        wanted = ipaddress.ip_address(identifier)
        return any(is_ip_address(s) and ipaddress.ip_address(s) == wanted for s in sans)
    identifier = identifier.lower().rstrip(".")
    for san in sans:
        san = san.lower().rstrip(".")
        if san == identifier:
            return True
        if san.startswith("*.") and not identifier.startswith("*."):
            head, _, rest = identifier.partition(".")
            if head and rest == san[2:] and rest.count(".") >= 1:
                return True
    return False


def renewal_threshold_days(
    lifetime_days: float, fraction_left: float | None, min_days_left: float | None
) -> float:
    """Days left below which a certificate is due: the larger of the two policies."""
    by_fraction = lifetime_days * fraction_left if fraction_left else 0.0
    return max(by_fraction, min_days_left or 0.0)


def inspect_chain(
    chain: Sequence[x509.Certificate],
    *,
    identifiers: Sequence[str] = (),
    use: str | None = None,
    roots: Sequence[x509.Certificate] | None = None,
    roots_source: str = "",
    min_days: float = 0.0,
    fraction_left: float | None = None,
    now: dt.datetime | None = None,
    key_floor: tuple[int, int] = (2048, 256),
) -> list[CheckResult]:
    """Judge a chain (leaf first). Checks with nothing to judge against are skipped.
    ``key_floor``: the least RSA and EC key sizes the security policy accepts (never
    below the allow-list's)."""
    if not chain:
        raise ValueError("an empty chain")
    now = now or dt.datetime.now(dt.UTC)
    leaf = chain[0]
    info = facts(leaf, now)
    return [
        _expiry(info, now, min_days, fraction_left),
        _started(info, now),
        _covers(info, leaf, identifiers),
        _key_strength(info, leaf, use, key_floor),
        _signatures(chain),
        _chain_trusted(chain, roots, roots_source, now),
        _eku_fits(leaf, use),
    ]


def _expiry(
    info: CertificateFacts, now: dt.datetime, min_days: float, fraction_left: float | None
) -> CheckResult:
    # Exact spans, not the facts' rounded days: a leaf of minutes is judged to the second.
    lifetime = (info.not_after - info.not_before).total_seconds() / 86400
    threshold = renewal_threshold_days(lifetime, fraction_left, min_days)
    left = (info.not_after - now).total_seconds() / 86400
    if now >= info.not_after:
        return CheckResult(
            "expiry_window", False, "ERROR", f"expired {_span(-left)} ago ({info.not_after})"
        )
    if left < threshold:
        return CheckResult(
            "expiry_window",
            False,
            "WARN",
            f"{_span(left)} left, renewal is due below {_span(threshold)}",
        )
    return CheckResult(
        "expiry_window", True, "WARN", f"{_span(left)} left (renewal due below {_span(threshold)})"
    )


def _span(days: float) -> str:
    """'12.5 days', or for less than a day '42.0 minutes' / '30 s'."""
    if days >= 1:
        return f"{days:.1f} days"
    if days * 1440 >= 1:
        return f"{days * 1440:.1f} minutes"
    return f"{days * 86400:.0f} s"


def _started(info: CertificateFacts, now: dt.datetime) -> CheckResult:
    if now < info.not_before:
        wait = (info.not_before - now).total_seconds() / 3600
        return CheckResult(
            "validity_started",
            False,
            "ERROR",
            f"not valid before {info.not_before} ({wait:.1f} hours from now)",
        )
    return CheckResult("validity_started", True, "ERROR", f"valid since {info.not_before}")


def _covers(
    info: CertificateFacts, leaf: x509.Certificate, identifiers: Sequence[str]
) -> CheckResult:
    if not identifiers:
        return CheckResult(
            "covers_identifiers", True, "ERROR", "no identifiers to check", skipped=True
        )
    # An IP address is covered by an iPAddress SAN only, never by a DNS name that spells
    # it (RFC 2818 section 3.1, RFC 9525); TLS clients reject such a certificate.
    dns_names, ip_addresses = _sans_by_type(leaf)
    missing = [
        i for i in identifiers if not covers(ip_addresses if is_ip_address(i) else dns_names, i)
    ]
    if missing:
        return CheckResult(
            "covers_identifiers",
            False,
            "ERROR",
            f"not covered: {', '.join(missing)} (SANs: {', '.join(info.sans) or 'none'})",
        )
    return CheckResult("covers_identifiers", True, "ERROR", f"covers {', '.join(identifiers)}")


def _key_strength(
    info: CertificateFacts,
    leaf: x509.Certificate,
    use: str | None,
    key_floor: tuple[int, int] = (2048, 256),
) -> CheckResult:
    key, (min_rsa, min_ec) = leaf.public_key(), key_floor
    problem = _key_problem(key, info.key_type, use)
    if problem is None and isinstance(key, rsa.RSAPublicKey) and key.key_size < min_rsa:
        problem = f"{info.key_type} is below the security policy's RSA >= {min_rsa}"
    if problem is None and isinstance(key, ec.EllipticCurvePublicKey) and key.key_size < min_ec:
        problem = f"{info.key_type} is below the security policy's EC >= P-{min_ec}"
    if problem:
        return CheckResult("key_strength", False, "ERROR", problem)
    return CheckResult("key_strength", True, "ERROR", info.key_type)


def _key_problem(key: object, name: str, use: str | None) -> str | None:
    """Why a TLS certificate may not carry ``key`` (described as ``name``), or None.

    An allow-list: RSA >= 2048, EC on the NIST curves TLS clients support, and Ed25519
    only for client certificates (browsers and most TLS clients reject it in a server
    certificate, and the CA/Browser Forum does not allow it). Anything else is refused by
    name, so DSA or a curve such as secp256k1 never passes as "strong enough".
    """
    if isinstance(key, rsa.RSAPublicKey):
        return None if key.key_size >= 2048 else f"{name} is too weak (RSA needs >= 2048 bits)"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name in ALLOWED_CURVES:
            return None
        return f"{name} is not allowed (EC must be on P-256, P-384 or P-521)"
    if isinstance(key, ed25519.Ed25519PublicKey):
        if use == "client":
            return None
        return f"{name} is allowed for client certificates only, not {use or 'an unknown use'}"
    return f"{name} is not allowed (use RSA >= 2048 or EC P-256/P-384/P-521)"


def _signatures(chain: Sequence[x509.Certificate]) -> CheckResult:
    for cert in chain:
        if cert.issuer == cert.subject:
            continue  # a root's self-signature proves nothing and is not relied on
        algorithm = cert.signature_hash_algorithm
        if isinstance(algorithm, WEAK_HASHES):
            return CheckResult(
                "signature_algorithm",
                False,
                "ERROR",
                f"{cert.subject.rfc4514_string()} is signed with {algorithm.name.upper()}",
            )
    names = sorted({(c.signature_hash_algorithm or hashes.SHA256()).name for c in chain})
    return CheckResult("signature_algorithm", True, "ERROR", "signed with " + ", ".join(names))


def _chain_trusted(
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate] | None,
    roots_source: str,
    now: dt.datetime,
) -> CheckResult:
    where = f" in {roots_source}" if roots_source else ""
    if roots is None:
        return CheckResult("chain_trusted", True, "ERROR", "no CA bundle given", skipped=True)
    pool = list(chain[1:])
    current = chain[0]
    for _ in range(MAX_CHAIN_DEPTH):
        root = next((r for r in roots if _issued_by(current, r)), None)
        if root is not None:
            if not root.not_valid_before_utc <= now <= root.not_valid_after_utc:
                return CheckResult(
                    "chain_trusted",
                    False,
                    "ERROR",
                    f"root {root.subject.rfc4514_string()} is outside its validity period",
                )
            return CheckResult(
                "chain_trusted",
                True,
                "ERROR",
                f"chains to {root.subject.rfc4514_string()}{where}",
            )
        parent = next((c for c in pool if _issued_by(current, c) and _is_ca(c)), None)
        if parent is None:
            break
        if not parent.not_valid_before_utc <= now <= parent.not_valid_after_utc:
            return CheckResult(
                "chain_trusted",
                False,
                "ERROR",
                f"intermediate {parent.subject.rfc4514_string()} is outside its validity period",
            )
        pool.remove(parent)
        current = parent
    named = [c for c in (*roots, *pool) if c.subject == current.issuer]
    if named:
        return CheckResult(
            "chain_trusted",
            False,
            "ERROR",
            f"{current.subject.rfc4514_string()} names {current.issuer.rfc4514_string()}{where} "
            f"as its issuer, but {_signature_problem(current, named[0])}",
        )
    return CheckResult(
        "chain_trusted",
        False,
        "ERROR",
        f"no trusted root{where} signed {current.subject.rfc4514_string()} "
        f"(issuer {current.issuer.rfc4514_string()})",
    )


def _signature_problem(cert: x509.Certificate, issuer: x509.Certificate) -> str:
    try:
        cert.verify_directly_issued_by(issuer)
    except InvalidSignature:
        return "its signature does not verify with that certificate's key"
    except (ValueError, TypeError) as err:
        return f"its signature cannot be verified ({err})"
    return "that certificate is not a CA"


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _eku_fits(leaf: x509.Certificate, use: str | None) -> CheckResult:
    if use is None:
        return CheckResult("eku_fits_use", True, "ERROR", "no use given", skipped=True)
    usages = _eku(leaf)
    wanted = EKU_OID[use]
    if usages is None:
        return CheckResult(
            "eku_fits_use",
            False,
            "ERROR",
            f"no extended key usage extension; a {use} certificate needs {wanted._name}",
        )
    if wanted not in usages and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in usages:
        have = ", ".join(o._name for o in usages) or "none"
        return CheckResult(
            "eku_fits_use", False, "ERROR", f"a {use} certificate needs {wanted._name}; has {have}"
        )
    return CheckResult("eku_fits_use", True, "ERROR", f"has {wanted._name}")
