"""The platform left running: `python benchmarks/soak.py --minutes N`.

Real parts only: the production instance (deploy/dagster.yaml on PostgreSQL), the
`dagster-daemon` and `dagster-webserver` started from workspace.yaml with schedules and
sensors on; a source and a destination PostgreSQL (TLS, client-certificate auth) whose
server certificates are platform certificates of minutes, deployed by copying them in
and `postgres_reload`; the demo HTTPS API (client certificates required) serving the
store's current certificate (it re-reads the `current` link at each connection); the
`etl-client` certificate of minutes. A writer inserts rows into the source (timestamps
now); both pipelines have a partition a minute. Faults at set times: the daemon SIGKILLed
and restarted, the source PostgreSQL restarted, the internal CA's signing key offline
(moved away) for a while. A prober handshakes with every endpoint every few seconds.

The daemon drives everything; this script only sets up, writes rows, injects faults and
watches. It prints a table, then one JSON line."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import yaml
from cryptography import x509

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from secure_etl.config import load_config  # noqa: E402
from secure_etl.etl.demo_api import DemoApiServer, DemoApiSettings  # noqa: E402
from secure_etl.pki.renewal import certificate_store, ensure_certificate, trust_bundle  # noqa: E402
from secure_etl_tests.servers import Postgres, free_port  # noqa: E402

CLIENT_CN = "etl-client.test"
API_ROWS = 20  # rows the demo API answers per partition


@dataclass
class Settings:
    minutes: float
    lifetime_minutes: float
    fraction_left: float
    rows_per_s: float
    ca_outage_s: float
    workdir: Path
    # Checks this many seconds apart (a sensor) instead of once a minute (cron): for
    # certificates of a minute or two.
    check_interval_s: int | None = None
    # renewal.retries and .retry_delay_s of every certificate: 5 retries at 10 s make
    # attempts 10, 30, 60, 100 and 150 s after the first (an outage of two minutes).
    retry_delay_s: float = 10
    retries: int = 5


@dataclass
class Watch:
    """What the script saw (the prober, the writer, the faults)."""

    min_left_s: dict[str, float] = field(default_factory=dict)
    serials: dict[str, set] = field(default_factory=dict)
    probe_errors: dict[str, int] = field(default_factory=dict)
    written: int = 0
    writer_errors: int = 0
    faults: list[dict] = field(default_factory=list)
    daemon_killed_at: list[float] = field(default_factory=list)  # epoch seconds


# --- the platform's config ----------------------------------------------------------------


def _config(s: Settings, src: int | None, dst: int | None, api: int, start: str) -> dict:
    state = s.workdir / "state"
    store = state / "certs"
    renewal = {
        "fraction_left": s.fraction_left,
        "retries": s.retries,
        "retry_delay_s": s.retry_delay_s,
    }

    def db(name: str, port: int | None, pg_dir: Path) -> dict:
        cert = {
            "issuer": "soak-ca",
            "use": "server",
            "identifiers": ["localhost", "127.0.0.1"],
            "keep_versions": 100,
            "renewal": renewal,
        }
        if port:
            tls = pg_dir / "tls"
            install = ["install", "-m", "600", "-o", "postgres", "-g", "postgres"]
            cert["deploy"] = [
                {
                    "type": "command",
                    "argv": [
                        *install,
                        f"{store}/{name}/current/fullchain.pem",
                        f"{tls}/server.crt",
                    ],
                },
                {
                    "type": "command",
                    "argv": [*install, f"{store}/{name}/current/privkey.pem", f"{tls}/server.key"],
                },
                {
                    "type": "postgres_reload",
                    "host": "localhost",
                    "port": port,
                    "user": CLIENT_CN,
                    "client_certificate": "etl-client",
                },
            ]
            cert["endpoints"] = [{"host": "localhost", "port": port, "protocol": "postgres"}]
        return cert

    connection = {"host": "localhost", "user": CLIENT_CN}
    retry = {"max_retries": 3, "delay_s": 5}
    partitions = {"type": "cron", "cron": "* * * * *", "start": start}
    destination = {"type": "postgres", **connection, "port": dst or 1, "dbname": "warehouse"}
    checks = (
        {"certificate_check_interval_s": s.check_interval_s}
        if s.check_interval_s
        else {"certificate_check_schedule": "* * * * *"}
    )
    return {
        "state_dir": str(state),
        **checks,
        # A partition a minute: each run's steps in its own process (no subprocess per
        # step loading the code location again).
        "executor": {"type": "in_process"},
        "renewal_sensor_interval_s": 5,
        "issuers": {"soak-ca": {"type": "internal_ca", "lifetime_minutes": s.lifetime_minutes}},
        "certificates": {
            "src-db": db("src-db", src, s.workdir / "src"),
            "dst-db": db("dst-db", dst, s.workdir / "dst"),
            "api-server": {
                "issuer": "soak-ca",
                "use": "server",
                "identifiers": ["127.0.0.1"],
                "keep_versions": 100,
                "renewal": renewal,
                "endpoints": [{"host": "127.0.0.1", "port": api}],
            },
            "etl-client": {
                "issuer": "soak-ca",
                "use": "client",
                "identifiers": [CLIENT_CN],
                "keep_versions": 100,
                "renewal": renewal,
            },
        },
        "keys": {"pseudo-1": {"file": "keys/pseudo-1.key", "create": True}},
        "pipelines": {
            "orders": {
                "source": {
                    "type": "postgres",
                    **connection,
                    "port": src or 1,
                    "dbname": "postgres",
                    "table": "orders",
                    "time_column": "created_at",
                },
                "client_certificate": "etl-client",
                "key_column": "id",
                "transforms": [{"type": "pseudonymise", "columns": ["email"], "key": "pseudo-1"}],
                "destination": {**destination, "table": "orders"},
                "partitions": partitions,
                "retry": retry,
            },
            "api": {
                "source": {
                    "type": "https_api",
                    "url": f"https://127.0.0.1:{api}/customers",
                    "start_param": "start",
                    "end_param": "end",
                },
                "client_certificate": "etl-client",
                "key_column": "customer_id",
                "transforms": [
                    {
                        "type": "pseudonymise",
                        "columns": ["full_name", "email", "phone"],
                        "key": "pseudo-1",
                    }
                ],
                "destination": {**destination, "table": "api_customers"},
                "partitions": partitions,
                "retry": retry,
            },
        },
    }


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --- the parts ----------------------------------------------------------------------------


def _postgres(platform, name: str, workdir: Path) -> Postgres:
    ensure_certificate(platform, name)
    paths = certificate_store(platform).paths(name)
    server = Postgres(workdir, paths.fullchain, paths.privkey, trust_bundle(platform, name))
    server.start()
    server.psql(f'CREATE ROLE "{CLIENT_CN}" LOGIN SUPERUSER')
    return server


def _spawn(argv: list[str], log: Path, env: dict) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its code server is in the group: stop both
        )


def _stop_group(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    # A SIGKILLed daemon leaves its code server (same group) behind: end the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _writer(src: Postgres, rows_per_s: float, stop: threading.Event, watch: Watch) -> None:
    """Inserts a row every 1/rows_per_s seconds, created_at = now; reconnects after a
    restart. Rows are counted from the source table at the end (the truth)."""
    import psycopg

    pause = 1 / rows_per_s
    conn = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = psycopg.connect(
                    host=str(src.socket_dir),
                    port=src.port,
                    user="postgres",
                    dbname="postgres",
                    autocommit=True,
                )
            conn.execute(
                "INSERT INTO orders (email, amount, created_at) "
                "VALUES ('buyer' || floor(random() * 1e6) || '@example.com', "
                "round((random() * 100)::numeric, 2), clock_timestamp())"
            )
            watch.written += 1
        except psycopg.Error:
            watch.writer_errors += 1
            with contextlib.suppress(Exception):
                conn.close()
            conn = None
            time.sleep(0.5)
        time.sleep(pause)
    if conn is not None:
        conn.close()


def _served_leaf(host: str, port: int, protocol: str, client: tuple[str, str] | None) -> bytes:
    """The DER of the leaf the endpoint presents (not verified: an expired one is seen)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if client:
        context.load_cert_chain(*client)
    with socket.create_connection((host, port), timeout=5) as raw:
        if protocol == "postgres":
            raw.sendall((8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"))  # SSLRequest
            if raw.recv(1) != b"S":
                raise OSError("the server refused TLS")
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return tls.getpeercert(binary_form=True)


def _prober(targets: dict, client: tuple[str, str], stop: threading.Event, watch: Watch):
    while not stop.is_set():
        for name, (host, port, protocol) in targets.items():
            try:
                der = _served_leaf(host, port, protocol, client if protocol == "tls" else None)
            except (OSError, ssl.SSLError):
                watch.probe_errors[name] = watch.probe_errors.get(name, 0) + 1
                continue
            leaf = x509.load_der_x509_certificate(der)
            left = (leaf.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds()
            watch.min_left_s[name] = min(left, watch.min_left_s.get(name, left))
            watch.serials.setdefault(name, set()).add(leaf.serial_number)
        stop.wait(3)


# --- the run ------------------------------------------------------------------------------


def run(s: Settings) -> dict:
    s.workdir.mkdir(parents=True, exist_ok=True)
    begin = dt.datetime.now(dt.UTC)
    first = (begin + dt.timedelta(minutes=1)).replace(second=0, microsecond=0)
    start_key = first.strftime("%Y-%m-%d-%H:%M")
    api_port = free_port()
    os.environ.pop("SECURE_ETL_STATE_DIR", None)
    # Bootstrap: issue the first certificates, start the servers, then the real config.
    boot = load_config(_write(s.workdir / "boot.yaml", _config(s, None, None, api_port, start_key)))
    ensure_certificate(boot, "etl-client")
    ensure_certificate(boot, "api-server")
    src = _postgres(boot, "src-db", s.workdir / "src")
    dst = _postgres(boot, "dst-db", s.workdir / "dst")
    src.psql(
        "CREATE TABLE orders (id bigserial PRIMARY KEY, email text, amount numeric(10,2), "
        "created_at timestamptz NOT NULL)"
    )
    src.psql("CREATE INDEX ON orders (created_at)")
    dst.psql("CREATE DATABASE warehouse")
    dst.psql(f'CREATE DATABASE dagster OWNER "{CLIENT_CN}"')
    config_path = _write(
        s.workdir / "platform.yaml", _config(s, src.port, dst.port, api_port, start_key)
    )
    platform = load_config(config_path)
    store = certificate_store(platform)
    client = store.paths("etl-client")
    api = DemoApiServer(
        DemoApiSettings(
            port=api_port,
            certificate_dir=store.paths("api-server").directory,
            ca_bundle=trust_bundle(platform, "etl-client"),
            rows_per_partition=API_ROWS,
            bad_row_rate=0.0,
        )
    ).serve_in_thread()

    home = s.workdir / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copyfile(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    url = (
        f"postgresql+psycopg2://{quote(CLIENT_CN)}@localhost:{dst.port}/dagster"
        f"?sslmode=verify-full&sslrootcert={trust_bundle(platform, 'dst-db')}"
        f"&sslcert={client.fullchain}&sslkey={client.privkey}"
    )
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        DAGSTER_POSTGRES_URL=url,
        SECURE_ETL_CONFIG=str(config_path),
        PYTHONPATH=str(ROOT),
    )
    os.environ.update(DAGSTER_HOME=str(home), DAGSTER_POSTGRES_URL=url)
    bin_dir = Path(sys.executable).parent
    workspace = str(ROOT / "workspace.yaml")
    daemon_argv = [str(bin_dir / "dagster-daemon"), "run", "-w", workspace]
    web_port = free_port()
    web_argv = [
        str(bin_dir / "dagster-webserver"),
        "-w",
        workspace,
        "-h",
        "127.0.0.1",
        "-p",
        str(web_port),
    ]
    daemon = _spawn(daemon_argv, s.workdir / "daemon.log", env)
    web = _spawn(web_argv, s.workdir / "webserver.log", env)

    watch = Watch()
    stop = threading.Event()
    targets = {
        "src-db": ("127.0.0.1", src.port, "postgres"),
        "dst-db": ("127.0.0.1", dst.port, "postgres"),
        "api-server": ("127.0.0.1", api_port, "tls"),
    }
    threads = [
        threading.Thread(target=_writer, args=(src, s.rows_per_s, stop, watch), daemon=True),
        threading.Thread(
            target=_prober,
            args=(targets, (str(client.fullchain), str(client.privkey)), stop, watch),
            daemon=True,
        ),
    ]
    for thread in threads:
        thread.start()

    total = s.minutes * 60
    ca_key = platform.resolved_state_dir() / "ca" / "soak-ca" / "ca.key"
    faults = [
        (0.35, "daemon SIGKILL + restart"),
        (0.5, "source PostgreSQL restart"),
        (0.6, f"issuer unavailable {s.ca_outage_s:g} s"),
    ]
    t0 = time.monotonic()
    killed: list[subprocess.Popen] = []
    report: dict = {}
    try:
        for at, what in faults:
            _sleep_until(t0 + at * total)
            fault = {"fault": what, "at_s": round(time.monotonic() - t0)}
            if what.startswith("daemon"):
                watch.daemon_killed_at.append(time.time())
                os.kill(daemon.pid, signal.SIGKILL)  # the daemon alone, as a crash would
                daemon.wait(10)
                killed.append(daemon)  # its code server is left to notice and exit
                time.sleep(3)
                daemon = _spawn(daemon_argv, s.workdir / "daemon.log", env)
            elif what.startswith("source"):
                src.restart()
            else:
                offline = ca_key.with_name("ca.key.offline")
                ca_key.rename(offline)  # the CA cannot sign: renewals fail until it is back
                time.sleep(s.ca_outage_s)
                offline.rename(ca_key)
            watch.faults.append(fault)
        _sleep_until(t0 + total)
        stop.set()  # the writer stops: the last partitions get their runs
        end = dt.datetime.now(dt.UTC)
        grace_end = time.monotonic() + 150
        report = None
        while time.monotonic() < grace_end:  # wait for the due partitions to load
            report = _report(s, platform, src, dst, api, watch, first, end, begin)
            if report["partitions_loaded"] >= report["partitions_due"]:
                break
            time.sleep(10)
        for thread in threads:
            thread.join(10)
        report = _report(s, platform, src, dst, api, watch, first, end, begin)
    finally:
        stop.set()
        for process in [daemon, web, *killed]:
            _stop_group(process)
        api.stop()
        src.stop()
        dst.stop()
    return report


def _sleep_until(deadline: float) -> None:
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 1))


def _due_keys(first: dt.datetime, end: dt.datetime) -> list[str]:
    """Every partition that ended before the writer stopped."""
    keys, t = [], first
    while t + dt.timedelta(minutes=1) <= end:
        keys.append(t.strftime("%Y-%m-%d-%H:%M"))
        t += dt.timedelta(minutes=1)
    return keys


def _report(s, platform, src, dst, api, watch, first, end, begin) -> dict:
    due = _due_keys(first, end)
    source_rows = dict(
        line.split("|")
        for line in src.psql(
            "SELECT to_char(date_trunc('minute', created_at AT TIME ZONE 'UTC'), "
            "'YYYY-MM-DD-HH24:MI'), count(*) FROM orders GROUP BY 1"
        ).split()
        if "|" in line
    )

    def loaded(table: str) -> dict[str, tuple[int, int]]:
        key_column = "id" if table == "orders" else "customer_id"
        out = {}
        for line in dst.psql(
            f"SELECT _partition, count(*), count(DISTINCT {key_column}) FROM {table} GROUP BY 1",
            dbname="warehouse",
        ).split():
            if "|" in line:
                key, n, distinct = line.split("|")
                out[key] = (int(n), int(distinct))
        return out

    try:
        orders, api_rows = loaded("orders"), loaded("api_customers")
    except RuntimeError:  # the table is made by the first load
        orders, api_rows = {}, {}
    written = sum(int(source_rows.get(k, 0)) for k in due)
    got = sum(orders.get(k, (0, 0))[0] for k in due)
    lost = sum(max(0, int(source_rows.get(k, 0)) - orders.get(k, (0, 0))[1]) for k in due)
    dup = sum(orders.get(k, (0, 0))[0] - orders.get(k, (0, 0))[1] for k in due)
    api_lost = sum(max(0, API_ROWS - api_rows.get(k, (0, 0))[1]) for k in due)
    api_dup = sum(api_rows.get(k, (0, 0))[0] - api_rows.get(k, (0, 0))[1] for k in due)
    loaded_keys = [k for k in due if k in orders and k in api_rows]

    by_job, pipeline_failed, lag, slowest_tick, slowest_where, ticks = _instance_figures(
        due, begin, watch.daemon_killed_at
    )
    store = certificate_store(platform)
    renewals = {}
    for name in platform.certificates:
        versions = store.paths(name).directory / "versions"
        renewals[name] = max(0, len(list(versions.iterdir())) - 1) if versions.exists() else 0
    expired_refusals = _expired_refusals(s, api)
    return {
        "minutes_run": s.minutes,
        "lifetime_minutes": s.lifetime_minutes,
        "partitions_due": len(due),
        "partitions_loaded": len(loaded_keys),
        "runs": by_job,
        "pipeline_runs_failed": pipeline_failed,
        "rows_written": written,
        "rows_loaded": got,
        "rows_lost": lost,
        "rows_duplicated": dup,
        "api_rows_lost": api_lost,
        "api_rows_duplicated": api_dup,
        "renewals": renewals,
        "expired_refusals": expired_refusals,
        "min_remaining_validity_s": {k: round(v, 1) for k, v in watch.min_left_s.items()},
        "served_serials": {k: len(v) for k, v in watch.serials.items()},
        "probe_errors": watch.probe_errors,
        "worst_lag_s": round(lag, 1),
        "slowest_sensor_tick_s": round(slowest_tick, 2),
        "slowest_sensor_tick": slowest_where,
        "sensor_ticks": ticks,
        "faults": watch.faults,
        "writer_errors": watch.writer_errors,
    }


def _instance_figures(
    due: list[str], begin: dt.datetime, killed_at: list[float]
) -> tuple[dict, int, float, float, str, dict]:
    """Runs by job and status, failed pipeline runs, the worst lag and the slowest sensor
    tick (and which sensor, when; a tick the SIGKILL cut short ends only when the next
    daemon closes it, so ticks spanning a kill are left out), from the instance; if its
    storage cannot be reached
    (its server's certificate expired, say), that in one line and -1s, which fail the
    zeros."""
    from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter
    from dagster._core.scheduler.instigation import InstigatorType

    try:
        with DagsterInstance.get() as instance:
            runs = instance.get_runs(RunsFilter(created_after=begin))
            by_job: dict[str, dict[str, int]] = {}
            for r in runs:
                counts = by_job.setdefault(r.job_name, {})
                counts[r.status.value] = counts.get(r.status.value, 0) + 1
            pipeline_failed = sum(
                1
                for r in runs
                if r.job_name.endswith("_etl") and r.status == DagsterRunStatus.FAILURE
            )
            lag = 0.0
            for name in ("orders", "api"):
                for event in instance.fetch_materializations(
                    AssetKey(["loaded", name]), limit=10_000
                ).records:
                    key = event.partition_key
                    if key in due:
                        ends = dt.datetime.strptime(key, "%Y-%m-%d-%H:%M").replace(
                            tzinfo=dt.UTC
                        ) + dt.timedelta(minutes=1)
                        lag = max(lag, event.timestamp - ends.timestamp())
            slowest_tick, slowest_where, took_all = 0.0, "", []
            for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
                for tick in instance.get_ticks(
                    state.instigator_origin_id, state.selector_id, limit=10_000
                ):
                    end = tick.tick_data.end_timestamp
                    if tick.timestamp < begin.timestamp() or not end:
                        continue
                    if any(tick.timestamp <= k <= end for k in killed_at):
                        continue
                    took = end - tick.timestamp
                    took_all.append(took)
                    if took > slowest_tick:
                        slowest_tick = took
                        slowest_where = (
                            f"{state.instigator_name} at "
                            f"{dt.datetime.fromtimestamp(tick.timestamp, dt.UTC):%H:%M:%S}"
                        )
    except Exception as err:  # noqa: BLE001 (reported, the soak still prints its figures)
        error = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        return {"error": error}, -1, -1.0, -1.0, "", {}
    took_all.sort()
    ticks = {
        "count": len(took_all),
        "median_s": round(took_all[len(took_all) // 2], 2) if took_all else 0.0,
        "p95_s": round(took_all[int(len(took_all) * 0.95)], 2) if took_all else 0.0,
        "over_5_s": sum(1 for t in took_all if t >= 5),
    }
    return by_job, pipeline_failed, lag, slowest_tick, slowest_where, ticks


def _expired_refusals(s: Settings, api) -> int:
    """Connections refused for an expired certificate: server logs, the API's refusals,
    the daemon's and the runs' logs."""
    count = sum(1 for why in api.seen.refused if "expired" in why)
    for log in [
        s.workdir / "src" / "postgres.log",
        s.workdir / "dst" / "postgres.log",
        s.workdir / "daemon.log",
    ]:
        if log.exists():
            count += sum(
                1
                for line in log.read_text(errors="replace").splitlines()
                if "certificate expired" in line.lower()
            )
    return count


def _table(report: dict) -> str:
    rows = [(k, json.dumps(v) if isinstance(v, dict | list) else str(v)) for k, v in report.items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def zeros(report: dict) -> dict[str, object]:
    """The figures that must be zero (or true) — what the soak asserts."""
    return {
        "pipeline_runs_failed": report["pipeline_runs_failed"],
        "rows_lost": report["rows_lost"],
        "rows_duplicated": report["rows_duplicated"],
        "api_rows_lost": report["api_rows_lost"],
        "api_rows_duplicated": report["api_rows_duplicated"],
        "expired_refusals": report["expired_refusals"],
        "partitions_missing": report["partitions_due"] - report["partitions_loaded"],
        "expired_seen_by_prober": sum(
            1 for v in report["min_remaining_validity_s"].values() if v <= 0
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--lifetime-minutes", type=float, default=6)
    # Renewal must finish before expiry with the issuer away: see the README's soak section.
    parser.add_argument("--fraction-left", type=float, default=2 / 3)
    parser.add_argument("--rows-per-s", type=float, default=20)
    parser.add_argument("--ca-outage-s", type=float, default=120)
    parser.add_argument("--check-interval-s", type=int, default=None)
    parser.add_argument("--retry-delay-s", type=float, default=10)
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    report = run(
        Settings(
            args.minutes,
            args.lifetime_minutes,
            args.fraction_left,
            args.rows_per_s,
            args.ca_outage_s,
            workdir,
            args.check_interval_s,
            args.retry_delay_s,
            args.retries,
        )
    )
    print(_table(report))
    print(json.dumps(report))
    return 0 if not any(zeros(report).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
