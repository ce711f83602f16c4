"""The ACME issuer: our RFC 8555 client behind the Issuer interface, with resume.

State, under ``<state_dir>/acme/<issuer>/``:
  account.key (0600), account.json (the account URL)
  orders/<id>.json + orders/<id>.key (0600)   an order under way, kept until it is done,
                                              so a killed process resumes the same order
  ari/<CertID>.json                           per certificate issued here: whether it was
                                              replaced, its last ARI window, next ARI poll
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from secure_etl.acme.client import AcmeClient, RenewalInfo, ari_cert_id
from secure_etl.acme.errors import AccountDoesNotExist, AcmeError, AcmeProblem, ProtocolError
from secure_etl.acme.jws import AccountKey
from secure_etl.acme.transport import Transport
from secure_etl.config import AcmeIssuer as AcmeIssuerConfig
from secure_etl.pki.inspect import load_pem_chain, system_trust_bundle
from secure_etl.pki.issuer import IssuedCertificate, Use
from secure_etl.pki.keys import PrivateKey, generate_private_key, load_private_key, private_key_pem
from secure_etl.pki.solvers import AcmeConfigError, build_solver
from secure_etl.security.files import (
    lock_file,
    private_dir,
    read_secret,
    write_atomic,
    write_secret,
)
from secure_etl.security.proxy import ProxyError, configured_proxy
from secure_etl.security.tls import verifying_context

# How often to ask the CA for renewal information: its Retry-After, kept within a minute
# and a day (RFC 9773 section 4.3); six hours when it says nothing, one after an error.
ARI_MIN_POLL_S, ARI_MAX_POLL_S = 60.0, 86400.0
ARI_DEFAULT_POLL_S, ARI_ERROR_RETRY_S = 6 * 3600.0, 3600.0


def _cert_id(cert: x509.Certificate) -> str | None:
    """The certificate's ARI CertID, or None when it has no AKI key identifier."""
    try:
        return ari_cert_id(cert)
    except (ProtocolError, x509.ExtensionNotFound):
        return None


def _utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


