"""The ACME challenge models of the platform config: plain frozen dataclasses.

Apart from ``config.py``, and without pydantic, so that ``secure-etl acme issue`` can
build the same models from its flags and hand them to the one solver factory
(``pki.solvers.build_solver``) without loading pydantic or the platform config: those
imports took longer than the command takes to reach the CA. The config validates them
like its own models (``AcmeIssuer.challenge`` is ``Challenge``, told apart by ``type``):
pydantic reads the bounds below (``annotated_types``) and forbids unknown keys
(``__pydantic_config__``); ``acme issue`` checks its flags itself. ``LocalPath`` marks a
path the config anchors at its own directory; the config's models use it too.
"""

from dataclasses import dataclass
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Interval, MinLen


class FromConfigDir:
    """Marks a path that, when relative, is relative to the config file's directory."""


# A file or directory on this machine, named in a user's config file: relative paths are
# anchored at that file's directory when it loads (not at the process's working directory).
LocalPath = Annotated[str, FromConfigDir()]
Port = Annotated[int, Interval(ge=1, le=65535)]
# How pydantic validates these dataclasses inside the config: an unknown key is an error.
STRICT = {"extra": "forbid"}


@dataclass(frozen=True, kw_only=True)
class Http01StandaloneChallenge:
    """Answer http-01 from a listener of our own (the CA connects to port 80 normally)."""

    __pydantic_config__ = STRICT

    type: Literal["http-01"]
    address: str = "0.0.0.0"  # noqa: S104 (the CA must reach it)
    port: Port = 80


@dataclass(frozen=True, kw_only=True)
class TlsAlpn01Challenge:
    """Answer tls-alpn-01 (RFC 8737) from a TLS listener of our own (the CA connects to
    port 443 normally); not for wildcards."""

    __pydantic_config__ = STRICT

    type: Literal["tls-alpn-01"]
    address: str = "0.0.0.0"  # noqa: S104 (the CA must reach it)
    port: Port = 443


@dataclass(frozen=True, kw_only=True)
class Http01WebrootChallenge:
    """Write the http-01 token under a running web server's document root."""

    __pydantic_config__ = STRICT

    type: Literal["http-01-webroot"]
    path: LocalPath


@dataclass(frozen=True, kw_only=True)
class Dns01ExecChallenge:
    """dns-01 through a program: ``argv + [present|cleanup, fqdn, value]`` (no shell)."""

    __pydantic_config__ = STRICT

    type: Literal["dns-01-exec"]
    argv: Annotated[list[str], MinLen(1)]
    timeout_s: Annotated[float, Gt(0)] = 120


@dataclass(frozen=True, kw_only=True)
class Dns01ChallTestSrvChallenge:
    """dns-01 through Pebble's challenge test server (tests and local CAs)."""

    __pydantic_config__ = STRICT

    type: Literal["dns-01-challtestsrv"]
    url: str


@dataclass(frozen=True, kw_only=True)
class _DnsPropagation:
    """Before the CA is told to look, every authoritative server of the record's zone must
    answer it: found by SOA/NS lookups through ``propagation_resolver`` (host[:port];
    default: the system resolver) and asked on ``propagation_port``, unless
    ``propagation_servers`` (host[:port] each) names the servers to ask instead."""

    __pydantic_config__ = STRICT

    propagation_servers: list[str] | None = None
    propagation_resolver: str | None = None
    propagation_port: Port = 53
    propagation_timeout_s: Annotated[float, Gt(0)] = 120


@dataclass(frozen=True, kw_only=True)
class Dns01Rfc2136Challenge(_DnsPropagation):
    """dns-01 through RFC 2136 dynamic updates signed with a TSIG key (BIND and others)."""

    type: Literal["dns-01-rfc2136"]
    server: str  # host or host:port of the primary that accepts updates
    key_name: str
    key_secret_env: str  # the environment variable holding the base64 TSIG secret
    algorithm: Literal["hmac-sha256", "hmac-sha384", "hmac-sha512"] = "hmac-sha256"
    zone: str | None = None  # default: found by asking the server for the SOA
    ttl: Annotated[int, Ge(1)] = 60


@dataclass(frozen=True, kw_only=True)
class Dns01Route53Challenge(_DnsPropagation):
    """dns-01 through Amazon Route 53 (the ``route53`` extra brings boto3). Credentials
    come from the environment only: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and, for
    temporary ones, AWS_SESSION_TOKEN. Each change is awaited until Route 53 reports it
    INSYNC (on all its servers); the authoritative check runs too with ``propagation_check``
    or ``propagation_servers``."""

    type: Literal["dns-01-route53"]
    hosted_zone_id: str | None = None  # default: the public zone found from the name
    region: str = "us-east-1"
    ttl: Annotated[int, Ge(1)] = 60
    endpoint_url: str | None = None  # default: AWS's; http:// or https://
    change_timeout_s: Annotated[float, Gt(0)] = 300
    propagation_check: bool = False

    def __post_init__(self) -> None:
        url = self.endpoint_url
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint_url {url!r}: not an http:// or https:// URL")


Challenge = (
    Http01StandaloneChallenge
    | Http01WebrootChallenge
    | TlsAlpn01Challenge
    | Dns01ExecChallenge
    | Dns01ChallTestSrvChallenge
    | Dns01Rfc2136Challenge
    | Dns01Route53Challenge
)
