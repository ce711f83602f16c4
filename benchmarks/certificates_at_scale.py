"""Certificates at scale: N internal-CA certificates, as users run them in Dagster.

    .venv/bin/python benchmarks/certificates_at_scale.py --certs 10,100,1000 [--launch-max M]

For each N, a platform config with N internal-CA certificates (half server, half
client; one demo pipeline using the first client certificate) is written to a temporary
directory, with its own DAGSTER_HOME (the repository's dagster.yaml: SQLite). Measured:

- definitions load: a fresh process builds the definitions and resolves the repository
  (what a code server, a UI reload or a run worker pays), Dagster's import excluded;
- `secure-etl certs renew --all`: first issuance of all N, the CLI as a user runs it;
- the `certificate_checks` job in process, beside its peer: the same inspections with
  no Dagster (`bare inspection`), and the ratio of the two;
- the same job launched as the schedule launches it (`dagster job execute`, with the
  job's own executor), up to --launch-max certificates;
- the renewal sensor's tick: after a checks run with every check passing (all new since
  the cursor), with nothing new, and after a run in which one certificate failed (the
  whole job again, or above --full-rerun-max only that certificate's checks);
- the web server: time from start to the first GraphQL answer listing the assets, and
  one asset-node query with every asset's checks.

Prints a table, then one JSON line of the figures (seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent
ENV_PY = {**os.environ, "PYTHONPATH": str(REPO)}

ASSET_NODES = """{ assetNodes { assetKey { path } groupName
  assetChecksOrError { ... on AssetChecks { checks { name
    executionForLatestMaterialization { status } } } } } }"""

LOAD = """
import sys, time, json
import dagster  # noqa: F401 (its import is not ours to measure)
from secure_etl.config import load_config
from secure_etl.defs.build import build_definitions
started, cpu = time.perf_counter(), time.process_time()
defs = build_definitions(load_config(sys.argv[1]))
repo = defs.get_repository_def()
repo.get_all_jobs()
repo.asset_graph
wall, cpu = time.perf_counter() - started, time.process_time() - cpu
print(json.dumps({"load_s": wall, "load_cpu_s": cpu}))
"""


def platform_config(n: int, work: Path) -> Path:
    certificates = {}
    for i in range(n):
        use = "client" if i % 2 else "server"
        certificates[f"cert-{i:04d}"] = {
            "issuer": "bench-ca",
            "use": use,
            "identifiers": [f"c{i}.bench.test"],
        }
    first_client = "cert-0001" if n > 1 else None
    data: dict = {
        "state_dir": str(work / "state"),
        "issuers": {"bench-ca": {"type": "internal_ca", "lifetime_days": 30}},
        "certificates": certificates,
        "keys": {"pseudo-1": {"file": "keys/pseudo-1.key", "create": True}},
        "pipelines": {},
    }
    if first_client:
        data["pipelines"]["customers"] = {
            "source": {"type": "demo", "rows_per_partition": 10, "seed": 3},
            "client_certificate": first_client,
            "key_column": "customer_id",
            "transforms": [
                {
                    "type": "pseudonymise",
                    "columns": ["full_name", "email", "phone"],
                    "key": "pseudo-1",
                }
            ],
            "destination": {
                "type": "duckdb",
                "path": str(work / "warehouse.duckdb"),
                "table": "customers",
            },
            "partitions": {"start": "2026-01-01-00:00"},
        }
    path = work / "platform.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(argv: list[str], env: dict, timeout: float = 3600) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (the process and its children) and stdout of `argv`."""
    cpu = _children_cpu()
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return elapsed, _children_cpu() - cpu, result.stdout


