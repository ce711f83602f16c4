"""The ACME challenge models of the platform config, and what every config model shares.

Apart from ``config.py`` so that ``secure-etl acme issue`` can build the same models from
its flags, and hand them to the one solver factory (``pki.solvers.build_solver``), without
loading the whole platform config (its fifty models take longer to build than the command
takes to reach the CA). ``config.py`` builds on these: its ``AcmeIssuer.challenge`` is
``Challenge``, its models derive from ``StrictModel`` and its paths are ``LocalPath``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    """A config model: unknown keys are errors, values are frozen once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True)


class FromConfigDir:
    """Marks a path that, when relative, is relative to the config file's directory."""


# A file or directory on this machine, named in a user's config file: relative paths are
# anchored at that file's directory when it loads (not at the process's working directory).
LocalPath = Annotated[str, FromConfigDir()]


class Http01StandaloneChallenge(StrictModel):
    """Answer http-01 from a listener of our own (the CA connects to port 80 normally)."""

    type: Literal["http-01"]
    address: str = "0.0.0.0"  # noqa: S104 (the CA must reach it)
    port: int = Field(80, ge=1, le=65535)


class TlsAlpn01Challenge(StrictModel):
    """Answer tls-alpn-01 (RFC 8737) from a TLS listener of our own (the CA connects to
    port 443 normally); not for wildcards."""

    type: Literal["tls-alpn-01"]
    address: str = "0.0.0.0"  # noqa: S104 (the CA must reach it)
    port: int = Field(443, ge=1, le=65535)


class Http01WebrootChallenge(StrictModel):
    """Write the http-01 token under a running web server's document root."""

    type: Literal["http-01-webroot"]
    path: LocalPath


class Dns01ExecChallenge(StrictModel):
    """dns-01 through a program: ``argv + [present|cleanup, fqdn, value]`` (no shell)."""

    type: Literal["dns-01-exec"]
    argv: list[str] = Field(min_length=1)
    timeout_s: float = Field(120, gt=0)


class Dns01ChallTestSrvChallenge(StrictModel):
    """dns-01 through Pebble's challenge test server (tests and local CAs)."""

    type: Literal["dns-01-challtestsrv"]
    url: str


class _DnsPropagation(StrictModel):
    """Before the CA is told to look, every authoritative server of the record's zone must
    answer it: found by SOA/NS lookups through ``propagation_resolver`` (host[:port];
    default: the system resolver) and asked on ``propagation_port``, unless
    ``propagation_servers`` (host[:port] each) names the servers to ask instead."""

    propagation_servers: list[str] | None = None
    propagation_resolver: str | None = None
    propagation_port: int = Field(53, ge=1, le=65535)
    propagation_timeout_s: float = Field(120, gt=0)


class Dns01Rfc2136Challenge(_DnsPropagation):
    """dns-01 through RFC 2136 dynamic updates signed with a TSIG key (BIND and others)."""

    type: Literal["dns-01-rfc2136"]
    server: str  # host or host:port of the primary that accepts updates
    key_name: str
    key_secret_env: str  # the environment variable holding the base64 TSIG secret
    algorithm: Literal["hmac-sha256", "hmac-sha384", "hmac-sha512"] = "hmac-sha256"
    zone: str | None = None  # default: found by asking the server for the SOA
    ttl: int = Field(60, ge=1)


class Dns01Route53Challenge(_DnsPropagation):
    """dns-01 through Amazon Route 53 (the ``route53`` extra brings boto3). Credentials
    come from the environment only: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and, for
    temporary ones, AWS_SESSION_TOKEN. Each change is awaited until Route 53 reports it
    INSYNC (on all its servers); the authoritative check runs too with ``propagation_check``
    or ``propagation_servers``."""

    type: Literal["dns-01-route53"]
    hosted_zone_id: str | None = None  # default: the public zone found from the name
    region: str = "us-east-1"
    ttl: int = Field(60, ge=1)
    endpoint_url: str | None = Field(None, pattern=r"^https?://")  # default: AWS's
    change_timeout_s: float = Field(300, gt=0)
    propagation_check: bool = False


Challenge = Annotated[
    Http01StandaloneChallenge
    | Http01WebrootChallenge
    | TlsAlpn01Challenge
    | Dns01ExecChallenge
    | Dns01ChallTestSrvChallenge
    | Dns01Rfc2136Challenge
    | Dns01Route53Challenge,
    Field(discriminator="type"),
]
