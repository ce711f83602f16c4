"""Shared fixtures: a platform config written to a temporary directory, an instance, and
the servers (Pebble once per run; BIND9, PostgreSQL, OpenBao per test). Tests that use a
server must be marked ``integration``; the hooks below fail those that are not."""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from secure_etl.config import PlatformConfig, load_config
from secure_etl_tests.servers import Pebble

# A test that requests one of these fixtures, or starts one of these programs, needs a
# server (or a Debian package) and must be marked `integration` (README, Tests).
SERVER_FIXTURES = frozenset(
    {"acme_ca", "acme_ca_factory", "acme_platform", "shared_pebble", "bind9", "postgres_tls"}
    | {"openbao"}
)
SERVER_PROGRAMS = frozenset(
    {"pebble", "pebble-challtestsrv", "named", "initdb", "pg_ctl", "postgres", "bao"}
    | {"mariadbd", "mysqld", "mariadb-install-db", "mysql_install_db", "chromium", "promtool"}
    | {"dagster-webserver", "dagster-daemon", "moto.server", "gcp_storage_emulator"}
    | {"tinyproxy", "rabbitmq-server", "celery", "unshare"}
)
_WRAPPERS = frozenset({"runuser", "sudo", "env"})
_UNMARKED = "{test} {what} but is not marked integration: add @pytest.mark.integration (or a "
_UNMARKED += "module-level `pytestmark = pytest.mark.integration`); see README, Tests"


def _server_program(args) -> str | None:
    """The server ``args`` would start (``python -m moto.server`` counts), if any."""
    argv = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
    argv = [os.fsdecode(a) for a in argv]
    if argv and os.path.basename(argv[0]) in _WRAPPERS and "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    if not argv:
        return None
    program = os.path.basename(argv[0])
    if program.startswith("python") and "-m" in argv[1:-1]:
        program = argv[argv.index("-m", 1) + 1]
    return program if program in SERVER_PROGRAMS else None


