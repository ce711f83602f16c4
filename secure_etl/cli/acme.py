"""``secure-etl acme issue|revoke``: talk to an ACME CA directly (no Dagster)."""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from secure_etl.acme.messages import REVOCATION_REASONS
from secure_etl.cli.exits import EXIT_OK, Refused
from secure_etl.errors import UserError
from secure_etl.pki.keys import KEY_TYPES

# Heavier modules (httpx, pydantic) are imported by the command that needs them, so
# `secure-etl` starts fast.

TSIG_SECRET_ENV = "SECURE_ETL_TSIG_SECRET"  # noqa: S105 (a variable's name, not a secret)
PROXY_USERNAME_ENV, PROXY_PASSWORD_ENV = "SECURE_ETL_PROXY_USERNAME", "SECURE_ETL_PROXY_PASSWORD"


def add_commands(commands) -> None:
    """Add ``acme`` and its subcommands to the top-level ``commands``."""
    acme = commands.add_parser("acme", help="talk to an ACME CA directly")
    acme_commands = acme.add_subparsers(metavar="COMMAND")

    issue = acme_commands.add_parser("issue", help="issue a certificate and write it to --out")
    issue.add_argument(
        "-d",
        "--domain",
        action="append",
        required=True,
        metavar="DOMAIN",
        help="a DNS name or IP address (repeatable)",
    )
    _server_args(issue)
    issue.add_argument("--email", metavar="E", help="account contact")
    issue.add_argument("--key-type", choices=KEY_TYPES, default="ec256")
    issue.add_argument("--http-01-address", default="0.0.0.0", metavar="A")  # noqa: S104
    issue.add_argument(
        "--http-01-port",
        type=int,
        metavar="N",
        help="answer http-01 from our own listener on this port",
    )
    issue.add_argument("--tls-alpn-01-address", default="0.0.0.0", metavar="A")  # noqa: S104
    issue.add_argument(
        "--tls-alpn-01-port",
        type=int,
        metavar="N",
        help="answer tls-alpn-01 from our own TLS listener on this port (443 for a public CA)",
    )
    issue.add_argument(
        "--webroot",
        type=Path,
        metavar="DIR",
        help="answer http-01 with a file under DIR/.well-known/acme-challenge/",
    )
    issue.add_argument(
        "--dns-01",
        choices=["exec", "rfc2136", "route53", "challtestsrv"],
        metavar="PROVIDER",
        help="answer dns-01 through a provider: exec, rfc2136, route53 or challtestsrv",
    )
    issue.add_argument(
        "--dns-01-hook",
        nargs="+",
        metavar="ARGV",
        help="exec provider: the program (and arguments); it is called with "
        "present|cleanup FQDN VALUE appended",
    )
    issue.add_argument(
        "--challtestsrv", metavar="URL", help="challtestsrv provider: its management URL"
    )
    issue.add_argument(
        "--rfc2136-server", metavar="HOST[:PORT]", help="rfc2136 provider: the primary server"
    )
    issue.add_argument(
        "--rfc2136-key-name",
        metavar="NAME",
        help="rfc2136 provider: the TSIG key name; its base64 secret is read from "
        "$SECURE_ETL_TSIG_SECRET",
    )
    issue.add_argument(
        "--rfc2136-algorithm", default="hmac-sha256", metavar="ALG", help="TSIG algorithm"
    )
    issue.add_argument(
        "--route53-zone-id",
        metavar="ID",
        help="route53 provider: the hosted zone (default: found from each name); "
        "credentials from $AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY [, $AWS_SESSION_TOKEN]",
    )
    issue.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="give up if the whole issuance takes longer (default 300 s)",
    )
    issue.add_argument("--out", type=Path, required=True, metavar="DIR")
    issue.set_defaults(handler=acme_issue)

    revoke = acme_commands.add_parser("revoke", help="revoke a certificate")
    revoke.add_argument("cert", type=Path, metavar="CERT", help="PEM certificate (leaf first)")
    revoke.add_argument("--reason", choices=list(REVOCATION_REASONS))
    revoke.add_argument(
        "--key",
        type=Path,
        metavar="PRIVKEY",
        help="sign with the certificate's own key instead of the account key",
    )
    revoke.add_argument(
        "--config",
        type=Path,
        help="record the revocation in this platform's audit log "
        "(default: $SECURE_ETL_CONFIG when set, else no record)",
    )
    _server_args(revoke)
    revoke.set_defaults(handler=acme_revoke)


