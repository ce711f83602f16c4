# ruff: noqa: S608 (the SQL is the test's own, with its own values)
"""The code location on a distributed engine: steps on two Celery workers (dagster-celery,
a real RabbitMQ) that share nothing on disk, only network services.

Three "machines" on this host, each with its own working directory, HOME, DAGSTER_HOME,
state directory and copy of the platform config: the orchestrator (the daemon and the
runs it launches) and two workers. What they share is on the network: RabbitMQ, one
PostgreSQL (the Dagster instance, the certificate store, the audit trail, the source and
the warehouse, all over verify-full TLS with client certificates), the stage files in an
S3 bucket (moto's server: emulated) and the KMS (OpenBao's transit engine).

Proved here: a backfill spread over both workers loads every row once (reconciled
against the source, loads never overlapping in the warehouse's pool); a worker killed in
the middle of a step has its step finished by the other; a renewal on one worker is used
by a step on the other; the audit chain verifies with records from both workers; and no
state directory is needed between steps (each is deleted between the tests).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import boto3
import psycopg
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_etl.pki.internal_ca import InternalCA
from secure_etl.pki.keys import generate_private_key
from secure_etl.security.audit import key_pin
from secure_etl_tests.conftest import BASE_CONFIG
from secure_etl_tests.servers import OpenBao, Postgres, RabbitMQ, start_python_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOURS = ["2026-03-01-10:00", "2026-03-01-11:00", "2026-03-01-12:00", "2026-03-01-13:00"]
ROWS_PER_HOUR = 400
JOB = "events_etl"
USER = "etl-client.test"


@dataclass
class Machine:
    """One host: its own directories and environment; the network services' addresses
    and credentials in the environment, as a deployment would give them."""

    name: str
    root: Path
    env: dict[str, str]
    worker: subprocess.Popen | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def run(self, *argv: str, timeout: float = 300, check: bool = True) -> str:
        done = subprocess.run(
            list(argv),
            cwd=self.root / "work",
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{self.name}: {' '.join(argv[:3])} exited {done.returncode}\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
            )
        return done.stdout

    def spawn(self, what: str, *argv: str) -> subprocess.Popen:
        log = self.root / f"{what}-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            return subprocess.Popen(
                list(argv),
                cwd=self.root / "work",
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the worker and its pool: stopped together
            )

    def start_worker(self) -> None:
        # Its own host name (a UTS namespace), as a separate host would have: the audit
        # records and Celery's node name say which machine did what.
        self.worker = self.spawn(
            "worker",
            "unshare",
            "--uts",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            f"host-{self.name}",
            str(BIN / "celery"),
            "-A",
            "secure_etl.defs.celery_app",
            "worker",
            "-Q",
            "dagster",
            "--concurrency",
            "1",
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"{self.name}@%h",
            "--loglevel",
            "INFO",
        )
        _wait(lambda: "ready." in self.logs[-1].read_text(errors="replace"), 90, self.logs[-1])

    def kill_worker(self) -> None:
        assert self.worker is not None
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait(30)
        self.worker = None

    def stop_worker(self) -> None:
        if self.worker is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.worker.pid, signal.SIGTERM)
        try:
            self.worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait(10)
        self.worker = None


def _wait(predicate, timeout_s: float, log: Path | None = None, what: str = "ready"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    raise AssertionError(f"not {what} within {timeout_s} s\n{tail}")


@dataclass
class Services:
    """The network services every machine reaches, and what a machine is given to reach
    them (addresses and secrets in the environment, trust anchors as files)."""

    postgres: Postgres
    rabbitmq: RabbitMQ
    openbao: OpenBao
    s3_url: str
    bucket: str
    operator_ca: Path  # the deployment's own CA: PostgreSQL's server certificate, bootstrap
    services_cert: Path  # the deployment's client certificate for the shared services
    services_key: Path
    audit_key: Path  # the checkpoint signing key every machine is given
    audit_pin: str
    hmac_secret: str = field(default_factory=lambda: secrets.token_hex(32))

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "AKIAEMULATED",
            "AWS_SECRET_ACCESS_KEY": "emulated-secret",
            "AWS_ENDPOINT_URL": self.s3_url,
            "AWS_REGION": "us-east-1",
            "VAULT_TOKEN": self.openbao.token,
            "SECURE_ETL_TEST_HMAC": self.hmac_secret,
            "SECURE_ETL_CELERY_BROKER": self.rabbitmq.url,
            "SECURE_ETL_CELERY_BACKEND": "rpc://",
        }


def _sql(services: Services, sql: str, dbname: str = "postgres") -> str:
    return services.postgres.psql(sql, dbname=dbname).strip()


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    work = tmp_path_factory.mktemp("services")
    operator = InternalCA("operator", work / "operator-ca")
    server = operator.issue(["localhost", "127.0.0.1"], "server", generate_private_key("ec256"))
    client = operator.issue(["platform-services"], "client", generate_private_key("ec256"))
    signing = Ed25519PrivateKey.generate()
    for name, data in {
        "audit-signing.key": signing.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        "server.pem": server.fullchain_pem,
        "server.key": server.key_pem,
        "services.pem": client.fullchain_pem,
        "services.key": client.key_pem,
    }.items():
        (work / name).write_bytes(data)
        os.chmod(work / name, 0o600)
    postgres = Postgres(work / "pg", work / "server.pem", work / "server.key", operator.root_path)
    started = []
    try:
        started.append(postgres.start())
        postgres.psql('CREATE ROLE "platform-services" LOGIN SUPERUSER')
        postgres.psql(f'CREATE ROLE "{USER}" LOGIN')
        for db in ("dagster", "platform"):
            postgres.psql(f'CREATE DATABASE {db} OWNER "platform-services"')
        postgres.psql(f'CREATE DATABASE source OWNER "{USER}"')
        postgres.psql(f'CREATE DATABASE warehouse OWNER "{USER}"')
        rabbitmq = RabbitMQ(work / "rabbitmq").start()
        started.append(rabbitmq)
        openbao = OpenBao(work / "openbao").start()
        started.append(openbao)
        openbao.request("POST", "transit/keys/etl")
        moto, s3_url = start_python_server(
            ["moto.server", "-H", "127.0.0.1", "-p"], "/moto-api/", work / "moto.log"
        )
        bucket = f"etl-{uuid.uuid4().hex[:12]}"
        boto3.client(
            "s3",
            endpoint_url=s3_url,
            region_name="us-east-1",
            aws_access_key_id="AKIAEMULATED",
            aws_secret_access_key="emulated-secret",  # noqa: S106 (the emulator's)
        ).create_bucket(Bucket=bucket)
        yield Services(
            postgres,
            rabbitmq,
            openbao,
            s3_url,
            bucket,
            operator.root_path,
            work / "services.pem",
            work / "services.key",
            work / "audit-signing.key",
            key_pin(signing.public_key()),
        )
        moto.terminate()
        moto.wait(10)
    finally:
        for server in reversed(started):
            server.stop()


def _platform_config(services: Services) -> dict:
    """One config for every machine (each has its own copy; relative files beside it)."""
    data = copy.deepcopy(BASE_CONFIG)
    data["certificates"] = {"etl-client": data["certificates"]["etl-client"]}
    connection = {
        "host": "localhost",
        "port": services.postgres.port,
        "user": USER,
        "ca_bundle": "operator-ca.pem",
    }
    data["keys"] = {"pseudo-1": {"env": "SECURE_ETL_TEST_HMAC"}}
    data["kms"] = {
        "type": "vault_transit",
        "address": services.openbao.address,
        "key": "etl",
        "token_env": "VAULT_TOKEN",
        "ca_bundle": "openbao-ca.pem",
    }
    data["storage"] = {"url": f"s3://{services.bucket}/stages"}
    data["executor"] = {"type": "celery"}
    shared = {
        "host": "localhost",
        "port": services.postgres.port,
        "dbname": "platform",
        "user": "platform-services",
        "ca_bundle": "operator-ca.pem",
        "client_certificate": "services.pem",
        "client_key": "services.key",
    }
    data["certificate_store"] = {"backend": "postgres", "postgres": dict(shared)}
    data["audit"] = {
        "backend": "postgres",
        "postgres": dict(shared),
        "public_key": services.audit_pin,
        "checkpoint_every": 10,
    }
    data["pipelines"] = {
        "events": {
            "source": {
                **connection,
                "type": "postgres",
                "dbname": "source",
                "table": "events",
                "time_column": "created_at",
                "chunk_rows": 100,
            },
            "client_certificate": "etl-client",
            "key_column": "id",
            "transforms": [{"type": "pseudonymise", "columns": ["email"], "key": "pseudo-1"}],
            "destination": {
                **connection,
                "type": "postgres",
                "dbname": "warehouse",
                "table": "events",
            },
            "partitions": {"start": HOURS[0]},
            "retry": {"max_retries": 1, "delay_s": 1},
        }
    }
    return data


def _machine(name: str, root: Path, services: Services, config: dict) -> Machine:
    for folder in ("home", "work", "dagster_home", "state"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    work = root / "work"
    config = copy.deepcopy(config)
    # The machine's copy of the deployment's signing key (outside its state directory).
    config["audit"]["signing_key"] = str(work / "audit-signing.key")
    (work / "platform.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copyfile(services.operator_ca, work / "operator-ca.pem")
    shutil.copyfile(services.openbao.ca_bundle, work / "openbao-ca.pem")
    for source, target in (
        (services.services_cert, "services.pem"),
        (services.services_key, "services.key"),
        (services.audit_key, "audit-signing.key"),
    ):
        shutil.copyfile(source, work / target)
        os.chmod(work / target, 0o600)
    shutil.copyfile(ROOT / "deploy" / "dagster.yaml", root / "dagster_home" / "dagster.yaml")
    instance_url = (
        f"postgresql+psycopg2://{quote('platform-services')}@localhost:{services.postgres.port}"
        f"/dagster?sslmode=verify-full&sslrootcert={work / 'operator-ca.pem'}"
        f"&sslcert={work / 'services.pem'}&sslkey={work / 'services.key'}"
    )
    env = {
        "PATH": os.environ["PATH"],
        "LANG": "C.UTF-8",
        "HOME": str(root / "home"),
        "TMPDIR": str(root / "home"),
        "PYTHONPATH": str(ROOT),
        "DAGSTER_HOME": str(root / "dagster_home"),
        "DAGSTER_POSTGRES_URL": instance_url,
        "SECURE_ETL_CONFIG": str(work / "platform.yaml"),
        "SECURE_ETL_STATE_DIR": str(root / "state"),
        **services.env(),
    }
    return Machine(name, root, env)


@dataclass
class Cluster:
    services: Services
    orchestrator: Machine
    workers: dict[str, Machine]

    def launch(self, partition: str) -> Launched:
        """A run of the pipeline's job for ``partition``, from the orchestrator (its steps
        on the workers), tagged so that it can be found among concurrent ones."""
        mark = uuid.uuid4().hex
        tags = {"dagster/partition": partition, "secure_etl_test/launch": mark}
        argv = [str(BIN / "dagster"), "job", "execute", "-m", "secure_etl.definitions", "-j", JOB]
        process = self.orchestrator.spawn("run", *argv, "--tags", json.dumps(tags))
        return Launched(process, self.orchestrator.logs[-1], mark)


@dataclass
class Launched:
    process: subprocess.Popen
    log: Path
    mark: str

    def run(self, instance):
        from dagster import RunsFilter

        runs = instance.get_runs(filters=RunsFilter(tags={"secure_etl_test/launch": self.mark}))
        return runs[0] if runs else None


@pytest.fixture(scope="module")
def cluster(services, tmp_path_factory):
    if os.geteuid() != 0:  # a host name of its own per worker: unshare --uts
        message = "the workers' own host names need root (unshare --uts)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    config = _platform_config(services)
    root = tmp_path_factory.mktemp("machines")
    orchestrator = _machine("orchestrator", root / "orchestrator", services, config)
    workers = {name: _machine(name, root / name, services, config) for name in ("a", "b")}
    _seed_source(services)
    # First issuance, from the orchestrator, into the shared store.
    orchestrator.run(str(BIN / "secure-etl"), "certs", "renew", "--all")
    _trust_the_platform_ca(services, orchestrator)
    # The instance's tables, created once, as a deployment does before starting services
    # (a daemon and a CLI creating them at the same moment collide).
    orchestrator.run(str(BIN / "dagster"), "instance", "migrate")
    for worker in workers.values():
        worker.start_worker()
    try:
        yield Cluster(services, orchestrator, workers)
    finally:
        for worker in workers.values():
            worker.stop_worker()


def _seed_source(services: Services) -> None:
    _sql(
        services,
        "CREATE TABLE events (id bigint PRIMARY KEY, email text NOT NULL, "
        "amount numeric(10,2) NOT NULL, created_at timestamptz NOT NULL);"
        f"INSERT INTO events SELECT g, 'user' || g || '@example.com', g * 0.25, "
        f"timestamptz '2026-03-01 10:00+00' + g * interval '{3600 / ROWS_PER_HOUR} seconds' "
        f"FROM generate_series(0, {ROWS_PER_HOUR * len(HOURS) - 1}) g;"
        f'ALTER TABLE events OWNER TO "{USER}"',
        dbname="source",
    )


def _trust_the_platform_ca(services: Services, machine: Machine) -> None:
    """PostgreSQL accepts client certificates from the operator's CA and, from now on,
    the platform's internal CA (whose root the first issuance created)."""
    roots = machine.run(
        sys.executable,
        "-c",
        "from secure_etl.config import load_config\n"
        "from secure_etl.pki.renewal import trust_bundle\n"
        "print(trust_bundle(load_config(), 'etl-client').read_text(), end='')",
    )
    assert "BEGIN CERTIFICATE" in roots
    bundle = services.postgres.workdir / "tls" / "client-ca.crt"
    bundle.write_text(services.operator_ca.read_text() + roots)
    if os.geteuid() == 0:
        shutil.chown(bundle, "postgres", "postgres")
    _sql(services, "SELECT pg_reload_conf()")