@contextlib.contextmanager
def _timed(row: dict, key: str):
    """Record wall seconds as `key` and this process's CPU seconds as `key` + `_cpu`."""
    cpu, wall = time.process_time(), time.perf_counter()
    yield
    row[key] = time.perf_counter() - wall
    row[key.removesuffix("_s") + "_cpu_s"] = time.process_time() - cpu


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _webserver(home: Path, env: dict):
    port = _free_port()
    proc = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1"]
        + ["-p", str(port)],
        cwd=REPO,
        env={**env, "DAGSTER_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        proc.wait(60)


def webserver_times(home: Path, env: dict, n: int) -> tuple[float, float]:
    """Seconds from start to the first answer listing N certificates, and one query."""
    started = time.perf_counter()
    with _webserver(home, env) as (url, proc):
        deadline = started + 600
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise SystemExit("dagster-webserver exited")
            try:
                reply = httpx.post(f"{url}/graphql", json={"query": ASSET_NODES}, timeout=120)
                nodes = reply.json()["data"]["assetNodes"]
                if sum(1 for x in nodes if x["groupName"] == "certificates") == n:
                    break
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                pass
            time.sleep(0.2)
        else:
            raise SystemExit("dagster-webserver: no asset nodes within 600 s")
        first = time.perf_counter() - started
        t = time.perf_counter()
        reply = httpx.post(f"{url}/graphql", json={"query": ASSET_NODES}, timeout=120)
        nodes = reply.json()["data"]["assetNodes"]
        query = time.perf_counter() - t
        checks = [c for x in nodes for c in (x["assetChecksOrError"].get("checks") or [])]
        assert len(checks) >= 6 * n, len(checks)
    return first, query


def _expire(platform, name: str) -> None:
    from secure_etl.pki.keys import generate_private_key
    from secure_etl.pki.renewal import build_issuer, certificate_store

    cert = platform.certificates[name]
    issued = build_issuer(platform, cert.issuer).issue(
        cert.identifiers,
        cert.use,
        generate_private_key("ec256"),
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=40),
        lifetime=dt.timedelta(days=30),
    )
    store = certificate_store(platform)
    with store.lock(name):
        store.install(name, issued)


# Removed when the benchmark ends, not after each N: on an ext4 file system without a
# journal (this VM's), the kernel's inode allocator skips every inode deleted in the last
# minute or more (`recently_deleted`, perf), so the thousands of files created just after
# thousands were deleted would time that scan, not the code (seen as issuance several
# times slower, most of it system time). --keep-work leaves them, for runs back to back.
WORK_DIRS: list[Path] = []


def measure(
    n: int, launch_max: int, full_rerun_max: int, webserver: bool, checks: bool = True
) -> dict:
    from dagster import DagsterInstance, build_sensor_context

    from secure_etl.config import load_config
    from secure_etl.defs.build import build_definitions
    from secure_etl.defs.certificates import CHECKS_JOB, _inspect
    from secure_etl.defs.names import certificate_check_keys

    row: dict = {"certs": n, "load_avg_1min": os.getloadavg()[0]}
    work = Path(tempfile.mkdtemp(prefix=f"certs-at-scale-{n}-"))
    try:
        config = platform_config(n, work)
        home = work / "dagster_home"
        home.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        env = {**ENV_PY, "SECURE_ETL_CONFIG": str(config), "DAGSTER_HOME": str(home)}
        env.pop("SECURE_ETL_STATE_DIR", None)

        _, _, out = _run([sys.executable, "-c", LOAD, str(config)], env)
        loaded = json.loads(out.splitlines()[-1])
        row["defs_load_s"], row["defs_load_cpu_s"] = loaded["load_s"], loaded["load_cpu_s"]

        cli = [sys.executable, "-m", "secure_etl.cli", "certs", "renew", "--all"]
        row["renew_all_s"], row["renew_all_cpu_s"], _ = _run([*cli, "--config", str(config)], env)

        if not checks:
            return row
        platform = load_config(config)
        with _timed(row, "inspect_bare_s"):
            for name in platform.certificates:
                assert all(r.passed for r in _inspect(platform, name)), name

        defs = build_definitions(platform)
        sensor = defs.resolve_sensor_def("certificate_renewal")
        with DagsterInstance.from_config(str(home)) as instance:

            def tick(cursor):
                ctx = build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
                t = time.perf_counter()
                result = sensor(ctx)
                return time.perf_counter() - t, result

            _, before = tick(None)
            job = defs.resolve_job_def(CHECKS_JOB)
            with _timed(row, "checks_in_process_s"):
                result = job.execute_in_process(instance=instance)
            evaluations = result.get_asset_check_evaluations()
            assert len(evaluations) >= 6 * n and all(e.passed for e in evaluations)
            row["checks_events"] = len(result.all_events)

            row["tick_all_passing_s"], passing = tick(before.cursor)
            assert not passing.run_requests
            row["tick_nothing_new_s"], quiet = tick(passing.cursor)
            row["cursor_bytes"] = len(quiet.cursor or "")

            _expire(platform, "cert-0000")
            if n > full_rerun_max:  # only the failing certificate's checks run again
                keys = set(certificate_check_keys(platform, "cert-0000"))
                checks_only = defs.resolve_implicit_global_asset_job_def()
                checks_only.get_subset(asset_check_selection=keys).execute_in_process(
                    instance=instance
                )
            else:
                job.execute_in_process(instance=instance)
            row["tick_one_failed_s"], failed = tick(quiet.cursor)
            assert [r.tags["secure_etl/renewal_of"] for r in failed.run_requests] == [
                "cert-0000"
            ], failed

        if n <= launch_max:
            launch = [str(BIN / "dagster"), "job", "execute", "-m", "secure_etl.definitions"]
            row["checks_launched_s"], row["checks_launched_cpu_s"], _ = _run(
                [*launch, "-j", CHECKS_JOB], env
            )
        if webserver:
            row["webserver_first_answer_s"], row["graphql_asset_nodes_s"] = webserver_times(
                home, env, n
            )
        row["checks_vs_bare_ratio"] = row["checks_in_process_s"] / max(row["inspect_bare_s"], 1e-9)
        row["checks_vs_bare_cpu_ratio"] = row["checks_in_process_cpu_s"] / max(
            row["inspect_bare_cpu_s"], 1e-9
        )
    finally:
        WORK_DIRS.append(work)
    return row


