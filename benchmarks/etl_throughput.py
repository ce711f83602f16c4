"""PostgreSQL -> pseudonymise -> PostgreSQL over verify-full with client certificates:
our pipeline code side by side with the COPY floor, a naive per-record loop and dlt.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/etl_throughput.py [--rows 1000000] [--big-rows 5000000] [--repeat 3]

One PostgreSQL 15 (ssl = on, ``hostssl ... cert``, plaintext refused) holds a source
table (id, name, email, phone, amount, created_at) of ``--rows`` rows in one hour; every
method reads it with sslmode=verify-full and the etl-client certificate and writes to a
second database the same way. Each method runs in its own process, so its peak RSS is
its own; "+children" adds its child processes (hash workers), sampled every 20 ms. The
Dagster rows give their time as a multiple of "ours" (the bare one-pass functions) and
count the run's events. ``--repeat N`` runs every method N times in turn and keeps the
median (the machine is shared). Every method must have loaded every row. Each child
also reports the seconds its cyclic garbage collector ran (``gc_s``). Prints a table,
then one JSON line.

Where the time goes: ``BENCH_PROFILE=name,...`` runs those methods under cProfile (their
main thread; stderr), ``BENCH_PYSPY=name,...`` under py-spy (every thread and the hash
workers, sampled; collapsed stacks in ``$BENCH_PYSPY_DIR/pyspy-<name>.txt``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

HOUR = "2026-03-01-10:00"
SECRET_HEX = "6b" * 32
PII = ("name", "email", "phone")
COLUMNS = "id, name, email, phone, amount, created_at"


def _config(work: Path, port: int, table: str, rows: int) -> dict:
    connection = {"host": "localhost", "port": port, "user": "etl-client.test"}
    return {
        "state_dir": str(work / "state"),
        "issuers": {"bench-ca": {"type": "internal_ca", "common_name": "bench CA"}},
        "certificates": {
            "db-server": {"issuer": "bench-ca", "use": "server", "identifiers": ["localhost"]},
            "etl-client": {
                "issuer": "bench-ca",
                "use": "client",
                "identifiers": ["etl-client.test"],
            },
        },
        "keys": {"bench": {"env": "BENCH_HMAC_KEY"}},
        "pipelines": {
            "bench": {
                "source": {
                    "type": "postgres",
                    **connection,
                    "dbname": "src",
                    "table": table,
                    "time_column": "created_at",
                },
                "client_certificate": "etl-client",
                "key_column": "id",
                "transforms": [{"type": "pseudonymise", "columns": list(PII), "key": "bench"}],
                "destination": {
                    "type": "postgres",
                    **connection,
                    "dbname": "dst",
                    "table": f"ours_{rows}",
                },
                "partitions": {"start": "2026-03-01-00:00"},
                "retry": {"max_retries": 0},
            }
        },
    }


def _platform(work: Path):
    from secure_etl.config import load_config

    return load_config(work / "platform.yaml")


def _tls(work: Path) -> dict:
    from secure_etl.pki.renewal import certificate_store, trust_bundle

    platform = _platform(work)
    paths = certificate_store(platform).paths("etl-client")
    return {
        "sslcert": str(paths.fullchain),
        "sslkey": str(paths.privkey),
        "sslrootcert": str(trust_bundle(platform, "etl-client")),
    }


def _connect(work: Path, dbname: str):
    import psycopg

    port = _platform(work).pipelines["bench"].source.port
    return psycopg.connect(
        host="localhost",
        port=port,
        dbname=dbname,
        user="etl-client.test",
        sslmode="verify-full",
        **_tls(work),
    )


# --- the methods, each run in a child process -------------------------------------------


def _bench_pipeline(work: Path, table: str, target: str):
    """The benchmark pipeline's config pieces, reading ``table`` and writing ``target``."""
    from secure_etl.etl.connector import ClientTls

    platform = _platform(work)
    p = platform.pipelines["bench"]
    source = p.source.model_copy(update={"table": table})
    destination = p.destination.model_copy(update={"table": target})
    t = _tls(work)
    tls = ClientTls(t["sslcert"], t["sslkey"], t["sslrootcert"])
    return platform, source, destination, tls, work / "state" / target