@contextlib.contextmanager
def _instance(machine: Machine):
    """The Dagster instance as the machine sees it (the shared PostgreSQL)."""
    from dagster import DagsterInstance

    saved = {k: os.environ.get(k) for k in ("DAGSTER_HOME", "DAGSTER_POSTGRES_URL")}
    os.environ.update({k: machine.env[k] for k in saved})
    try:
        with DagsterInstance.get() as instance:
            yield instance
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _step_workers(instance, run_id: str) -> dict[str, list[str]]:
    """step key -> the Celery workers (node names) that started it, in order."""
    started: dict[str, list[str]] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or event.event_type_value != "ENGINE_EVENT" or not event.step_key:
            continue
        metadata = event.engine_event_data.metadata or {}
        worker = metadata.get("Celery worker")
        if worker is not None:
            started.setdefault(event.step_key, []).append(worker.value.split("@")[0])
    return started


def _finished(cluster: Cluster, launched: Launched, timeout_s: float = 400) -> str:
    """Waits for a run started by ``launch``; returns its run id once it succeeded."""
    try:
        launched.process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        launched.process.kill()
    log = launched.log.read_text(errors="replace")
    assert launched.process.returncode == 0, log[-6000:]
    with _instance(cluster.orchestrator) as instance:
        run = launched.run(instance)
        assert run is not None and run.is_success, log[-6000:]
        return run.run_id


