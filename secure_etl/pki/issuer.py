"""What every issuer (internal CA now, ACME next) hands to the certificate store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from secure_etl.pki.keys import PrivateKey

Use = Literal["server", "client"]


@dataclass(frozen=True)
class IssuedCertificate:
    """A leaf, the intermediates that lead to a root, and the leaf's private key (PEM)."""

    cert_pem: bytes
    chain_pem: bytes
    key_pem: bytes

    @property
    def fullchain_pem(self) -> bytes:
        return self.cert_pem + self.chain_pem


class Issuer(Protocol):
    name: str

    def issue(self, identifiers: Sequence[str], use: Use, key: PrivateKey) -> IssuedCertificate:
        """Issue a certificate for ``identifiers`` fit for ``use`` with ``key``."""
        ...

    def trust_bundle(self) -> Path | None:
        """The PEM file of the roots this issuer's certificates chain to (may not exist yet)."""
        ...
