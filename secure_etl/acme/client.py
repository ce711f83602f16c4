"""The ACME protocol flow (RFC 8555), one method per step; ``issue`` runs them in order."""

from __future__ import annotations

import datetime as dt
import ipaddress
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from secure_etl.acme.challenges import Solver
from secure_etl.acme.errors import (
    AcmeProblem,
    AuthorizationFailed,
    OrderFailed,
    PollTimeout,
    ProtocolError,
)
from secure_etl.acme.jws import AccountKey, b64url, external_account_binding
from secure_etl.acme.messages import (
    REVOCATION_REASONS,
    Account,
    Authorization,
    CertificateChain,
    Identifier,
    Order,
)
from secure_etl.acme.transport import PEM_CHAIN, Response, Transport

# The first poll comes soon (a local Pebble has validated or issued within 5 to 10 ms),
# then the interval doubles: against a CA that takes a second or two that costs two more
# polls than starting at 50 ms did, all in the first 70 ms. Retry-After, when the CA
# sends it, overrides the schedule.
FIRST_POLL_S = 0.01
MAX_POLL_INTERVAL_S = 5.0
# What CAs answer a newOrder whose `replaces` they cannot or will not honour.
REPLACES_REFUSALS = {"malformed", "alreadyReplaced", "conflict"}


def identifier_for(value: str) -> Identifier:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return Identifier("dns", value)
    return Identifier("ip", value)


def make_csr(identifiers: Sequence[str], key) -> bytes:
    """A DER CSR naming every identifier in the SAN. The CN is the first DNS name that fits
    in one (64 characters), or absent: CAs (OpenBao, Boulder) refuse an IP address there."""
    parsed = [identifier_for(i) for i in identifiers]
    names = [
        x509.IPAddress(ipaddress.ip_address(i.value)) if i.type == "ip" else x509.DNSName(i.value)
        for i in parsed
    ]
    common_name = next((i.value for i in parsed if i.type == "dns" and len(i.value) <= 64), None)
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(subject))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def ari_cert_id(cert: x509.Certificate) -> str:
    """The RFC 9773 CertID: base64url(AKI keyIdentifier) '.' base64url(serial DER bytes)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    if aki.key_identifier is None:
        raise ProtocolError("the certificate's AKI has no keyIdentifier; ARI needs one")
    serial = cert.serial_number
    serial_bytes = serial.to_bytes((serial.bit_length() + 8) // 8, "big")  # keeps a sign bit 0
    return f"{b64url(aki.key_identifier)}.{b64url(serial_bytes)}"


@dataclass(frozen=True)
class RenewalInfo:
    """The CA's suggested renewal window (RFC 9773)."""

    start: dt.datetime
    end: dt.datetime
    retry_after: float | None = None
    explanation_url: str | None = None

    def renewal_time(self, rng: random.Random | None = None) -> dt.datetime:
        """A uniformly random moment in the window, so renewals spread out."""
        span = (self.end - self.start).total_seconds()
        return self.start + dt.timedelta(seconds=(rng or random).uniform(0, max(span, 0)))


