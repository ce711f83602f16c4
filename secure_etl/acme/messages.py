"""Typed, immutable ACME objects (RFC 8555 §7.1), parsed from the server's JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

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


def https_url(url: object, what: str) -> str:
    """``url`` if it is an https URL with a host; otherwise a ProtocolError naming ``what``.
    Plain http would carry the account, the CSR and the certificate in the clear."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme.lower() != "https" or not parts.hostname:
        raise ProtocolError(f"{what}: {url!r} is not an https:// URL; refusing to use it")
    return url


def _url(body: dict, key: str, what: str) -> str:
    return https_url(_require(body, key, what), f"{what} {key!r}")


def _optional_url(body: dict, key: str, what: str) -> str | None:
    return _url(body, key, what) if body.get(key) is not None else None


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
        if not isinstance(meta, dict) or not isinstance(meta.get("profiles") or {}, dict):
            raise ProtocolError("the directory's 'meta' and its 'profiles' must be JSON objects")
        profiles = meta.get("profiles") or {}
        where = "the directory"
        return cls(
            new_nonce=_url(body, "newNonce", where),
            new_account=_url(body, "newAccount", where),
            new_order=_url(body, "newOrder", where),
            revoke_cert=_url(body, "revokeCert", where),
            key_change=_url(body, "keyChange", where),
            renewal_info=_optional_url(body, "renewalInfo", where),
            terms_of_service=meta.get("termsOfService"),
            external_account_required=bool(meta.get("externalAccountRequired", False)),
            profiles={str(k): str(v) for k, v in profiles.items()},
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
            url=_url(body, "url", "a challenge"),
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

    @property
    def name(self) -> str:
        """The identifier as ordered: ``*.example.test`` for a wildcard authorization."""
        return f"*.{self.identifier.value}" if self.wildcard else self.identifier.value

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
            authorizations=tuple(
                https_url(a, f"order {url} authorization") for a in body.get("authorizations") or ()
            ),
            finalize=_url(body, "finalize", f"order {url}"),
            certificate=_optional_url(body, "certificate", f"order {url}"),
            error=AcmeProblem.from_json(error) if isinstance(error, dict) else None,
        )


@dataclass(frozen=True)
class CertificateChain:
    """A downloaded chain (PEM, leaf first) and the alternates the server offered."""

    pem: bytes
    url: str
    alternates: tuple[str, ...] = ()