def _server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--directory", required=True, metavar="URL", help="ACME directory URL")
    parser.add_argument(
        "--ca-bundle",
        type=Path,
        metavar="PEM",
        help="verify the ACME server with these roots (default: system)",
    )
    parser.add_argument(
        "--account-key",
        type=Path,
        metavar="PATH",
        help="account key (created if missing; default: one per CA under "
        "~/.local/share/secure_etl/acme/)",
    )
    parser.add_argument(
        "--proxy",
        metavar="URL",
        help="reach the CA through this forward proxy (http://host:port; HTTP CONNECT, TLS "
        f"end to end); its login, if it wants one, from ${PROXY_USERNAME_ENV} and "
        f"${PROXY_PASSWORD_ENV}",
    )


def _client(args: argparse.Namespace, account_key=None, deadline_s: float | None = None):
    """A client for ``--directory``; its account key is ``account_key`` if given, else
    the one at ``--account-key`` (created if missing); nothing it does outlasts
    ``deadline_s``."""
    from secure_etl.acme.client import AcmeClient
    from secure_etl.acme.jws import AccountKey
    from secure_etl.acme.transport import Transport

    if account_key is None:
        account_key = _account_key(args)
    verify = str(args.ca_bundle) if args.ca_bundle else True
    transport = Transport(args.directory, verify=verify, deadline_s=deadline_s, proxy=_proxy(args))
    return AcmeClient(transport, AccountKey(account_key))


def _proxy(args: argparse.Namespace):
    """``--proxy`` for httpx (None without it); its login from the environment if set."""
    from secure_etl.security.proxy import ProxyError, outbound_proxy

    if not args.proxy:
        return None
    login = os.environ.get(PROXY_USERNAME_ENV) or os.environ.get(PROXY_PASSWORD_ENV)
    envs = (PROXY_USERNAME_ENV, PROXY_PASSWORD_ENV) if login else (None, None)
    try:
        return outbound_proxy(args.proxy, None, *envs)
    except ProxyError as err:
        raise UserError(f"--proxy: {err}") from None


def _account_key(args: argparse.Namespace):
    """The account key at ``--account-key`` (or the CA's default place), created if
    missing; a path that holds no usable key is one line (exit 2)."""
    from cryptography.exceptions import UnsupportedAlgorithm

    from secure_etl.pki.keys import generate_private_key, load_private_key, private_key_pem
    from secure_etl.security.files import read_secret, write_secret

    path = args.account_key or default_account_key_path(args.directory)
    flag = "--account-key " if args.account_key else "account key "
    if path.is_dir():
        raise UserError(f"{flag}{path}: is a directory; give the key file (created if missing)")
    try:
        if not path.exists():
            write_secret(path, private_key_pem(generate_private_key("ec256")))
            print(f"created account key {path}", file=sys.stderr)
        data = read_secret(path)
    except OSError as err:
        raise UserError(f"{flag}{path}: {err.strerror or err}") from None
    try:
        return load_private_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        what = "the file is empty" if not data.strip() else "not an unencrypted PEM EC or RSA key"
        raise UserError(f"{flag}{path}: {what}") from None


def _check_server_args(args: argparse.Namespace) -> None:
    """Refuse a bad ``--directory`` or ``--ca-bundle`` before anything is created or sent."""
    from secure_etl.acme.errors import ProtocolError
    from secure_etl.acme.messages import https_url
    from secure_etl.identifiers import proxy_url_problem
    from secure_etl.pki.inspect import PemError, load_roots_file

    try:
        https_url(args.directory, "--directory")
    except ProtocolError as err:
        raise UserError(str(err)) from None
    problem = args.proxy and proxy_url_problem(args.proxy)
    if problem:
        raise UserError(f"--proxy: {problem}")
    if args.ca_bundle is not None:
        try:
            roots = load_roots_file(args.ca_bundle)
        except PemError as err:
            raise UserError(f"--ca-bundle {err}") from None
        if not roots:
            raise UserError(f"--ca-bundle {args.ca_bundle}: no certificate in it can be read")


def _check_domains(domains: list[str]) -> None:
    from secure_etl.identifiers import is_dns_name, is_ip_address

    bad = [d for d in domains if not (is_ip_address(d) or is_dns_name(d))]
    if bad:
        raise UserError(
            f"-d {', '.join(map(repr, bad))}: not a DNS name or IP address "
            "(lower-case labels of letters, digits and '-'; '*.' only as the first label)"
        )


