"""Deploy actions: tell the things that use a certificate that a new version is current."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

import httpx
from cryptography.hazmat.primitives import hashes

from secure_etl.acme.retry import Backoff, GaveUp, TryAgain, retry
from secure_etl.acme.transport import parse_retry_after
from secure_etl.config import CommandDeploy, DeployAction, PostgresReloadDeploy, WebhookDeploy
from secure_etl.pki.endpoints import EndpointError, served_leaf

# A webhook that is down or busy is asked again, within its timeout_s, never sooner
# than its Retry-After; any other refusal is final.
WEBHOOK_RETRY = Backoff(attempts=3, first_s=0.5, max_s=5.0)
WEBHOOK_RETRY_STATUSES = {429, 502, 503, 504}


class DeployError(Exception):
    """A deploy action failed; the new certificate is current but may not be loaded."""


@dataclass(frozen=True)
class DeployContext:
    certificate: str
    version: str
    directory: str
    event: str  # "issued", "renewed" or "redeployed"
    serial: int = 0  # of the certificate that should now be served, for messages
    fingerprint: str = ""  # its SHA-256 fingerprint (hex): what proves it is served
    ca_bundle: str = ""  # roots that verify servers presenting this certificate
    # name -> (fullchain, privkey) of the platform's client certificates
    client_files: dict[str, tuple[str, str]] | None = None


def run_deploy_actions(actions: list[DeployAction], ctx: DeployContext) -> list[str]:
    """Run every action in order; returns one line per action, raises on the first failure."""
    done = []
    for action in actions:
        if isinstance(action, CommandDeploy):
            done.append(_run_command(action, ctx))
        elif isinstance(action, WebhookDeploy):
            done.append(_call_webhook(action, ctx))
        elif isinstance(action, PostgresReloadDeploy):
            done.append(_postgres_reload(action, ctx))
    return done


def _run_command(action: CommandDeploy, ctx: DeployContext) -> str:
    env = dict(
        os.environ,
        SECURE_ETL_CERT_NAME=ctx.certificate,
        SECURE_ETL_CERT_VERSION=ctx.version,
        SECURE_ETL_CERT_DIR=ctx.directory,
        SECURE_ETL_CERT_EVENT=ctx.event,
    )
    try:
        proc = subprocess.run(  # argv list, never a shell
            action.argv, env=env, capture_output=True, timeout=action.timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DeployError(f"deploy command {action.argv[0]!r} failed to run: {err}") from None
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise DeployError(
            f"deploy command {action.argv[0]!r} exited {proc.returncode}: {tail[0][:200]}"
        )
    return f"command {action.argv[0]} exited 0"


def _call_webhook(action: WebhookDeploy, ctx: DeployContext) -> str:
    url = os.environ.get(action.url_env)
    if not url:
        raise DeployError(f"deploy webhook: environment variable {action.url_env} is not set")
    payload = {"certificate": ctx.certificate, "version": ctx.version, "event": ctx.event}
    deadline = time.monotonic() + action.timeout_s

    def post(_attempt: int) -> httpx.Response:
        left = max(0.001, deadline - time.monotonic())
        response = httpx.post(url, json=payload, timeout=left)
        if response.status_code in WEBHOOK_RETRY_STATUSES:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            raise TryAgain(f"HTTP {response.status_code}", retry_after=wait)
        response.raise_for_status()
        return response

    try:
        response = retry(
            post, WEBHOOK_RETRY, deadline=deadline, retry_on=(TryAgain, httpx.TransportError)
        )
    except GaveUp as gave_up:
        # The URL may carry a token: name the variable, not the URL.
        why = gave_up.last if isinstance(gave_up.last, TryAgain) else type(gave_up.last).__name__
        raise DeployError(
            f"deploy webhook ${action.url_env} failed after {gave_up.attempts} attempts: {why}"
        ) from None
    except httpx.HTTPError as err:
        raise DeployError(
            f"deploy webhook ${action.url_env} failed: {type(err).__name__}"
        ) from None
    return f"webhook ${action.url_env} answered {response.status_code}"


def _postgres_reload(action: PostgresReloadDeploy, ctx: DeployContext) -> str:
    # psycopg only for servers we manage; the connection rules are the pipelines' own.
    import psycopg

    from secure_etl.security.postgres_tls import PgEndpoint, PostgresError

    cert, key = (ctx.client_files or {})[action.client_certificate]
    where = f"{action.host}:{action.port}"
    endpoint = PgEndpoint(
        host=action.host,
        port=action.port,
        dbname=action.dbname,
        user=action.user,
        sslrootcert=ctx.ca_bundle,
        sslcert=cert,
        sslkey=key,
        connect_timeout_s=int(action.timeout_s),
    )
    try:
        with endpoint.connect() as conn:
            reloaded = conn.execute("SELECT pg_reload_conf()").fetchone()[0]
    except PostgresError as err:
        raise DeployError(f"postgres_reload: {err}") from None
    except psycopg.Error as err:
        raise DeployError(f"postgres_reload {where}: {str(err).strip()}") from None
    if not reloaded:
        raise DeployError(f"postgres_reload {where}: pg_reload_conf() returned false")
    # The postmaster reloads asynchronously: wait until new connections get the new leaf.
    wanted = f"sha256:{ctx.fingerprint[:16]} (serial {ctx.serial:x})"

    def served(_attempt: int) -> str:
        leaf = served_leaf(action.host, action.port, "postgres")
        if leaf.fingerprint(hashes.SHA256()).hex() != ctx.fingerprint:
            raise TryAgain("an older certificate is served")
        return f"postgres_reload {where}: serving {wanted}"

    poll = Backoff(attempts=None, first_s=0.05, max_s=0.05)
    try:
        return retry(
            served,
            poll,
            deadline=time.monotonic() + action.timeout_s,
            retry_on=(TryAgain, EndpointError),
        )
    except GaveUp:
        raise DeployError(f"postgres_reload {where}: still not serving {wanted}") from None
