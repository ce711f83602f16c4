"""The ACME issuer: our RFC 8555 client behind the Issuer interface, with resume.

State, under ``<state_dir>/acme/<issuer>/``:
  account.key (0600), account.json (the account URL)
  orders/<id>.json + orders/<id>.key (0600)   an order under way, kept until it is done,
                                              so a killed process resumes the same order
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

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from secure_etl.acme.challenges import (
    ChallTestSrvProvider,
    Dns01,
    ExecProvider,
    Http01Standalone,
    Http01Webroot,
    Solver,
)
from secure_etl.acme.client import AcmeClient, ari_cert_id
from secure_etl.acme.errors import AccountDoesNotExist, AcmeProblem, ProtocolError
from secure_etl.acme.jws import AccountKey
from secure_etl.acme.rfc2136 import Rfc2136Provider
from secure_etl.acme.transport import Transport
from secure_etl.config import (
    AcmeIssuer as AcmeIssuerConfig,
)
from secure_etl.config import (
    Dns01ChallTestSrvChallenge,
    Dns01ExecChallenge,
    Dns01Rfc2136Challenge,
    Http01StandaloneChallenge,
    Http01WebrootChallenge,
)
from secure_etl.pki.inspect import load_pem_chain, system_trust_bundle
from secure_etl.pki.issuer import IssuedCertificate, Use
from secure_etl.pki.keys import PrivateKey, generate_private_key, load_private_key, private_key_pem
from secure_etl.security.files import (
    lock_file,
    private_dir,
    read_secret,
    write_atomic,
    write_secret,
)


class AcmeConfigError(Exception):
    """An ACME issuer setting that cannot work (a missing environment variable...)."""


def build_solver(challenge) -> Solver:
    from secure_etl.acme.propagation import propagation_wait
    from secure_etl.acme.route53 import Route53Provider, missing_environment
    from secure_etl.acme.tls_alpn import TlsAlpn01
    from secure_etl.config import Dns01Route53Challenge, TlsAlpn01Challenge

    def authoritative_wait():
        return propagation_wait(
            challenge.propagation_servers,
            resolver=challenge.propagation_resolver,
            port=challenge.propagation_port,
            timeout_s=challenge.propagation_timeout_s,
        )

    if isinstance(challenge, Http01StandaloneChallenge):
        return Http01Standalone(challenge.address, challenge.port)
    if isinstance(challenge, TlsAlpn01Challenge):
        return TlsAlpn01(challenge.address, challenge.port)
    if isinstance(challenge, Http01WebrootChallenge):
        return Http01Webroot(challenge.path)
    if isinstance(challenge, Dns01ExecChallenge):
        return Dns01(ExecProvider(challenge.argv, challenge.timeout_s))
    if isinstance(challenge, Dns01ChallTestSrvChallenge):
        return Dns01(ChallTestSrvProvider(challenge.url))
    if isinstance(challenge, Dns01Rfc2136Challenge):
        secret = os.environ.get(challenge.key_secret_env)
        if not secret:
            raise AcmeConfigError(
                f"dns-01-rfc2136: environment variable {challenge.key_secret_env} "
                "(the TSIG secret) is not set"
            )
        provider = Rfc2136Provider(
            challenge.server,
            challenge.key_name,
            secret,
            algorithm=challenge.algorithm,
            zone=challenge.zone,
            ttl=challenge.ttl,
        )
        return Dns01(provider, wait=authoritative_wait())
    if isinstance(challenge, Dns01Route53Challenge):
        problem = missing_environment()
        if problem:
            raise AcmeConfigError(problem)
        provider = Route53Provider(
            challenge.hosted_zone_id,
            region=challenge.region,
            ttl=challenge.ttl,
            endpoint_url=challenge.endpoint_url,
            timeout_s=challenge.change_timeout_s,
        )
        check = challenge.propagation_check or challenge.propagation_servers
        return Dns01(provider, wait=authoritative_wait() if check else None)
    raise NotImplementedError(type(challenge).__name__)


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
            verify=self.config.server_ca_bundle or True,
            timeout=min(self.config.timeout_s, 60),
            log=self.log,
        )
        client = AcmeClient(transport, self._account_key(), log=self.log)
        account_file = self.directory / "account.json"
        if account_file.exists():
            client.account_url = json.loads(account_file.read_text())["url"]
        else:
            self._register(client)
        return client

    def _register(self, client: AcmeClient) -> None:
        terms = client.directory.terms_of_service
        account = client.register(self.config.email, eab=self._eab())
        if terms:
            self.log(f"{self.name}: agreed to the CA's terms of service: {terms}")
        write_atomic(self.directory / "account.json", json.dumps({"url": account.url}).encode())
        self.log(f"{self.name}: ACME account {account.url}")

    # Renewal information (RFC 9773)

    def renewal_due(self, leaf: x509.Certificate, now: dt.datetime | None = None) -> str | None:
        """Why the CA wants this certificate renewed now (ARI), or None."""
        client = self.client()
        try:
            info = client.renewal_info(leaf)
        finally:
            client.transport.close()
        if info is None:
            return None
        # A moment in the window that stays the same for this certificate across checks.
        when = info.renewal_time(random.Random(leaf.serial_number))
        if (now or dt.datetime.now(dt.UTC)) >= when:
            return f"the CA's renewal window (ARI) opened at {info.start:%Y-%m-%d %H:%M} UTC"
        return None

    # Issuance

    def issue(
        self,
        identifiers: Sequence[str],
        use: Use,
        key: PrivateKey,
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
        replaces = None
        if previous is not None and client.directory.renewal_info:
            try:
                replaces = ari_cert_id(previous)
            except (ProtocolError, x509.ExtensionNotFound):
                replaces = None  # no AKI: the CA cannot match it anyway
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
        state_file.unlink(missing_ok=True)
        key_file.unlink(missing_ok=True)
        pem = [c.public_bytes(serialization.Encoding.PEM) for c in certs]
        return IssuedCertificate(pem[0], b"".join(pem[1:]), private_key_pem(key))

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