def method_ours(work: Path, table: str, target: str) -> dict:
    """The code the one-pass asset runs (``one_pass: true``): extraction, hashing and
    loading overlapped, the raw and hashed files written on the way."""
    import datetime as dt

    from secure_etl.etl import registry, storage
    from secure_etl.etl.connector import Runtime
    from secure_etl.etl.one_pass import run_one_pass
    from secure_etl.etl.transforms import Lineage, Pseudonymiser, PseudonymiseStep

    platform, source, destination, tls, state = _bench_pipeline(work, table, target)
    target_table = registry.destination(destination, Runtime(state, tls))
    step = PseudonymiseStep(PII, Pseudonymiser(bytes.fromhex(SECRET_HEX)), "bench")
    run_one_pass(
        registry.source(source, Runtime(tls=tls)).chunks(HOUR),
        storage.partition_file(state, "raw", "bench", HOUR),
        storage.partition_file(state, "hashed", "bench", HOUR),
        storage.partition_file(state, "quarantine", "bench", HOUR),
        "id",
        [step],
        Lineage("bench", "1", dt.datetime.now(dt.UTC)),
        lambda batches, schema: target_table.load_batches(HOUR, batches, schema),
        crypto=storage.raw_crypto(platform),  # raw and quarantine encrypted, as the assets do
    )
    return {}