COLUMNS = [
    ("certs", "certs", "{:d}"),
    ("defs_load_s", "defs load s", "{:.2f}"),
    ("defs_load_cpu_s", "(CPU)", "{:.2f}"),
    ("renew_all_s", "renew --all s", "{:.2f}"),
    ("renew_all_cpu_s", "(CPU)", "{:.2f}"),
    ("inspect_bare_s", "bare inspect s", "{:.2f}"),
    ("checks_in_process_s", "checks job s", "{:.2f}"),
    ("checks_in_process_cpu_s", "(CPU)", "{:.2f}"),
    ("checks_vs_bare_ratio", "job/bare", "{:.1f}"),
    ("checks_launched_s", "launched s", "{:.1f}"),
    ("checks_launched_cpu_s", "(CPU)", "{:.1f}"),
    ("checks_events", "events", "{:d}"),
    ("tick_all_passing_s", "tick pass s", "{:.3f}"),
    ("tick_nothing_new_s", "tick idle s", "{:.3f}"),
    ("tick_one_failed_s", "tick 1 fail s", "{:.3f}"),
    ("cursor_bytes", "cursor B", "{:d}"),
    ("webserver_first_answer_s", "UI up s", "{:.1f}"),
    ("graphql_asset_nodes_s", "GraphQL s", "{:.2f}"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--certs", default="10,100,1000", help="comma-separated N")
    parser.add_argument(
        "--launch-max",
        type=int,
        default=1000,
        help="launch the job (`dagster job execute`) only up to this many certificates",
    )
    parser.add_argument(
        "--full-rerun-max",
        type=int,
        default=1000,
        help="above this many certificates, only the failing certificate's checks run "
        "before the one-failed tick (else the whole job again)",
    )
    parser.add_argument(
        "--load-only",
        action="store_true",
        help="only the definitions load and `certs renew --all` (no Dagster runs)",
    )
    parser.add_argument("--no-webserver", action="store_true", help="skip the web server")
    parser.add_argument(
        "--keep-work",
        action="store_true",
        help="leave the work directories (paths on stderr) for the next run not to time "
        "their deletion's aftermath",
    )
    args = parser.parse_args()
    try:
        _main(args)
    finally:
        for work in WORK_DIRS:
            if args.keep_work:
                print(f"# kept {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)


def _main(args: argparse.Namespace) -> None:
    counts = [int(x) for x in args.certs.split(",") if x]
    rows = []
    for n in counts:
        rows.append(
            measure(
                n, args.launch_max, args.full_rerun_max, not args.no_webserver, not args.load_only
            )
        )
        print(f"# {n} certificates: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    print(" | ".join(title for _, title, _ in COLUMNS))
    for row in rows:
        cells = [fmt.format(row[key]) if key in row else "-" for key, _, fmt in COLUMNS]
        print(" | ".join(cells))
    load = os.getloadavg()[0]
    print(f"(CPU: seconds of CPU used, the process and its children; load average {load:.1f})")
    print(json.dumps({"cpus": os.cpu_count(), "load_avg_1min": load, "rows": rows}, sort_keys=True))


if __name__ == "__main__":
    main()
