"""Typed, immutable ACME objects (RFC 8555 §7.1), parsed from the server's JSON."""

from __future__ import annotations

from dataclasses import dataclass, field

from secure_etl.acme.errors import AcmeProblem, ProtocolError

# RFC 5280 §5.3.1 reason codes that ACME servers accept for revocation.
REVOCATION_REASONS = {
    "unspecified": 0,
    "keyCompromise": 1,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
}


def _require(body: dict, key: str, what: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"{what} has no {key!r}")
    return value


@dataclass(frozen=True)
class Directory:
    new_nonce: str
    new_account: str
    new_order: str
    revoke_cert: str
    key_change: str
    renewal_info: str | None = None
    terms_of_service: str | None = None
    external_account_required: bool = False
    profiles: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: dict) -> Directory:
        meta = body.get("meta") or {}
        return cls(
            new_nonce=_require(body, "newNonce", "the directory"),
            new_account=_require(body, "newAccount", "the directory"),
            new_order=_require(body, "newOrder", "the directory"),
            revoke_cert=_require(body, "revokeCert", "the directory"),
            key_change=_require(body, "keyChange", "the directory"),
            renewal_info=body.get("renewalInfo"),
            terms_of_service=meta.get("termsOfService"),
            external_account_required=bool(meta.get("externalAccountRequired", False)),
            profiles=dict(meta.get("profiles") or {}),
        )


@dataclass(frozen=True)
class Identifier:
    type: str  # "dns" or "ip"
    value: str

    @classmethod
    def from_json(cls, body: dict) -> Identifier:
        return cls(str(body.get("type", "")), str(body.get("value", "")))

    def to_json(self) -> dict:
        return {"type": self.type, "value": self.value}


@dataclass(frozen=True)
class Account:
    url: str
    status: str
    contact: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, url: str, body: dict) -> Account:
        return cls(url, str(body.get("status", "")), tuple(body.get("contact") or ()))


@dataclass(frozen=True)
class Challenge:
    type: str
    url: str
    status: str
    token: str = ""
    error: AcmeProblem | None = None

    @classmethod
    def from_json(cls, body: dict) -> Challenge:
        error = body.get("error")
        return cls(
            type=str(body.get("type", "")),
            url=_require(body, "url", "a challenge"),
            status=str(body.get("status", "")),
            token=str(body.get("token", "")),
            error=AcmeProblem.from_json(error) if isinstance(error, dict) else None,
        )


@dataclass(frozen=True)
class Authorization:
    url: str
    status: str
    identifier: Identifier
    challenges: tuple[Challenge, ...]
    wildcard: bool = False

    @classmethod
    def from_json(cls, url: str, body: dict) -> Authorization:
        return cls(
            url=url,
            status=str(body.get("status", "")),
            identifier=Identifier.from_json(body.get("identifier") or {}),
            challenges=tuple(Challenge.from_json(c) for c in body.get("challenges") or ()),
            wildcard=bool(body.get("wildcard", False)),
        )

    def challenge(self, kind: str) -> Challenge | None:
        return next((c for c in self.challenges if c.type == kind), None)


@dataclass(frozen=True)
class Order:
    url: str
    status: str
    identifiers: tuple[Identifier, ...]
    authorizations: tuple[str, ...]
    finalize: str
    certificate: str | None = None
    error: AcmeProblem | None = None

    @classmethod
    def from_json(cls, url: str, body: dict) -> Order:
        error = body.get("error")
        return cls(
            url=url,
            status=str(body.get("status", "")),
            identifiers=tuple(Identifier.from_json(i) for i in body.get("identifiers") or ()),
            authorizations=tuple(body.get("authorizations") or ()),
            finalize=_require(body, "finalize", "an order"),
            certificate=body.get("certificate"),
            error=AcmeProblem.from_json(error) if isinstance(error, dict) else None,
        )


@dataclass(frozen=True)
class CertificateChain:
    """A downloaded chain (PEM, leaf first) and the alternates the server offered."""

    pem: bytes
    url: str
    alternates: tuple[str, ...] = ()