class AcmeIssuer:
    def __init__(
        self,
        name: str,
        config: AcmeIssuerConfig,
        directory: Path,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.name, self.config, self.directory = name, config, Path(directory)
        self.log = log or (lambda _msg: None)
        self.last_order_url: str | None = None

    def trust_bundle(self) -> Path | None:
        return Path(self.config.trust_bundle) if self.config.trust_bundle else system_trust_bundle()

    # The account

    def _account_key(self) -> AccountKey:
        path = self.directory / "account.key"
        if not path.exists():
            write_secret(path, private_key_pem(generate_private_key(self.config.account_key_type)))
            self.log(f"{self.name}: created ACME account key {path}")
        return AccountKey(load_private_key(read_secret(path)))

    def _eab(self) -> tuple[str, str] | None:
        kid_env, mac_env = self.config.eab_kid_env, self.config.eab_hmac_env
        if not kid_env and not mac_env:
            return None
        missing = [v for v in (kid_env, mac_env) if not v or not os.environ.get(v)]
        if missing:
            raise AcmeConfigError(
                f"issuer {self.name!r}: external account binding needs both eab_kid_env and "
                f"eab_hmac_env set in the environment (missing: {', '.join(map(str, missing))})"
            )
        return os.environ[kid_env], os.environ[mac_env]

    def client(self) -> AcmeClient:
        """A client with its account registered (or found again) at the CA."""
        private_dir(self.directory, holds_keys=True)
        # One account per issuer, even when many renewals start at once (threads or
        # processes): the first creates the key and registers, the others wait and reuse.
        with lock_file(self.directory / ".account.lock") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return self._client_locked()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _client_locked(self) -> AcmeClient:
        transport = Transport(
            self.config.directory_url,
            # The ACME server verified (its bundle, else the system roots) at the policy's
            # minimum TLS version for ACME.
            verify=verifying_context(self.config.server_ca_bundle, self.config.min_tls),
            timeout=min(self.config.timeout_s, 60),
            log=self.log,
            # One deadline for all this client does (an issuance: every request and poll).
            deadline_s=self.config.timeout_s,
            proxy=self._proxy(),
        )
        client = AcmeClient(transport, self._account_key(), log=self.log)
        account_file = self.directory / "account.json"
        if account_file.exists():
            client.account_url = json.loads(account_file.read_text())["url"]
        else:
            self._register(client)
        return client

    def _proxy(self) -> httpx.Proxy | None:
        try:
            return configured_proxy(self.config.proxy)
        except ProxyError as err:
            raise AcmeConfigError(f"issuer {self.name!r}: {err}") from None

    def _register(self, client: AcmeClient) -> None:
        terms = client.directory.terms_of_service
        account = client.register(self.config.email, eab=self._eab())
        if terms:
            self.log(f"{self.name}: agreed to the CA's terms of service: {terms}")
        write_atomic(self.directory / "account.json", json.dumps({"url": account.url}).encode())
        self.log(f"{self.name}: ACME account {account.url}")

    # Renewal information (RFC 9773)

    def renewal_due(self, leaf: x509.Certificate, now: dt.datetime | None = None) -> str | None:
        """Why the CA wants this certificate renewed now (ARI), or None. A bad or missing
        answer leaves the decision to our own schedule; the CA is asked again no sooner
        than its Retry-After said (the window it gave last is used meanwhile)."""
        now = now or dt.datetime.now(dt.UTC)
        cert_id = _cert_id(leaf)
        record = self._ari_record(cert_id) if cert_id else {}
        window = record.get("window")
        if not (record.get("next_poll") and now < dt.datetime.fromisoformat(record["next_poll"])):
            window, wait = self._ask_ari(leaf)
            if cert_id:
                retry = dt.timedelta(seconds=min(max(wait, ARI_MIN_POLL_S), ARI_MAX_POLL_S))
                self._ari_update(cert_id, window=window, next_poll=(now + retry).isoformat())
        if not window:
            return None
        info = RenewalInfo(*(dt.datetime.fromisoformat(t) for t in window))
        # A moment in the window that stays the same for this certificate across checks.
        if now >= info.renewal_time(random.Random(leaf.serial_number)):
            return f"the CA's renewal window (ARI) opened at {info.start:%Y-%m-%d %H:%M} UTC"
        return None

    def _ask_ari(self, leaf: x509.Certificate) -> tuple[list[str] | None, float]:
        """The CA's window (start, end as ISO text) or None, and seconds until asking again."""
        try:
            client = self.client()
            try:
                info = client.renewal_info(leaf)
            finally:
                client.transport.close()
        except AcmeError as err:
            serial = format(leaf.serial_number, "x")
            self.log(
                f"{self.name}: no usable renewal information (ARI) for serial {serial} ({err}); "
                "following our own renewal schedule"
            )
            return None, getattr(err, "retry_after", None) or ARI_ERROR_RETRY_S
        if info is None:
            return None, ARI_DEFAULT_POLL_S
        window = [info.start.isoformat(), info.end.isoformat()]
        return window, info.retry_after or ARI_DEFAULT_POLL_S

    # What this issuer knows of each certificate it issued, by ARI CertID, under ari/:
    # issued_here, replaced (a renewal of it succeeded), window, next_poll, not_after.

    def _ari_record(self, cert_id: str) -> dict:
        try:
            return json.loads((self.directory / "ari" / f"{cert_id}.json").read_text())
        except (OSError, ValueError):
            return {}

    def _ari_update(self, cert_id: str, **fields) -> None:
        record = {**self._ari_record(cert_id), **fields}
        (self.directory / "ari").mkdir(parents=True, exist_ok=True)
        write_atomic(self.directory / "ari" / f"{cert_id}.json", json.dumps(record).encode())

    def replaces_id(self, previous: x509.Certificate | None, offers_ari: bool) -> str | None:
        """The CertID to send as ``replaces``: only for a certificate this issuer got from
        its CA and whose replacement was not issued yet (a CA refuses anything else)."""
        cert_id = _cert_id(previous) if previous is not None and offers_ari else None
        if cert_id is None:
            return None
        record = self._ari_record(cert_id)
        if not record.get("issued_here") or record.get("replaced"):
            why = "was replaced already" if record.get("replaced") else "was not issued here"
            self.log(f"{self.name}: not sending replaces: the current certificate {why}")
            return None
        return cert_id

    def _remember_issued(self, leaf: x509.Certificate, previous: x509.Certificate | None) -> None:
        for old in (self.directory / "ari").glob("*.json"):
            expired = self._ari_record(old.stem).get("not_after", "9999") < _utc_now_iso()
            if expired:
                old.unlink(missing_ok=True)
        cert_id = _cert_id(leaf)
        if cert_id:
            self._ari_update(
                cert_id, issued_here=True, not_after=leaf.not_valid_after_utc.isoformat()
            )
        previous_id = _cert_id(previous) if previous is not None else None
        if previous_id:
            self._ari_update(previous_id, replaced=True)

    # Issuance

    def issue(
        self,
        identifiers: Sequence[str],
        use: Use,
        key: PrivateKey,
        *,
        previous: x509.Certificate | None = None,
    ) -> IssuedCertificate:
        """Issue through ACME. An order left by a killed process is resumed with its key.
        ``previous``: the certificate this one replaces (sent as ``replaces`` when the CA
        offers ARI)."""
        order_id = hashlib.sha256("\n".join(sorted(identifiers)).encode()).hexdigest()[:16]
        state_file = self.directory / "orders" / f"{order_id}.json"
        key_file = state_file.with_suffix(".key")
        order_url = None
        if state_file.exists() and key_file.exists():
            order_url = json.loads(state_file.read_text()).get("order_url")
            key = load_private_key(read_secret(key_file))
            self.log(f"{self.name}: resuming order {order_url}")
        else:
            write_secret(key_file, private_key_pem(key))

        def remember(order) -> None:
            self.last_order_url = order.url
            write_atomic(state_file, json.dumps({"order_url": order.url}).encode())

        client = self.client()
        replaces = self.replaces_id(previous, bool(client.directory.renewal_info))
        solver = build_solver(self.config.challenge)
        try:
            try:
                chain = self._issue_once(
                    client, identifiers, key, solver, order_url, remember, replaces
                )
            except AccountDoesNotExist:
                # The CA forgot us (a test CA restarted, an account deleted): register again;
                # the old order belonged to the old account.
                self.log(f"{self.name}: the CA no longer knows the account; registering again")
                self._register(client)
                chain = self._issue_once(client, identifiers, key, solver, None, remember, None)
        finally:
            solver.close()
            client.transport.close()
        certs = load_pem_chain(chain.pem, chain.url)
        self._remember_issued(certs[0], previous)
        state_file.unlink(missing_ok=True)
        key_file.unlink(missing_ok=True)
        pem = [c.public_bytes(serialization.Encoding.PEM) for c in certs]
        return IssuedCertificate(
            pem[0], b"".join(pem[1:]), private_key_pem(key), order_url=self.last_order_url
        )

    def _issue_once(self, client, identifiers, key, solver, order_url, remember, replaces):
        options = {
            "on_order": remember,
            "replaces": replaces,
            "profile": self.config.profile,
            "preferred_issuer": self.config.preferred_chain,
        }
        try:
            return client.issue(identifiers, key, solver, order_url=order_url, **options)
        except AcmeProblem as problem:
            gone = problem.status in (403, 404) and not isinstance(problem, AccountDoesNotExist)
            if not (order_url and gone):
                raise
            # The saved order is gone (expired, or the CA restarted): start afresh.
            self.log(f"{self.name}: saved order {order_url} is gone ({problem}); new order")
            return client.issue(identifiers, key, solver, **options)