def method_ours_staged(work: Path, table: str, target: str) -> dict:
    """The code the staged raw, hashed and loaded assets run, in the same order."""
    import datetime as dt

    from secure_etl.etl import registry, storage
    from secure_etl.etl.connector import Runtime
    from secure_etl.etl.transforms import (
        Lineage,
        Pseudonymiser,
        PseudonymiseStep,
        transform_partition,
    )

    platform, source, destination, tls, state = _bench_pipeline(work, table, target)
    raw = storage.partition_file(state, "raw", "bench", HOUR)
    hashed = storage.partition_file(state, "hashed", "bench", HOUR)
    crypto = storage.raw_crypto(platform)  # raw and quarantine encrypted, as the assets do
    stages = {}
    started = time.perf_counter()
    storage.write_partition_chunks(
        raw, registry.source(source, Runtime(tls=tls)).chunks(HOUR), crypto
    )
    stages["extract_s"] = time.perf_counter() - started
    stages["extract_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step = PseudonymiseStep(PII, Pseudonymiser(bytes.fromhex(SECRET_HEX)), "bench")
    transform_partition(
        raw,
        hashed,
        storage.partition_file(state, "quarantine", "bench", HOUR),
        "id",
        [step],
        Lineage("bench", "1", dt.datetime.now(dt.UTC)),
        crypto=crypto,
    )
    stages["transform_s"] = time.perf_counter() - started - stages["extract_s"]
    stages["transform_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    registry.destination(destination, Runtime(state, tls)).load(HOUR, hashed)
    stages["load_s"] = time.perf_counter() - started - stages["extract_s"] - stages["transform_s"]
    return stages


def method_floor(work: Path, table: str, target: str) -> None:
    """COPY TO STDOUT piped into COPY FROM STDIN: no parsing, no transform."""
    with _connect(work, "src") as src, _connect(work, "dst") as dst:
        dst.execute(f"CREATE TABLE {target} (LIKE {table}_shape)")
        with (
            src.cursor().copy(f"COPY (SELECT {COLUMNS} FROM {table}) TO STDOUT") as out,
            dst.cursor().copy(f"COPY {target} FROM STDIN") as into,
        ):
            while data := out.read():
                into.write(data)


def method_naive(work: Path, table: str, target: str) -> None:
    """The per-record style: dict rows from a server-side cursor, a new dict per record,
    one HMAC call per field, executemany in batches."""
    import hashlib
    import hmac

    from psycopg.rows import dict_row

    key = bytes.fromhex(SECRET_HEX)
    insert = f"INSERT INTO {target} ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)"
    with _connect(work, "src") as src, _connect(work, "dst") as dst:
        dst.execute(f"CREATE TABLE {target} (LIKE {table}_shape)")
        with src.cursor(name="naive", row_factory=dict_row) as cursor, dst.cursor() as out:
            cursor.itersize = 5000
            cursor.execute(f"SELECT {COLUMNS} FROM {table}")
            batch = []
            for row in cursor:
                record = dict(row)
                for field in PII:
                    value = record[field]
                    if value is not None:
                        record[field] = hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
                batch.append(tuple(record[c] for c in COLUMNS.split(", ")))
                if len(batch) == 5000:
                    out.executemany(insert, batch)
                    batch = []
            if batch:
                out.executemany(insert, batch)


def _dlt_pipeline(work: Path, table: str, target: str, backend: str) -> None:
    import hashlib
    import hmac

    import dlt
    from dlt.sources.sql_database import sql_table

    key = bytes.fromhex(SECRET_HEX)
    t = _tls(work)
    port = _platform(work).pipelines["bench"].source.port
    query = (
        f"sslmode=verify-full&sslrootcert={t['sslrootcert']}&sslcert={t['sslcert']}"
        f"&sslkey={t['sslkey']}"
    )
    # dlt's postgres destination insists on a password; certificate auth ignores it.
    base = f"postgresql://etl-client.test:unused@localhost:{port}"

    def mac(value):
        return None if value is None else hmac.new(key, value.encode(), hashlib.sha256).hexdigest()

    if backend == "pyarrow":
        import pyarrow as pa

        def transform(item):
            for field in PII:
                index = item.schema.get_field_index(field)
                values = [mac(v) for v in item.column(index).to_pylist()]
                item = item.set_column(index, field, pa.array(values, pa.string()))
            return item
    else:

        def transform(item):
            return {**item, **{f: mac(item[f]) for f in PII}}

    resource = sql_table(
        credentials=f"{base}/src?{query}", table=table, backend=backend, chunk_size=50_000
    ).add_map(transform)
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{target}",
        pipelines_dir=str(work / "dlt"),
        destination=dlt.destinations.postgres(credentials=f"{base}/dst?{query}"),
        dataset_name=target,
    )
    pipeline.run(resource, table_name=table, write_disposition="replace")


def method_dlt(work: Path, table: str, target: str) -> None:
    _dlt_pipeline(work, table, target, "sqlalchemy")


def method_dlt_pyarrow(work: Path, table: str, target: str) -> None:
    _dlt_pipeline(work, table, target, "pyarrow")


def method_dagster(work: Path, table: str, target: str, one_pass: bool = False) -> dict:
    """The whole asset graph raw -> hashed -> loaded (with its checks) in process."""
    from dagster import DagsterInstance

    from secure_etl.defs.build import build_definitions

    platform = _platform(work)
    p = platform.pipelines["bench"]
    platform.pipelines["bench"] = p.model_copy(
        update={
            "source": p.source.model_copy(update={"table": table}),
            "destination": p.destination.model_copy(update={"table": target}),
            "one_pass": one_pass,
        }
    )
    with DagsterInstance.ephemeral() as instance:
        result = (
            build_definitions(platform)
            .resolve_job_def("bench_etl")
            .execute_in_process(partition_key=HOUR, instance=instance)
        )
        events = len(instance.all_logs(result.run_id))
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    if not result.success or not all(checks.values()):
        raise SystemExit(f"the Dagster run failed or a check failed: {checks}")
    return {"events": events}


WARM = {  # imported before the clock starts: a fixed cost, not a per-row one
    "ours": [
        "secure_etl.etl.destinations.postgres",
        "secure_etl.etl.one_pass",
        "secure_etl.config",
    ],
    "ours_staged": [
        "secure_etl.etl.destinations.postgres",
        "secure_etl.etl.transforms",
        "secure_etl.config",
    ],
    "floor": ["psycopg", "secure_etl.config"],
    "naive": ["psycopg", "secure_etl.config"],
    "dlt": ["dlt", "dlt.sources.sql_database", "secure_etl.config"],
    "dlt_pyarrow": ["dlt", "dlt.sources.sql_database", "pyarrow", "secure_etl.config"],
    "dagster": ["dagster", "secure_etl.defs.build", "secure_etl.etl.destinations.postgres"],
    "dagster_one_pass": [
        "dagster",
        "secure_etl.defs.build",
        "secure_etl.etl.destinations.postgres",
    ],
}


def method_dagster_one_pass(work: Path, table: str, target: str) -> dict:
    return method_dagster(work, table, target, one_pass=True)


def _tree_rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (hash workers, ...), in KiB. A
    child still running its parent's program is being spawned (it shares the parent's
    memory until it execs) and is not counted."""

    def read(path: str) -> bytes:
        with open(path, "rb") as file:
            return file.read()

    total, todo, parents = 0, [pid], {}
    while todo:
        current = todo.pop()
        try:
            cmdline = read(f"/proc/{current}/cmdline")
            if current != pid and cmdline == parents.get(current):
                continue
            status = read(f"/proc/{current}/status").decode()
            total += next(
                (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")),
                0,
            )
            for task in os.listdir(f"/proc/{current}/task"):
                for c in read(f"/proc/{current}/task/{task}/children").split():
                    parents[int(c)] = cmdline
                    todo.append(int(c))
        except (OSError, ValueError):
            continue  # it ended meanwhile
    return total


class _TreePeak:
    """Samples the process tree's summed RSS every 20 ms in a thread; ``peak_kib``."""

    def __init__(self) -> None:
        import threading

        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            now = _tree_rss_kib(os.getpid())
            self.peak_kib = max(self.peak_kib, now)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kib


