"""The built-in private CA: a root created on first use that signs server and client leaves."""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secure_etl.identifiers import is_ip_address
from secure_etl.pki.issuer import IssuedCertificate, IssuerUnavailable, Use
from secure_etl.pki.keys import (
    PrivateKey,
    generate_private_key,
    load_private_key,
    private_key_pem,
)
from secure_etl.security.files import (
    lock_file,
    private_dir,
    read_secret,
    write_atomic,
    write_secret,
)

EKU_FOR_USE = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
# Leaves are back-dated a little so a peer whose clock runs behind still accepts them.
CLOCK_SKEW = dt.timedelta(minutes=5)


def san_entries(identifiers: Sequence[str]) -> list[x509.GeneralName]:
    return [
        x509.IPAddress(ipaddress.ip_address(i)) if is_ip_address(i) else x509.DNSName(i)
        for i in identifiers
    ]


def leaf_subject(identifiers: Sequence[str]) -> list[x509.NameAttribute]:
    """CN = the first DNS name that fits (64 characters), or none: never an IP address,
    never a name cut short (the SAN carries every identifier either way)."""
    name = next((i for i in identifiers if not is_ip_address(i) and len(i) <= 64), None)
    return [x509.NameAttribute(NameOID.COMMON_NAME, name)] if name else []


def signing_hash(key: PrivateKey) -> hashes.HashAlgorithm:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


class SharedKeeper(Protocol):
    """A shared certificate store (store_postgres) as the CA's keeper."""

    def lock(self, name: str) -> AbstractContextManager[None]: ...
    def has_current(self, name: str) -> bool: ...
    def current_fullchain(self, name: str) -> bytes | None: ...
    def current_key(self, name: str) -> bytes | None: ...
    def install(self, name: str, issued: IssuedCertificate, keep: int = 5) -> str: ...


# Each CA directory's root and key as last loaded, with the signature of their files
# then: issuing a thousand leaves reads and checks them once, not a thousand times.
_LOADED: dict[Path, tuple[tuple, tuple[x509.Certificate, PrivateKey]]] = {}


def _files_signature(directory: Path) -> tuple | None:
    """What identifies the CA's directory, key and root as they are on disk now (None:
    one is missing). Never follows a link: a link in their place changes it."""
    try:
        infos = [os.lstat(directory / part) for part in ("", "ca.key", "ca.pem")]
    except FileNotFoundError:
        return None
    return tuple(
        (i.st_ino, i.st_dev, i.st_size, i.st_mtime_ns, i.st_ctime_ns, i.st_uid, i.st_mode)
        for i in infos
    )


