"""The one solver factory: a challenge model -> the solver that answers it.

``secure-etl acme issue`` (from its flags) and the ACME issuer (from the platform config)
both get their solver here. A solver's heavier module (dnspython for rfc2136 and the
propagation check, boto3 for route53, the TLS listener for tls-alpn-01) is imported only
when that solver is built, so a command that answers http-01 does not load them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from secure_etl.acme.challenges import (
    ChallTestSrvProvider,
    Dns01,
    ExecProvider,
    Http01Standalone,
    Http01Webroot,
    Solver,
)
from secure_etl.challenge_config import (
    Challenge,
    Dns01ChallTestSrvChallenge,
    Dns01ExecChallenge,
    Dns01Rfc2136Challenge,
    Dns01Route53Challenge,
    Http01StandaloneChallenge,
    Http01WebrootChallenge,
    TlsAlpn01Challenge,
)
from secure_etl.errors import UserError


class AcmeConfigError(UserError):
    """An ACME issuer setting that cannot work (a missing environment variable...)."""


def build_solver(challenge: Challenge) -> Solver:
    """The solver for a challenge model: the one factory, for the config and the CLI."""
    if isinstance(challenge, Http01StandaloneChallenge):
        return Http01Standalone(challenge.address, challenge.port)
    if isinstance(challenge, TlsAlpn01Challenge):
        from secure_etl.acme.tls_alpn import TlsAlpn01

        return TlsAlpn01(challenge.address, challenge.port)
    if isinstance(challenge, Http01WebrootChallenge):
        return Http01Webroot(challenge.path)
    if isinstance(challenge, Dns01ExecChallenge):
        return Dns01(ExecProvider(challenge.argv, challenge.timeout_s))
    if isinstance(challenge, Dns01ChallTestSrvChallenge):
        return Dns01(ChallTestSrvProvider(challenge.url))
    if isinstance(challenge, Dns01Rfc2136Challenge):
        return _rfc2136(challenge)
    if isinstance(challenge, Dns01Route53Challenge):
        return _route53(challenge)
    raise NotImplementedError(type(challenge).__name__)


def _rfc2136(challenge: Dns01Rfc2136Challenge) -> Solver:
    from secure_etl.acme.rfc2136 import Rfc2136Provider

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
    return Dns01(provider, wait=_authoritative_wait(challenge))


def _route53(challenge: Dns01Route53Challenge) -> Solver:
    from secure_etl.acme.route53 import Route53Provider, missing_environment

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
    return Dns01(provider, wait=_authoritative_wait(challenge) if check else None)


def _authoritative_wait(
    challenge: Dns01Rfc2136Challenge | Dns01Route53Challenge,
) -> Callable[[str, str], float]:
    """Wait until every authoritative server answers the record (dnspython, loaded here)."""
    from secure_etl.acme.propagation import propagation_wait

    return propagation_wait(
        challenge.propagation_servers,
        resolver=challenge.propagation_resolver,
        port=challenge.propagation_port,
        timeout_s=challenge.propagation_timeout_s,
    )