def _reconciled(services: Services, hours: list[str]) -> None:
    """Every source row of each hour is in the warehouse exactly once."""
    for hour in hours:
        start = hour.replace("-", " ", 3).replace(" ", "-", 2)  # 2026-03-01 10:00
        source = _sql(
            services,
            "SELECT count(*), coalesce(md5(string_agg(id::text, ',' ORDER BY id)), '') "
            f"FROM events WHERE created_at >= timestamptz '{start}+00' "
            f"AND created_at < timestamptz '{start}+00' + interval '1 hour'",
            dbname="source",
        )
        loaded = _sql(
            services,
            "SELECT count(*), coalesce(md5(string_agg(id::text, ',' ORDER BY id)), '') "
            f"FROM events WHERE _partition = '{hour}'",
            dbname="warehouse",
        )
        assert loaded == source, (hour, loaded, source)
        assert source.startswith(f"{ROWS_PER_HOUR}|")
    duplicates = _sql(
        services, "SELECT count(*) - count(DISTINCT id) FROM events", dbname="warehouse"
    )
    assert duplicates == "0"


def _wipe_state(cluster: Cluster) -> None:
    """Nothing a worker keeps on disk is needed by the next step: their state goes."""
    for machine in cluster.workers.values():
        shutil.rmtree(machine.state_dir)
        machine.state_dir.mkdir()