class InternalCA:
    """A root CA kept in ``directory`` (``ca.pem``, ``ca.key`` 0600), or with a
    ``shared`` store in that store as the entry ``ca:<name>`` (its key encrypted under
    the KMS like every key there, decrypted in memory only), created once under the
    store's lock whichever worker issues first; ``ca.pem`` (public) is then a local copy
    of the root for whoever needs it as a trust bundle."""

    def __init__(
        self,
        name: str,
        directory: Path,
        *,
        common_name: str = "secure_etl internal root CA",
        key_type: str = "ec256",
        ca_lifetime_days: int = 3650,
        lifetime_days: int = 90,
        shared: SharedKeeper | None = None,
        lifetime: dt.timedelta | None = None,
    ) -> None:
        self.name = name
        self.shared = shared
        self.directory = Path(directory)
        self.common_name = common_name
        self.key_type = key_type
        self.ca_lifetime = dt.timedelta(days=ca_lifetime_days)
        self.lifetime = lifetime or dt.timedelta(days=lifetime_days)

    @property
    def root_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def key_path(self) -> Path:
        return self.directory / "ca.key"

    def trust_bundle(self) -> Path:
        """Where the root is (or will be once the first certificate is issued)."""
        if self.shared is not None and not self.root_path.exists():
            root = self.shared.current_fullchain(self._entry)
            if root:
                private_dir(self.directory)
                write_atomic(self.root_path, root)
        return self.root_path

    @property
    def _entry(self) -> str:
        return f"ca:{self.name}"

    def renewal_due(self, leaf: x509.Certificate, now: dt.datetime | None = None) -> str | None:
        """Never: our own schedule alone decides when a leaf of this CA is renewed."""
        return None

    def ensure_root(self) -> tuple[x509.Certificate, PrivateKey]:
        """Load the root, creating it (under a lock) the first time. Kept in memory while
        its files stay as they were loaded (same inode, size, time, owner and mode)."""
        if self.shared is not None:
            return self._shared_root()
        seen = _files_signature(self.directory)
        cached = _LOADED.get(self.directory)
        if seen is not None and cached is not None and cached[0] == seen:
            return cached[1]
        private_dir(self.directory, holds_keys=True)
        with lock_file(self.directory / ".lock") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.root_path.exists():
                root_pem, key_pem = self._new_root()
                # The key first: a root without its key would be useless.
                write_secret(self.key_path, key_pem)
                write_atomic(self.root_path, root_pem)
            seen = _files_signature(self.directory)  # before reading: a change is seen
            key = load_private_key(read_secret(self.key_path))
            root = x509.load_pem_x509_certificate(self.root_path.read_bytes())
        if seen is not None:
            _LOADED[self.directory] = (seen, (root, key))
        return root, key

    def _shared_root(self) -> tuple[x509.Certificate, PrivateKey]:
        """The root from the shared store; the first worker puts it there: this
        machine's own root if it has one (a move from the local store), else a new one."""
        local = self.root_path.exists() and self.key_path.exists()
        with self.shared.lock(self._entry):
            if not self.shared.has_current(self._entry):
                if local:
                    root_pem, key_pem = self.root_path.read_bytes(), read_secret(self.key_path)
                else:
                    root_pem, key_pem = self._new_root()
                self.shared.install(self._entry, IssuedCertificate(root_pem, b"", key_pem), 1)
            root_pem = self.shared.current_fullchain(self._entry)
            key = load_private_key(self.shared.current_key(self._entry))
        if self.root_path.exists() and self.root_path.read_bytes() != root_pem:
            raise ValueError(
                f"{self.root_path}: another root than the shared store's CA {self._entry!r}: "
                "move this file away (or empty the shared entry) so one root signs for all"
            )
        private_dir(self.directory)
        write_atomic(self.root_path, root_pem)  # public: the local trust bundle
        return x509.load_pem_x509_certificate(root_pem), key

    def _new_root(self) -> tuple[bytes, bytes]:
        """A new self-signed root and its key, as PEM."""
        key = generate_private_key(self.key_type)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.common_name)])
        now = dt.datetime.now(dt.UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + self.ca_lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, signing_hash(key))
        )
        return cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key)

    def issue(
        self,
        identifiers: Sequence[str],
        use: Use,
        key: PrivateKey,
        *,
        previous: x509.Certificate | None = None,
        not_before: dt.datetime | None = None,
        lifetime: dt.timedelta | None = None,
    ) -> IssuedCertificate:
        """Sign a leaf for ``identifiers`` (DNS names or IPs) with the EKU ``use`` needs
        (``previous`` changes nothing: a new leaf is signed either way)."""
        if not identifiers:
            raise ValueError("a certificate needs at least one identifier")
        try:
            root, ca_key = self.ensure_root()
        except OSError as err:  # a key moved away, a volume not mounted: may come back
            raise IssuerUnavailable(
                f"issuer {self.name!r} cannot sign: {err.filename or self.directory}: "
                f"{err.strerror or err}"
            ) from None
        lifetime = lifetime or self.lifetime
        # Backdated for clock skew, but by no more than a tenth of the lifetime: a leaf of
        # minutes must not start most of its life already spent.
        start = not_before or dt.datetime.now(dt.UTC) - min(CLOCK_SKEW, lifetime / 10)
        end = min(start + lifetime, root.not_valid_after_utc)
        public = key.public_key()
        subject = leaf_subject(identifiers)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(root.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([EKU_FOR_USE[use]]), critical=False)
            # RFC 5280 §4.2.1.6: with an empty subject the SAN must be critical.
            .add_extension(
                x509.SubjectAlternativeName(san_entries(identifiers)), critical=not subject
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, signing_hash(ca_key))
        )
        return IssuedCertificate(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            # The root signs leaves directly: there is no intermediate to send.
            chain_pem=b"",
            key_pem=private_key_pem(key),
        )