def default_account_key_path(directory_url: str) -> Path:
    """Where the account key for a CA lives unless ``--account-key`` is given."""
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    host = urlsplit(directory_url).netloc.replace(":", "_") or "ca"
    digest = hashlib.sha256(directory_url.encode()).hexdigest()[:8]
    return base / "secure_etl" / "acme" / f"{host}-{digest}" / "account.key"


def _challenge(args: argparse.Namespace):
    """The config's challenge model for the flags given, so that ``acme issue`` and a
    platform config get their solver from the one factory (``build_solver``). Only the
    challenge dataclasses are loaded (``challenge_config``): neither pydantic nor the
    platform config; what the config would check of these values is checked here."""
    import typing

    from secure_etl import challenge_config as config

    chosen = [args.http_01_port, args.tls_alpn_01_port, args.webroot, args.dns_01]
    if sum(option is not None for option in chosen) != 1:
        raise UserError("choose one of --http-01-port, --tls-alpn-01-port, --webroot or --dns-01")
    for flag, port in (
        ("--http-01-port", args.http_01_port),
        ("--tls-alpn-01-port", args.tls_alpn_01_port),
    ):
        if port is not None and not 1 <= port <= 65535:
            raise UserError(f"{flag} {port}: not a port number")
    if args.dns_01 == "exec" and not args.dns_01_hook:
        raise UserError("--dns-01 exec needs --dns-01-hook PROGRAM")
    if args.dns_01 == "rfc2136" and not (
        args.rfc2136_server and args.rfc2136_key_name and os.environ.get(TSIG_SECRET_ENV)
    ):
        raise UserError(
            "--dns-01 rfc2136 needs --rfc2136-server, --rfc2136-key-name and the secret "
            f"in ${TSIG_SECRET_ENV}"
        )
    if args.dns_01 == "challtestsrv" and not args.challtestsrv:
        raise UserError("--dns-01 challtestsrv needs --challtestsrv URL")
    algorithms = typing.get_args(typing.get_type_hints(config.Dns01Rfc2136Challenge)["algorithm"])
    if args.dns_01 == "rfc2136" and args.rfc2136_algorithm not in algorithms:
        raise UserError(
            f"--rfc2136-algorithm {args.rfc2136_algorithm}: one of {', '.join(algorithms)}"
        )
    if args.webroot is not None and not args.webroot.is_dir():
        what = "is not a directory" if args.webroot.exists() else "does not exist"
        raise UserError(f"--webroot {args.webroot}: {what} (give the web server's document root)")
    if args.http_01_port is not None:
        return config.Http01StandaloneChallenge(
            type="http-01", address=args.http_01_address, port=args.http_01_port
        )
    if args.tls_alpn_01_port is not None:
        return config.TlsAlpn01Challenge(
            type="tls-alpn-01", address=args.tls_alpn_01_address, port=args.tls_alpn_01_port
        )
    if args.webroot is not None:
        return config.Http01WebrootChallenge(type="http-01-webroot", path=str(args.webroot))
    if args.dns_01 == "exec":
        return config.Dns01ExecChallenge(type="dns-01-exec", argv=args.dns_01_hook)
    if args.dns_01 == "rfc2136":
        return config.Dns01Rfc2136Challenge(
            type="dns-01-rfc2136",
            server=args.rfc2136_server,
            key_name=args.rfc2136_key_name,
            key_secret_env=TSIG_SECRET_ENV,
            algorithm=args.rfc2136_algorithm,
            # The server that took the update is the one asked whether it serves it.
            propagation_servers=[args.rfc2136_server],
        )
    if args.dns_01 == "route53":
        return config.Dns01Route53Challenge(
            type="dns-01-route53", hosted_zone_id=args.route53_zone_id
        )
    return config.Dns01ChallTestSrvChallenge(type="dns-01-challtestsrv", url=args.challtestsrv)