class _CollectorTime:
    """Seconds the process's cyclic garbage collector ran (every thread), and how many
    of its runs were full (generation 2) collections, between start and ``stop``."""

    def __init__(self) -> None:
        self.seconds, self.full, self._since = 0.0, 0, 0.0
        gc.callbacks.append(self._on)

    def _on(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._since = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._since
            self.full += info["generation"] == 2

    def stop(self) -> tuple[float, int]:
        gc.callbacks.remove(self._on)
        return self.seconds, self.full


def child(name: str, work: Path, table: str, target: str) -> None:
    import importlib

    for module in WARM[name]:
        importlib.import_module(module)
    tree = _TreePeak()
    collector = _CollectorTime()
    started = time.perf_counter()
    method = globals()[f"method_{name}"]
    if name in os.environ.get("BENCH_PROFILE", "").split(","):  # where the time goes, stderr
        import cProfile
        import pstats

        profile = cProfile.Profile()
        stages = profile.runcall(method, work, table, target) or {}
        pstats.Stats(profile, stream=sys.stderr).sort_stats("cumulative").print_stats(60)
    else:
        stages = method(work, table, target) or {}
    elapsed = time.perf_counter() - started
    gc_s, gc_full = collector.stop()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tree_kib = max(tree.stop(), peak_kib)
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "peak_rss_mib": peak_kib / 1024,
                "tree_peak_rss_mib": tree_kib / 1024,
                "gc_s": gc_s,
                "gc_full_collections": gc_full,
                **stages,
            }
        )
    )


# --- the harness ------------------------------------------------------------------------


def run_method(name: str, work: Path, table: str, target: str, env: dict) -> dict:
    argv = [sys.executable, __file__, "--child", name, str(work), table, target]
    if name in os.environ.get("BENCH_PYSPY", "").split(","):  # sampled, every thread
        out = Path(os.environ.get("BENCH_PYSPY_DIR", ".")) / f"pyspy-{name}.txt"
        spy = ["record", "--format", "raw", "--subprocesses", "--nonblocking", "-r", "100"]
        argv = ["py-spy", *spy, "-o", str(out), "--", *argv]
    result = subprocess.run(
        argv,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    if name in os.environ.get("BENCH_PROFILE", "").split(","):
        print(result.stderr, file=sys.stderr)
    [line] = [x for x in result.stdout.splitlines() if x.startswith("{")][-1:]  # py-spy's too
    print(f"{name}: {line}", file=sys.stderr)
    return json.loads(line)


def _count(server, table: str) -> int:
    return int(server.psql(f"SELECT count(*) FROM {table}", dbname="dst").strip())


def _dlt_table(server, target: str, table: str) -> str:
    return f"{target}.{table}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--big-rows",
        type=int,
        default=5_000_000,
        help="a second table, for our peak RSS as the table grows (0: skip)",
    )
    parser.add_argument("--skip", nargs="*", default=[], help="methods to leave out")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of every method in turn; the median time and the largest RSS count "
        "(a loaded machine)",
    )
    args = parser.parse_args()

    from secure_etl_tests.servers import postgres_for_platform

    with tempfile.TemporaryDirectory(prefix="etl-bench-") as tmp:
        work = Path(tmp)
        (work / "platform.yaml").write_text(yaml.safe_dump(_config(work, 5432, "t", 0)))
        server = postgres_for_platform(_platform(work), work / "pg")
        try:
            _bench(args, work, server)
        finally:
            server.stop()