def test_a_backfill_spreads_over_both_workers_and_loads_every_row_once(cluster):
    # A backfill as users start one: its runs queue up, the orchestrator's daemon launches
    # them (at most 4 at once), and their steps go to the workers.
    orchestrator = cluster.orchestrator
    daemon = orchestrator.spawn(
        "daemon", str(BIN / "dagster-daemon"), "run", "-m", "secure_etl.definitions"
    )
    daemon_log = orchestrator.logs[-1]
    mark = uuid.uuid4().hex
    try:
        orchestrator.run(
            str(BIN / "dagster"),
            "job",
            "backfill",
            "-m",
            "secure_etl.definitions",
            "-j",
            JOB,
            "--partitions",
            ",".join(HOURS[:3]),
            "--tags",
            json.dumps({"secure_etl_test/launch": mark}),
            "--noprompt",
        )

        def backfilled():
            from dagster import RunsFilter

            with _instance(orchestrator) as instance:
                runs = instance.get_runs(filters=RunsFilter(tags={"secure_etl_test/launch": mark}))
                return runs if len(runs) == 3 and all(r.is_finished for r in runs) else None

        runs = _wait(backfilled, 600, daemon_log, "backfilled")
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
    assert all(r.is_success for r in runs), [(r.run_id, r.status) for r in runs]
    assert sorted(r.tags["dagster/partition"] for r in runs) == HOURS[:3]
    run_ids = [r.run_id for r in runs]

    _reconciled(cluster.services, HOURS[:3])
    with _instance(cluster.orchestrator) as instance:
        steps = [_step_workers(instance, run_id) for run_id in run_ids]
        loads = [_step_window(instance, run_id, "loaded") for run_id in run_ids]
    by_worker = {w for run in steps for workers in run.values() for w in workers}
    assert by_worker == {"a", "b"}, steps
    # The warehouse's pool (one load at a time): no two loads overlapped.
    loads.sort()
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(loads)), loads
    _wipe_state(cluster)