class AcmeClient:
    """An account at one ACME server."""

    def __init__(
        self,
        transport: Transport,
        key: AccountKey,
        account_url: str | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.transport, self.key, self.account_url = transport, key, account_url
        self.log = log or (lambda _msg: None)

    @property
    def directory(self):
        return self.transport.directory

    def _post(self, url: str, payload: object | None, accept: str | None = None) -> Response:
        if not self.account_url:
            raise ProtocolError("no account: call register() or find_account() first")
        return self.transport.post(url, payload, self.key, self.account_url, accept)

    # Accounts (§7.3)

    def register(
        self,
        email: str | None = None,
        *,
        agree_tos: bool = True,
        eab: tuple[str, str] | None = None,
    ) -> Account:
        """Create the account for this key, or return the existing one."""
        payload: dict = {"termsOfServiceAgreed": agree_tos}
        if email:
            payload["contact"] = [f"mailto:{email}"]
        if eab:
            kid, hmac_key = eab
            payload["externalAccountBinding"] = external_account_binding(
                self.key, kid, hmac_key, self.directory.new_account
            )
        response = self.transport.post(self.directory.new_account, payload, self.key, None)
        return self._account_from(response)

    def find_account(self) -> Account:
        """The existing account for this key (AccountDoesNotExist if there is none)."""
        response = self.transport.post(
            self.directory.new_account, {"onlyReturnExisting": True}, self.key, None
        )
        return self._account_from(response)

    def _account_from(self, response: Response) -> Account:
        if not response.location:
            raise ProtocolError("newAccount answered without a Location")
        self.account_url = response.location
        return Account.from_json(response.location, response.json())

    def update_contact(self, emails: Sequence[str]) -> Account:
        response = self._post(self.account_url, {"contact": [f"mailto:{e}" for e in emails]})
        return Account.from_json(self.account_url, response.json())

    def deactivate(self) -> Account:
        response = self._post(self.account_url, {"status": "deactivated"})
        return Account.from_json(self.account_url, response.json())

    def change_key(self, new_key: AccountKey) -> None:
        """Roll the account over to ``new_key`` (§7.3.5)."""
        url = self.directory.key_change
        inner = new_key.sign(url, {"account": self.account_url, "oldKey": self.key.jwk}, None)
        self._post(url, inner)
        self.key = new_key

    # Orders (§7.4)

    def new_order(
        self,
        identifiers: Sequence[str],
        *,
        replaces: str | None = None,
        profile: str | None = None,
    ) -> Order:
        payload: dict = {"identifiers": [identifier_for(i).to_json() for i in identifiers]}
        if replaces:
            payload["replaces"] = replaces
        if profile:
            if profile not in self.directory.profiles:
                offered = ", ".join(self.directory.profiles) or "none"
                raise ProtocolError(f"the CA offers no profile {profile!r} (offers: {offered})")
            payload["profile"] = profile
        try:
            response = self._post(self.directory.new_order, payload)
        except AcmeProblem as problem:
            if not replaces or not _refuses_replaces(problem):
                raise
            # `replaces` is only a hint (RFC 9773 §5): a CA that will not take it must not
            # block the renewal.
            self.log(f"the CA refused replaces={replaces} ({problem}); ordering without it")
            del payload["replaces"]
            response = self._post(self.directory.new_order, payload)
        if not response.location:
            raise ProtocolError("newOrder answered without a Location")
        return Order.from_json(response.location, response.json())

    def get_order(self, url: str) -> Order:
        return Order.from_json(url, self._post(url, None).json())

    def get_authorization(self, url: str) -> Authorization:
        return Authorization.from_json(url, self._post(url, None).json())

    def authorize(self, order: Order, solver: Solver, timeout_s: float = 120.0) -> None:
        """Prove control of every identifier: present all challenges, answer, then poll."""
        pending = []
        for url in order.authorizations:
            authz = self.get_authorization(url)
            if authz.status == "valid":
                continue
            challenge = authz.challenge(solver.challenge_type)
            if challenge is None:
                offered = ", ".join(c.type for c in authz.challenges) or "none"
                raise AuthorizationFailed(
                    authz.name,
                    solver.challenge_type,
                    None,
                    f"the CA offers no {solver.challenge_type} challenge (offered: {offered})",
                )
            solver.present(
                authz.identifier.value, challenge.token, self.key.key_authorization(challenge.token)
            )
            pending.append((authz, challenge))
        try:
            for _, challenge in pending:
                self._post(challenge.url, {})
            for authz, _ in pending:
                done = self._poll(
                    lambda a=authz: self._authorization_and_response(a.url),
                    lambda a: a.status not in ("pending", "processing"),
                    timeout_s,
                    f"authorization of {authz.name}",
                )
                if done.status != "valid":
                    answered = done.challenge(solver.challenge_type)
                    raise AuthorizationFailed(
                        done.name,
                        solver.challenge_type,
                        answered.error if answered else None,
                        f"the authorization ended {done.status}",
                    )
        finally:
            for authz, challenge in pending:
                solver.cleanup(authz.identifier.value, challenge.token)

    def _authorization_and_response(self, url: str) -> tuple[Authorization, Response]:
        response = self._post(url, None)
        return Authorization.from_json(url, response.json()), response

    def finalize(self, order: Order, csr_der: bytes, timeout_s: float = 120.0) -> Order:
        response = self._post(order.finalize, {"csr": b64url(csr_der)})
        order = Order.from_json(order.url, response.json())
        # A `processing` answer's Retry-After holds for the first poll too (§7.4).
        return self.wait_for_order(order, timeout_s, retry_after=response.retry_after)

    def wait_for_order(
        self, order: Order, timeout_s: float = 120.0, retry_after: float | None = None
    ) -> Order:
        """Poll until the order leaves pending/processing; raise if it became invalid.
        ``retry_after``: what the answer that gave ``order`` asked us to wait."""
        if order.status in ("pending", "processing"):
            order = self._poll(
                lambda: self._order_and_response(order.url),
                lambda o: o.status not in ("pending", "processing"),
                timeout_s,
                f"order {order.url}",
                first_delay=retry_after,
            )
        if order.status == "invalid":
            raise OrderFailed(order.url, order.error)
        return order

    def _order_and_response(self, url: str) -> tuple[Order, Response]:
        response = self._post(url, None)
        return Order.from_json(url, response.json()), response

    def download(self, url: str, preferred_issuer: str | None = None) -> CertificateChain:
        """The certificate chain; with ``preferred_issuer``, the first offered chain whose
        top certificate was issued by that common name (else the default)."""
        response = self._post(url, None, accept=PEM_CHAIN)
        chain = CertificateChain(response.body, url, tuple(response.links("alternate")))
        if not preferred_issuer or _top_issuer(chain.pem) == preferred_issuer:
            return chain
        for alternate in chain.alternates:
            body = self._post(alternate, None, accept=PEM_CHAIN).body
            if _top_issuer(body) == preferred_issuer:
                return CertificateChain(body, alternate, chain.alternates)
        self.log(f"no chain issued by {preferred_issuer!r}; using the default chain")
        return chain

    def issue(
        self,
        identifiers: Sequence[str],
        key,
        solver: Solver,
        *,
        order_url: str | None = None,
        on_order: Callable[[Order], None] | None = None,
        replaces: str | None = None,
        profile: str | None = None,
        preferred_issuer: str | None = None,
        timeout_s: float | None = None,
    ) -> CertificateChain:
        """Order, authorize, finalize with ``key``'s CSR, download. ``order_url`` resumes;
        ``timeout_s`` bounds the whole issuance, every request and poll included."""
        with self.transport.within(timeout_s):
            order = self.get_order(order_url) if order_url else None
            if order is None or order.status == "invalid":
                order = self.new_order(identifiers, replaces=replaces, profile=profile)
            if on_order:
                on_order(order)
            if order.status == "pending":
                self.authorize(order, solver)
                order = self.wait_for_order(self.get_order(order.url))
            if order.status == "ready":
                order = self.finalize(order, make_csr(identifiers, key))
            order = self.wait_for_order(order)
            if order.status != "valid" or not order.certificate:
                raise ProtocolError(f"order {order.url} ended {order.status} without a certificate")
            return self.download(order.certificate, preferred_issuer)

    # Revocation (§7.6) and renewal information (RFC 9773)

    def revoke(self, cert_der: bytes, reason: str | None = None, cert_key=None) -> None:
        """Revoke with the account key, or with the certificate's own key (``cert_key``)."""
        payload: dict = {"certificate": b64url(cert_der)}
        if reason is not None:
            if reason not in REVOCATION_REASONS:
                raise ValueError(f"unknown reason {reason!r} ({', '.join(REVOCATION_REASONS)})")
            payload["reason"] = REVOCATION_REASONS[reason]
        url = self.directory.revoke_cert
        if cert_key is not None:
            self.transport.post(url, payload, AccountKey(cert_key), None)
        else:
            self._post(url, payload)

    def renewal_info(self, cert: x509.Certificate) -> RenewalInfo | None:
        """The CA's suggested window, or None when the CA offers no ARI."""
        base = self.directory.renewal_info
        if not base:
            return None
        response = self.transport.get(f"{base.rstrip('/')}/{ari_cert_id(cert)}")
        window = response.json().get("suggestedWindow") or {}
        try:
            start = dt.datetime.fromisoformat(window["start"].replace("Z", "+00:00"))
            end = dt.datetime.fromisoformat(window["end"].replace("Z", "+00:00"))
        except (KeyError, AttributeError, TypeError, ValueError):
            raise ProtocolError(f"{response.url}: no valid suggestedWindow") from None
        if end < start:
            raise ProtocolError(f"{response.url}: suggestedWindow ends before it starts")
        return RenewalInfo(start, end, response.retry_after, response.json().get("explanationURL"))

    def _poll(self, fetch, done, timeout_s: float, what: str, first_delay: float | None = None):
        """Fetch until ``done``: a fast first poll, then doubling (capped); never sooner
        than Retry-After. Gives up after ``timeout_s`` or at the transport's deadline."""
        timeout_s = min(timeout_s, self.transport.remaining())
        deadline = time.monotonic() + timeout_s
        backoff = FIRST_POLL_S
        delay, status = max(backoff, first_delay or 0), "pending"
        while True:
            if delay > deadline - time.monotonic():
                raise PollTimeout(
                    f"{what} still {status}: the next poll ({delay:.0f} s from now) would come "
                    f"after the deadline ({timeout_s:.0f} s)"
                )
            time.sleep(delay)
            value, response = fetch()
            if done(value):
                return value
            status = value.status
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PollTimeout(f"{what} still {status} after {timeout_s:.0f} s")
            backoff = min(backoff * 2, MAX_POLL_INTERVAL_S)
            wait = response.retry_after
            # The server knows best: never earlier than Retry-After asks.
            delay = wait if wait is not None else min(backoff, remaining)


def _refuses_replaces(problem: AcmeProblem) -> bool:
    return problem.status == 409 or problem.short_type in REPLACES_REFUSALS


def _top_issuer(pem: bytes) -> str | None:
    """The issuer common name of the last certificate in a PEM chain."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        return None
    names = certs[-1].issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None