def _bench(args, work: Path, server) -> None:
    server.psql('CREATE ROLE "etl-client.test" LOGIN SUPERUSER')
    server.psql("CREATE DATABASE src")
    server.psql("CREATE DATABASE dst")
    tables = {"src_small": args.rows}
    if args.big_rows:
        tables["src_big"] = args.big_rows
    for table, rows in tables.items():
        print(f"generating {rows} rows in src.{table} ...", file=sys.stderr, flush=True)
        server.psql(
            f"CREATE TABLE {table} (id bigint PRIMARY KEY, name text, email text, phone text, "
            "amount numeric(12,2), created_at timestamptz NOT NULL);"
            f"INSERT INTO {table} SELECT g, 'Name ' || md5(g::text), "
            "'user' || g || '@' || substr(md5(g::text), 1, 8) || '.example.com', "
            "'+49 30 ' || lpad((g::bigint * 7919 % 10000000)::text, 7, '0'), (g % 100000) / 100.0, "
            "timestamptz '2026-03-01 10:00+00' "
            f"+ (g * 3599.0 / {rows})::float8 * interval '1 second' "
            f"FROM generate_series(1, {rows}) g",
            dbname="src",
        )
        server.psql(f"VACUUM ANALYZE {table}", dbname="src")
        server.psql(
            f"CREATE TABLE {table}_shape (id bigint, name text, email text, phone text, "
            "amount numeric(12,2), created_at timestamptz)",
            dbname="dst",
        )
    (work / "platform.yaml").write_text(
        yaml.safe_dump(_config(work, server.port, "src_small", args.rows))
    )
    env = {**os.environ, "BENCH_HMAC_KEY": SECRET_HEX, "DAGSTER_HOME": str(work)}
    (work / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    every = (
        "floor",
        "ours",
        "ours_staged",
        "naive",
        "dlt",
        "dlt_pyarrow",
        "dagster",
        "dagster_one_pass",
    )
    methods = [m for m in every if m not in args.skip]
    rounds: dict[str, list[dict]] = {name: [] for name in methods}
    for round_ in range(args.repeat):
        for name in methods:
            print(f"running {name} (round {round_ + 1}) ...", file=sys.stderr, flush=True)
            target = f"{name}_{args.rows}_{round_}"
            rounds[name].append(run_method(name, work, "src_small", target, env))
            loaded = _count(server, f"{target}.src_small" if name.startswith("dlt") else target)
            if loaded != args.rows:
                raise SystemExit(f"{name} loaded {loaded} of {args.rows} rows")
    results = {}
    for name, runs in rounds.items():
        median = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        results[name] = {
            **median,
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "tree_peak_rss_mib": max(r["tree_peak_rss_mib"] for r in runs),
            "rows_per_s": args.rows / median["seconds"],
        }
    big = None
    if args.big_rows:
        print("running ours on the big table ...", file=sys.stderr, flush=True)
        big = run_method("ours", work, "src_big", f"ours_{args.big_rows}", env)
        if _count(server, f"ours_{args.big_rows}") != args.big_rows:
            raise SystemExit("ours did not load every row of the big table")

    print(
        f"\n{args.rows} rows, PostgreSQL -> PostgreSQL, verify-full + client certificate"
        f" (median of {args.repeat}; load average {os.getloadavg()[0]:.2f})"
    )
    ours_s = results["ours"]["seconds"] if "ours" in results else None
    print(
        f"{'method':<17}{'seconds':>9}{'rows/s':>11}{'peak RSS MiB':>14}"
        f"{'+children MiB':>15}{'x ours':>8}"
    )
    for name, r in results.items():
        ratio = f"{r['seconds'] / ours_s:>8.2f}" if ours_s and name.startswith("dagster") else ""
        print(
            f"{name:<17}{r['seconds']:>9.2f}{r['rows_per_s']:>11.0f}{r['peak_rss_mib']:>14.0f}"
            f"{r['tree_peak_rss_mib']:>15.0f}{ratio}"
        )
    if big:
        print(
            f"ours, {args.big_rows} rows: {big['seconds']:.2f} s, "
            f"peak RSS {big['peak_rss_mib']:.0f} MiB"
        )

    figures: dict[str, float | int] = {
        "rows": args.rows,
        "repeat": args.repeat,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    for name, r in results.items():
        figures[f"{name}_s"] = round(r["seconds"], 3)
        figures[f"{name}_rows_per_s"] = round(r["rows_per_s"])
        figures[f"{name}_peak_rss_mib"] = round(r["peak_rss_mib"], 1)
        figures[f"{name}_tree_peak_rss_mib"] = round(r["tree_peak_rss_mib"], 1)
        if "events" in r:
            figures[f"{name}_events"] = r["events"]
    ours = results.get("ours")
    if ours:
        for peer in ("floor", "naive", "dlt", "dlt_pyarrow"):
            if peer in results:
                figures[f"ours_ratio_vs_{peer}"] = round(
                    ours["rows_per_s"] / results[peer]["rows_per_s"], 3
                )
        for dagster, bare in (("dagster", "ours_staged"), ("dagster_one_pass", "ours")):
            if dagster in results:  # time x the bare pass (ours), and x its own functions
                figures[f"{dagster}_overhead_ratio"] = round(
                    results[dagster]["seconds"] / ours["seconds"], 3
                )
                if bare in results:
                    figures[f"{dagster}_ratio_vs_{bare}"] = round(
                        results[dagster]["seconds"] / results[bare]["seconds"], 3
                    )
    if big and ours:
        figures["big_rows"] = args.big_rows
        figures["ours_big_peak_rss_mib"] = round(big["peak_rss_mib"], 1)
        figures["ours_big_rows_per_s"] = round(args.big_rows / big["seconds"])
        figures["rss_ratio_big_vs_small"] = round(big["peak_rss_mib"] / ours["peak_rss_mib"], 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        main()