def _step_window(instance, run_id: str, stage: str) -> tuple[float, float]:
    """When the step of ``stage`` started and ended (the last attempt's)."""
    start = end = None
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or not (event.step_key or "").startswith(stage):
            continue
        if event.event_type_value == "STEP_START":
            start = record.timestamp
        elif event.event_type_value == "STEP_SUCCESS":
            end = record.timestamp
    assert start is not None and end is not None, (run_id, stage)
    return start, end


def _warehouse_lock(services: Services) -> psycopg.Connection:
    """A transaction that holds the warehouse table: a load waits for it."""
    connection = psycopg.connect(
        host=str(services.postgres.socket_dir),
        port=services.postgres.port,
        user="postgres",
        dbname="warehouse",
    )
    connection.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
    return connection


def test_a_worker_killed_in_the_middle_of_a_step_has_it_finished_by_the_other(cluster):
    hour = HOURS[3]
    lock = _warehouse_lock(cluster.services)
    try:
        run = cluster.launch(hour)

        def loading_worker() -> str | None:
            with _instance(cluster.orchestrator) as instance:
                started = run.run(instance)
                if started is None:
                    return None
                for step, workers in _step_workers(instance, started.run_id).items():
                    if step.startswith("loaded"):
                        return workers[0]
            return None

        victim = _wait(loading_worker, 300, run.log, "loading")
        time.sleep(1)  # inside the step: waiting for the table
        cluster.workers[victim].kill_worker()
    finally:
        lock.close()
    run_id = _finished(cluster, run)

    [survivor] = set(cluster.workers) - {victim}
    with _instance(cluster.orchestrator) as instance:
        loaded = next(
            w for s, w in _step_workers(instance, run_id).items() if s.startswith("loaded")
        )
    assert loaded == [victim, survivor]
    _reconciled(cluster.services, [hour])
    cluster.workers[victim].start_worker()
    _wipe_state(cluster)


