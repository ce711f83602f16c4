"""The production instance's storage calls, dagster-postgres's classes beside ours.

    .venv/bin/python benchmarks/instance_storage.py [--rounds N] [--calls N]

A PostgreSQL server as the production instance reaches it (verify-full TLS, the
`etl-client` certificate authenticating; the test platform's internal CA issues both
certificates), and two Dagster instances on it: one naming dagster-postgres's run,
event-log and schedule storages (Dagster's `storage: postgres`, a connection per call
outside the web server), one naming ours (`deploy/dagster.yaml`: the same classes with
a pooled connection). In each round, alternating which goes first, each instance:
creates a run of a one-op job (what a sensor's run request writes: the run, its
snapshots, its events), stores `--calls` engine events for it, and makes `--calls`
rounds of the reads a sensor tick makes (the run records of a job, the instigators'
state, an asset's latest materialization, a count of runs). Prints a table (median wall
and CPU milliseconds a call; the CPU is this process's, not the server's), then one
JSON line with the ratios ours / Dagster's.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from secure_etl_tests.conftest import BASE_CONFIG  # noqa: E402
from secure_etl_tests.servers import postgres_for_platform  # noqa: E402

DAGSTERS = """
storage:
  postgres:
    postgres_url:
      env: DAGSTER_POSTGRES_URL
telemetry:
  enabled: false
"""


def _timed(work) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def _measure(instance, calls: int) -> dict[str, tuple[float, float]]:
    """Wall and CPU seconds of each kind of work, per call."""
    from dagster import AssetKey, RunsFilter, job, op

    @op
    def noop() -> None:
        pass

    @job
    def bench() -> None:
        noop()

    figures = {}
    run = None

    def create() -> None:
        nonlocal run
        run = instance.create_run_for_job(job_def=bench)

    figures["create_run"] = _timed(create)

    def events() -> None:
        for i in range(calls):
            instance.report_engine_event(f"event {i}", run)

    wall, cpu = _timed(events)
    figures["store_event"] = (wall / calls, cpu / calls)
    key = AssetKey(["certificates", "etl-client"])

    def reads() -> None:
        for _ in range(calls):
            instance.get_run_records(RunsFilter(job_name="bench"), limit=1)
            instance.all_instigator_state()
            instance.get_latest_materialization_event(key)
            instance.get_runs_count()

    wall, cpu = _timed(reads)
    figures["read"] = (wall / (4 * calls), cpu / (4 * calls))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()

    from dagster import DagsterInstance

    from secure_etl.config import load_config
    from secure_etl.pki.renewal import certificate_store, trust_bundle

    work = Path(tempfile.mkdtemp(prefix="instance-storage-"))
    data = copy.deepcopy(BASE_CONFIG)
    data["state_dir"] = str(work / "state")
    (work / "platform.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    platform = load_config(work / "platform.yaml")
    server = postgres_for_platform(platform, work / "pg")
    results: dict[str, dict[str, list[tuple[float, float]]]] = {"dagster": {}, "ours": {}}
    try:
        server.psql('CREATE ROLE "etl-client.test" LOGIN SUPERUSER')
        client = certificate_store(platform).paths("etl-client")
        homes = {}
        for name, settings in (
            ("dagster", DAGSTERS),
            ("ours", (ROOT / "deploy" / "dagster.yaml").read_text()),
        ):
            server.psql(f'CREATE DATABASE {name} OWNER "etl-client.test"')
            home = work / f"home-{name}"
            home.mkdir()
            (home / "dagster.yaml").write_text(settings)
            url = (
                f"postgresql+psycopg2://{quote('etl-client.test')}@localhost:{server.port}/"
                f"{name}?sslmode=verify-full&sslrootcert={trust_bundle(platform, 'db-server')}"
                f"&sslcert={client.cert}&sslkey={client.privkey}"
            )
            homes[name] = (home, url)
        for round_ in range(args.rounds):
            order = ["dagster", "ours"] if round_ % 2 == 0 else ["ours", "dagster"]
            for name in order:
                home, url = homes[name]
                os.environ["DAGSTER_POSTGRES_URL"] = url
                with DagsterInstance.from_config(str(home)) as instance:
                    kinds = type(instance.run_storage).__module__
                    assert ("secure_etl" in kinds) == (name == "ours"), kinds
                    for kind, figure in _measure(instance, args.calls).items():
                        results[name].setdefault(kind, []).append(figure)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    def median(name: str, kind: str, which: int) -> float:
        return statistics.median(f[which] for f in results[name][kind])

    figures: dict[str, float | int] = {"rounds": args.rounds, "calls": args.calls}
    print(f"{'call':<12} {'Dagster ms':>11} {'(CPU)':>7} {'ours ms':>8} {'(CPU)':>7} {'ratio':>6}")
    for kind in results["ours"]:
        d_wall, d_cpu = median("dagster", kind, 0) * 1000, median("dagster", kind, 1) * 1000
        o_wall, o_cpu = median("ours", kind, 0) * 1000, median("ours", kind, 1) * 1000
        print(
            f"{kind:<12} {d_wall:>11.2f} {d_cpu:>7.2f} {o_wall:>8.2f} {o_cpu:>7.2f} "
            f"{o_wall / d_wall:>6.2f}"
        )
        figures[f"{kind}_dagster_ms"] = round(d_wall, 2)
        figures[f"{kind}_dagster_cpu_ms"] = round(d_cpu, 2)
        figures[f"{kind}_ours_ms"] = round(o_wall, 2)
        figures[f"{kind}_ours_cpu_ms"] = round(o_cpu, 2)
        figures[f"{kind}_ratio_vs_dagster"] = round(o_wall / d_wall, 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