@contextlib.contextmanager
def _servers_refused(item: pytest.Item) -> Iterator[None]:
    """While ``item`` (not marked integration) sets up and runs, starting a server fails it."""
    if item.get_closest_marker("integration"):
        yield
        return
    original = subprocess.Popen.__init__

    def guarded(self, args, *more, **options):
        program = _server_program(args)
        if program:
            self._child_created = False  # what Popen.__del__ looks at
            pytest.fail(_UNMARKED.format(test=item.nodeid, what=f"starts {program}"), False)
        original(self, args, *more, **options)

    subprocess.Popen.__init__ = guarded
    try:
        yield
    finally:
        subprocess.Popen.__init__ = original


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    servers = SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if servers and not item.get_closest_marker("integration"):
        what = f"uses {', '.join(sorted(servers))}"
        pytest.fail(_UNMARKED.format(test=item.nodeid, what=what), False)
    with _servers_refused(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    with _servers_refused(item):
        return (yield)


BASE_CONFIG: dict = {
    "issuers": {"test-ca": {"type": "internal_ca", "lifetime_days": 30}},
    "certificates": {
        "db-server": {
            "issuer": "test-ca",
            "use": "server",
            "identifiers": ["localhost", "127.0.0.1"],
        },
        "etl-client": {
            "issuer": "test-ca",
            "use": "client",
            "identifiers": ["etl-client.test"],
        },
    },
    "keys": {"pseudo-1": {"file": "keys/pseudo-1.key", "create": True}},
    "pipelines": {
        "customers": {
            "source": {"type": "demo", "rows_per_partition": 200, "seed": 3, "bad_row_rate": 0.02},
            "client_certificate": "etl-client",
            "key_column": "customer_id",
            "transforms": [
                {
                    "type": "pseudonymise",
                    "columns": ["full_name", "email", "phone"],
                    "key": "pseudo-1",
                },
            ],
            "destination": {"type": "duckdb", "path": "warehouse.duckdb", "table": "customers"},
            "partitions": {"start": "2026-01-01-00:00"},
            # A failing step must fail the test now, not after minutes of retries.
            "retry": {"max_retries": 1, "delay_s": 0.5},
        }
    },
}


def module_platform(tmp_path_factory) -> PlatformConfig:
    """The test platform (its internal CA issues db-server and etl-client) in directories
    of its own, for a module-scoped fixture whose tests share it with one server."""
    data = {**copy.deepcopy(BASE_CONFIG), "state_dir": str(tmp_path_factory.mktemp("state"))}
    path = tmp_path_factory.mktemp("config") / "platform.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.MonkeyPatch.context() as env:
        env.delenv("SECURE_ETL_STATE_DIR", raising=False)
        return load_config(path)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a config (the base one, or ``data``) with its state under ``tmp_path``."""

    def write(data: dict | None = None, name: str = "platform.yaml") -> Path:
        data = copy.deepcopy(BASE_CONFIG if data is None else data)
        data.setdefault("state_dir", str(tmp_path / "state"))
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def platform(write_config, monkeypatch) -> PlatformConfig:
    monkeypatch.delenv("SECURE_ETL_STATE_DIR", raising=False)
    return load_config(write_config())


@pytest.fixture
def instance():
    from dagster import instance_for_test

    with instance_for_test() as instance:
        yield instance


@pytest.fixture
def acme_ca_factory(tmp_path):
    """Start a Pebble of the test's own with options (``env``, ``eab_keys``,
    ``dns_server``); stopped after the test."""
    started = []

    def start(env: dict | None = None, eab_keys: dict | None = None, dns_server=None) -> Pebble:
        pebble = Pebble(
            tmp_path / f"pebble{len(started)}",
            env=env or {},
            eab_keys=eab_keys,
            dns_server=dns_server,
        )
        started.append(pebble)
        return pebble.start()

    yield start
    for pebble in started:
        pebble.stop()


class SharedPebble(Pebble):
    """The run's one default Pebble: stopping or restarting it would change what every
    later test sees, so both are refused."""

    def stop(self) -> None:
        raise AssertionError(
            "acme_ca is shared by the whole run: mark the test @pytest.mark.own_pebble "
            "to stop or restart a Pebble of its own"
        )

    restart = stop

    def shut_down(self) -> None:
        Pebble.stop(self)

    def running(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for p in self._procs)


@pytest.fixture(scope="session")
def shared_pebble(tmp_path_factory):
    """One Pebble with the default options for the whole run. Tests stay independent:
    each makes its own account key and orders, and authorizations are never reused."""
    pebble = SharedPebble(tmp_path_factory.mktemp("pebble-shared")).start()
    yield pebble
    pebble.shut_down()


@pytest.fixture
def acme_ca(request, acme_ca_factory):
    """A running Pebble with nonce rejection off and validation without sleeps: the run's
    shared one, or with ``@pytest.mark.own_pebble`` one of the test's own (to stop or
    restart it)."""
    if request.node.get_closest_marker("own_pebble"):
        yield acme_ca_factory()
        return
    pebble = request.getfixturevalue("shared_pebble")
    assert pebble.running(), f"the shared Pebble has exited; log:\n{pebble.log()[-2000:]}"
    yield pebble
    # The next test must find Pebble's challenge ports as free as a fresh Pebble's.
    for name in ("http", "tls"):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", pebble.ports[name]))
            except OSError:
                pytest.fail(f"the test left a listener on the shared Pebble's {name} port")


@pytest.fixture
def acme_platform(acme_ca, write_config, tmp_path):
    """A platform whose certificates come from the running Pebble through http-01."""
    from secure_etl_tests.servers import Pebble

    assert isinstance(acme_ca, Pebble)
    roots = tmp_path / "pebble-roots.pem"
    roots.write_bytes(acme_ca.issuing_roots())
    data = copy.deepcopy(BASE_CONFIG)
    data["issuers"]["pebble"] = {
        "type": "acme",
        "directory_url": acme_ca.directory_url,
        "server_ca_bundle": str(acme_ca.ca_bundle),
        "trust_bundle": str(roots),
        "email": "ops@example.com",
        "challenge": {"type": "http-01", "address": "127.0.0.1", "port": acme_ca.http_port},
    }
    data["certificates"]["web"] = {
        "issuer": "pebble",
        "use": "server",
        "identifiers": ["web.example.com", "127.0.0.1"],
    }
    return load_config(write_config(data, "acme.yaml"))


@pytest.fixture
def bind9(tmp_path):
    """A real BIND9 authoritative for example.test, taking TSIG-signed updates."""
    from secure_etl_tests.servers import Bind9

    server = Bind9(tmp_path / "bind9").start()
    yield server
    server.stop()


@pytest.fixture
def postgres_tls(platform, tmp_path):
    """PostgreSQL whose server certificate (db-server) and client CA come from the
    platform's internal CA; the etl-client certificate authenticates as user etl."""
    from secure_etl_tests.servers import postgres_for_platform

    server = postgres_for_platform(platform, tmp_path / "pg")
    # `cert` authentication maps the client certificate's CN to the user name.
    server.psql('CREATE ROLE "etl-client.test" LOGIN SUPERUSER')
    yield server
    server.stop()


@pytest.fixture
def openbao(tmp_path):
    """A real OpenBao (Vault API) dev server with the transit engine mounted."""
    from secure_etl_tests.servers import OpenBao

    server = OpenBao(tmp_path / "openbao").start()
    yield server
    server.stop()