def test_a_renewal_on_one_worker_is_used_by_a_step_on_the_other(cluster):
    before = _current_serial(cluster.orchestrator)
    force = cluster.orchestrator.root / "work" / "force.yaml"
    force.write_text(
        yaml.safe_dump({"ops": {"certificates__etl_client": {"config": {"force": True}}}})
    )
    renewal = cluster.orchestrator.spawn(
        "renewal",
        str(BIN / "dagster"),
        "job",
        "execute",
        "-m",
        "secure_etl.definitions",
        "-j",
        "certificate_renewal",
        "-c",
        str(force),
    )
    renewal.wait(300)
    assert renewal.returncode == 0, cluster.orchestrator.logs[-1].read_text()[-4000:]
    renewed = _current_serial(cluster.orchestrator)
    assert renewed != before
    with _instance(cluster.orchestrator) as instance:
        [run] = instance.get_runs(limit=1)
        assert run.job_name == "certificate_renewal" and run.is_success
        # The certificate's step (its checks may be steps of their own, on either worker).
        [renewed_on] = _step_workers(instance, run.run_id)["certificates__etl_client"]
    [other] = set(cluster.workers) - {renewed_on}
    cluster.workers[renewed_on].stop_worker()  # the next steps can only go to the other
    try:
        run_id = _finished(cluster, cluster.launch(HOURS[0]))
    finally:
        cluster.workers[renewed_on].start_worker()
    with _instance(cluster.orchestrator) as instance:
        assert {w for ws in _step_workers(instance, run_id).values() for w in ws} == {other}
    # The warehouse saw the renewed certificate: its serial is in the load's audit record.
    records = _audit_records(cluster.services)
    [load] = [r for r in records if r["run_id"] == run_id and r["action"] == "load"]
    assert load["inputs"]["client_certificate"] == renewed
    assert load["host"] == f"host-{other}"
    _reconciled(cluster.services, [HOURS[0]])


def test_the_audit_chain_verifies_with_records_from_both_workers(cluster):
    out = cluster.orchestrator.run(str(BIN / "secure-etl"), "audit", "verify")
    assert "ok" in out.lower()
    hosts = {r["host"] for r in _audit_records(cluster.services) if r["action"] == "load"}
    assert hosts == {"host-a", "host-b"}


def _current_serial(machine: Machine) -> str:
    listed = machine.run(str(BIN / "secure-etl"), "certs", "list")
    [line] = [line for line in listed.splitlines() if line.startswith("etl-client ")]
    return re.search(r"serial ([0-9a-f]+)", line).group(1)


def _audit_records(services: Services) -> list[dict]:
    rows = _sql(services, "SELECT record FROM audit_log ORDER BY seq", dbname="platform")
    return [json.loads(row) for row in rows.splitlines()]