def acme_issue(args: argparse.Namespace) -> int:
    """Issue a certificate through ``--directory`` and write it to ``--out``, verified."""
    from cryptography.hazmat.primitives import serialization

    from secure_etl.acme.errors import AcmeError
    from secure_etl.pki.inspect import facts
    from secure_etl.pki.issuer import IssuedCertificate
    from secure_etl.pki.keys import generate_private_key, private_key_pem
    from secure_etl.pki.verify import VerificationError, verify_issued
    from secure_etl.security.files import write_atomic, write_secret

    _check_server_args(args)
    _check_domains(args.domain)
    if not math.isfinite(args.timeout) or args.timeout <= 0:
        raise UserError(f"--timeout {args.timeout:g}: give a positive number of seconds")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out}: is not a directory (the four files go into it)")
    from secure_etl.pki.solvers import build_solver

    # The solver first: a setting it cannot work with (route53 without credentials) is
    # refused before an account key is created.
    solver = build_solver(_challenge(args))
    try:
        account = _account_key(args)
    except UserError:
        solver.close()
        raise
    started = time.monotonic()
    key = generate_private_key(args.key_type)
    client = _client(args, account_key=account, deadline_s=args.timeout)
    try:
        client.register(args.email)
        chain = client.issue(args.domain, key, solver)
    except AcmeError as err:
        raise Refused(str(err)) from None  # the CA said no
    finally:
        solver.close()
        client.transport.close()
    issued = IssuedCertificate(chain.pem, b"", private_key_pem(key))
    try:
        certs = verify_issued(issued, identifiers=args.domain, use="server", issuer=args.directory)
    except VerificationError as err:
        raise Refused(str(err)) from None
    pem = [c.public_bytes(serialization.Encoding.PEM) for c in certs]
    out: Path = args.out
    write_secret(out / "privkey.pem", private_key_pem(key))
    write_atomic(out / "cert.pem", pem[0])
    write_atomic(out / "chain.pem", b"".join(pem[1:]))
    write_atomic(out / "fullchain.pem", b"".join(pem))
    info = facts(certs[0])
    print(
        f"issued {', '.join(args.domain)}: serial {info.serial}, not after "
        f"{info.not_after:%Y-%m-%d %H:%M} UTC, in {time.monotonic() - started:.2f} s -> {out}"
    )
    return EXIT_OK


def acme_revoke(args: argparse.Namespace) -> int:
    """Revoke a certificate, signed with the account key or the certificate's own."""
    from cryptography.hazmat.primitives import serialization

    from secure_etl.acme.errors import AcmeError
    from secure_etl.pki.inspect import facts, load_chain_file
    from secure_etl.pki.keys import load_private_key
    from secure_etl.security.files import InsecureSecretFile, read_secret

    _check_server_args(args)
    cert = load_chain_file(args.cert)[0]
    platform = _platform_to_audit(args)  # a bad config is refused before the CA is asked
    der = cert.public_bytes(serialization.Encoding.DER)
    # Signed with the certificate's own key, a revocation needs no account (key).
    try:
        cert_key = load_private_key(read_secret(args.key)) if args.key else None
    except (OSError, ValueError, InsecureSecretFile) as err:
        raise UserError(f"--key {args.key}: {getattr(err, 'strerror', None) or err}") from None
    client = _client(args, account_key=cert_key)
    try:
        if cert_key is not None:
            client.revoke(der, args.reason, cert_key=cert_key)
        else:
            client.find_account()
            client.revoke(der, args.reason)
    except AcmeError as err:
        raise Refused(str(err)) from None
    finally:
        client.transport.close()
    serial = facts(cert).serial
    print(f"revoked serial {serial}" + (f" ({args.reason})" if args.reason else ""))
    if platform is not None:
        _audit_revocation(args, platform, cert, serial)
    return EXIT_OK


def _platform_to_audit(args: argparse.Namespace):
    """The platform whose audit log records the revocation (None: no platform named)."""
    from secure_etl.config import CONFIG_ENV, load_config

    if args.config is None and not os.environ.get(CONFIG_ENV):
        return None
    return load_config(args.config)


def _audit_revocation(args: argparse.Namespace, platform, cert, serial: str) -> None:
    """Record a revocation in the platform's audit log."""
    import getpass

    from cryptography.hazmat.primitives import hashes

    from secure_etl.security.audit_trail import platform_audit_log

    log = platform_audit_log(platform)
    record = log.append(
        actor=f"cli:{getpass.getuser()}",
        action="certificate.revoked",
        asset=str(args.cert),
        inputs={"directory": args.directory, "signed_with": "cert key" if args.key else "account"},
        outputs={
            "serial": serial,
            "certificate": "sha256:" + cert.fingerprint(hashes.SHA256()).hex(),
            "reason": args.reason or "unspecified",
        },
    )
    log.checkpoint()
    print(f"audit: record {record['seq']} in {log.path}")
