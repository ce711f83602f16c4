"""What every issuer (the internal CA, ACME) offers renewal and hands to the store."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from cryptography import x509

from secure_etl.acme.errors import AcmeProblem, CaUnreachable, RateLimited
from secure_etl.pki.keys import PrivateKey

Use = Literal["server", "client"]


class IssuerUnavailable(Exception):
    """The issuer cannot sign just now (the internal CA's key or root cannot be read);
    the same request may succeed later. The previous certificate stays current."""


def worth_retrying(err: BaseException) -> bool:
    """Whether a failed issuance may succeed if made again soon: the CA was unreachable,
    answered with a server error, or could not sign. Not a refusal, a rate limit (its
    Retry-After is the CA's to give), a failed challenge or a certificate that failed
    verification: those need a person or a later schedule, not a retry loop."""
    if isinstance(err, IssuerUnavailable | CaUnreachable):
        return True
    return (
        isinstance(err, AcmeProblem)
        and not isinstance(err, RateLimited)
        and (err.status or 0) >= 500
    )


@dataclass(frozen=True)
class IssuedCertificate:
    """A leaf, the intermediates that lead to a root, and the leaf's private key (PEM)."""

    cert_pem: bytes
    chain_pem: bytes
    key_pem: bytes
    order_url: str | None = None  # ACME: the order that produced it

    @property
    def fullchain_pem(self) -> bytes:
        return self.cert_pem + self.chain_pem


class Issuer(Protocol):
    name: str

    def issue(
        self,
        identifiers: Sequence[str],
        use: Use,
        key: PrivateKey,
        *,
        previous: x509.Certificate | None = None,
    ) -> IssuedCertificate:
        """Issue a certificate for ``identifiers`` fit for ``use`` with ``key``;
        ``previous`` is the certificate it replaces, if any."""
        ...

    def renewal_due(self, leaf: x509.Certificate, now: dt.datetime | None = None) -> str | None:
        """Why the issuer wants ``leaf`` renewed before our own schedule says, or None."""
        ...

    def trust_bundle(self) -> Path | None:
        """The PEM file of the roots this issuer's certificates chain to (may not exist yet)."""
        ...
