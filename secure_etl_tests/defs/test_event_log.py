"""The repository's instance (dagster.yaml): Dagster's SQLite event log with one pooled
engine per database file. The same files and answers as Dagster's class, several
processes writing at once, the web server's live run view, a wiped home."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from dagster import AssetCheckEvaluation, AssetCheckKey, AssetKey, DagsterEventType, DagsterInstance
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationPlanned,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData as TargetMaterialization,
)
from dagster._core.events import DagsterEvent
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

import secure_etl_tests.defs.test_checks_at_scale as checks_at_scale
import secure_etl_tests.defs.test_renewal_loop as renewal_loop
from secure_etl.config import load_config
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import CHECKS_JOB
from secure_etl.defs.event_log import PooledSqliteEventLogStorage
from secure_etl.defs.names import certificate_check_keys

REPO = Path(__file__).resolve().parents[2]
CHECKS_PER_CERT = 8


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    return home


@pytest.fixture
def repo_instance(tmp_path):
    with DagsterInstance.from_config(str(_home(tmp_path))) as instance:
        yield instance


def _many_certificates(write_config, n: int) -> Path:
    """A config of ``n`` certificates never issued: each check fails at once (nothing to
    inspect), so a checks run is mostly the writing of its evaluations."""
    return write_config(
        {
            "issuers": {"test-ca": {"type": "internal_ca", "lifetime_days": 30}},
            "certificates": {
                f"c-{i:03d}": {"issuer": "test-ca", "use": "server", "identifiers": [f"c{i}.test"]}
                for i in range(n)
            },
            "pipelines": {},
        }
    )


def _evaluations(instance, run_id: str) -> list:
    return instance.get_records_for_run(
        run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION, limit=100_000
    ).records


def test_the_repository_instance_keeps_dagsters_files_on_one_engine_per_file(
    repo_instance, platform
):
    storage = repo_instance.event_log_storage
    assert isinstance(storage, PooledSqliteEventLogStorage)
    runs_dir = Path(repo_instance.root_directory) / "history" / "runs"
    assert Path(storage._base_dir) == runs_dir  # where Dagster's own class keeps them

    job = build_definitions(platform).resolve_job_def(CHECKS_JOB)
    result = job.execute_in_process(instance=repo_instance)
    assert result.success
    n = len(result.get_asset_check_evaluations())
    assert n == len(platform.certificates) * CHECKS_PER_CERT
    assert (runs_dir / f"{result.run_id}.db").is_file()

    # Every evaluation went through the run's one engine and the index's one engine.
    run_engine = storage._shards[result.run_id].engine
    index_engine = storage._shards["index"].engine
    job.execute_in_process(instance=repo_instance)
    with storage.run_connection(result.run_id) as conn:
        (synchronous,) = conn.exec_driver_sql("PRAGMA synchronous").one()
        (mode,) = conn.exec_driver_sql("PRAGMA journal_mode").one()
    assert storage._shards[result.run_id].engine is run_engine
    assert storage._shards["index"].engine is index_engine
    assert (mode, synchronous) == ("wal", 1)  # NORMAL, as dagster.yaml says

    # A fresh instance (another process, or Dagster's own class) reads the same.
    assert len(_evaluations(repo_instance, result.run_id)) == n
    with DagsterInstance.from_config(repo_instance.root_directory) as other:
        assert len(_evaluations(other, result.run_id)) == n
    with contextlib.closing(sqlite3.connect(runs_dir / "index.db")) as db:
        ((executions,),) = db.execute("SELECT count(*) FROM asset_check_executions")
    assert executions == 2 * n


def test_a_temporary_home_as_plain_dagster_dev_makes_gets_its_events_too(tmp_path):
    """`dagster dev` without DAGSTER_HOME reads the repository's dagster.yaml and keeps
    its state in a temporary directory: the shards go there, not to a fixed place."""
    from dagster._core.instance.ref import InstanceRef

    ref = InstanceRef.from_dir(str(tmp_path), config_dir=str(REPO))
    with DagsterInstance.from_ref(ref) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, PooledSqliteEventLogStorage)
        assert Path(storage._base_dir) == tmp_path / "history" / "runs"
        assert (tmp_path / "history" / "runs" / "index.db").is_file()


def test_the_renewal_loop_on_the_repository_instance(platform, repo_instance):
    renewal_loop.test_a_failed_check_is_renewed_by_the_run_the_sensor_requests(
        platform, repo_instance
    )


def test_the_sensors_cursor_on_the_repository_instance(platform, repo_instance):
    checks_at_scale.test_each_evaluation_is_new_once_and_the_cursor_stays_small(
        platform, repo_instance
    )
    checks_at_scale.test_the_sensor_reads_only_the_failed_evaluations_since_its_cursor(
        platform, repo_instance
    )


WRITER = """
import json, sys, time
from pathlib import Path
from dagster import DagsterInstance
from secure_etl.config import load_config
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import CHECKS_JOB

def wait_for(path):
    deadline = time.monotonic() + 120
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)

config, home, me, other, run_id, release = sys.argv[1:]
job = build_definitions(load_config(config)).resolve_job_def(CHECKS_JOB)
with DagsterInstance.from_config(home) as instance:
    Path(home, me).touch()  # ready: the two writers start together
    wait_for(Path(home, other))
    result = job.execute_in_process(instance=instance, run_id=run_id or None)
    print(json.dumps({"run_id": result.run_id, "success": result.success}), flush=True)
    if release:  # the instance (its connections) stays open until then
        wait_for(Path(home, release))
"""


def _writer(config: Path, home: Path, me: str, other: str, run_id: str = "", release: str = ""):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in ("DAGSTER_HOME", "SECURE_ETL_STATE_DIR"):
        env.pop(name, None)
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(config), str(home), me, other, run_id, release],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finished(proc) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_two_processes_write_one_instance_at_once_and_every_event_is_kept(
    tmp_path, write_config, monkeypatch
):
    monkeypatch.delenv("SECURE_ETL_STATE_DIR", raising=False)
    n = 60
    config = _many_certificates(write_config, n)
    home = _home(tmp_path)
    # Dagster's run and schedule storages create their tables without retrying a
    # concurrent creation: the home is made once, as `dagster instance migrate` would.
    DagsterInstance.from_config(str(home)).dispose()
    procs = [_writer(config, home, "a", "b"), _writer(config, home, "b", "a")]
    try:
        runs = [_finished(p) for p in procs]
    finally:  # none left waiting for the other (and writing into a later test's home)
        for proc in procs:
            proc.kill()
            proc.wait()
    assert all(r["success"] for r in runs)

    platform = load_config(config)
    with DagsterInstance.from_config(str(home)) as instance:
        spans = []
        for run in runs:
            records = _evaluations(instance, run["run_id"])
            assert len(records) == n * CHECKS_PER_CERT
            assert len({r.storage_id for r in records}) == n * CHECKS_PER_CERT
            stamps = [r.event_log_entry.timestamp for r in records]
            spans.append((min(stamps), max(stamps)))
        # The two runs wrote at the same time (into the same index database).
        (a_start, a_end), (b_start, b_end) = spans
        assert a_start < b_end and b_start < a_end, spans

        # The index has each check's execution in both runs, none lost to the other.
        run_ids = {r["run_id"] for r in runs}
        for name in platform.certificates:
            for key in certificate_check_keys(platform, name):
                history = instance.event_log_storage.get_asset_check_execution_history(
                    key, limit=10
                )
                assert {h.run_id for h in history} == run_ids, key
        mirrored = instance.fetch_run_status_changes(DagsterEventType.RUN_SUCCESS, limit=10)
        assert {r.event_log_entry.run_id for r in mirrored.records} == run_ids


def test_a_watcher_sees_every_event_another_process_writes(tmp_path, write_config, monkeypatch):
    """The web server's live run view watches the run's database file (Dagster's
    watcher); pooled connections write only the WAL, and it must still be told."""
    monkeypatch.delenv("SECURE_ETL_STATE_DIR", raising=False)
    config = _many_certificates(write_config, 5)
    home = _home(tmp_path)
    run_id = str(uuid.uuid4())
    seen: list = []
    done = threading.Event()

    def on_event(entry, _cursor):
        seen.append(entry)
        if entry.dagster_event_type == DagsterEventType.RUN_SUCCESS:
            done.set()

    with DagsterInstance.from_config(str(home)) as instance:
        instance.watch_event_logs(run_id, None, on_event)
        (home / "watcher").touch()
        proc = _writer(config, home, "writer", "watcher", run_id, release="release")
        try:
            line = proc.stdout.readline()  # the run is over; its process still holds it open
            assert json.loads(line)["success"], proc.stderr.read()[-3000:]
            # Told while the writer runs, not when its last connection closes.
            assert done.wait(60), f"the watcher saw {len(seen)} events and no RUN_SUCCESS"
        finally:
            (home / "release").touch()
            try:
                proc.communicate(timeout=120)
            finally:
                proc.kill()
                proc.wait()
        stored = instance.get_records_for_run(run_id, limit=100_000).records
        assert len(stored) > 5 * CHECKS_PER_CERT
        assert [e.timestamp for e in seen] == [r.event_log_entry.timestamp for r in stored]
        instance.end_watch_event_logs(run_id, on_event)


def test_a_home_wiped_by_another_instance_is_written_afresh(tmp_path, platform):
    """One instance keeps its engines; another (as another process would) wipes the home:
    the first writes its next run into the new files, not into the removed ones."""
    home = _home(tmp_path)
    job = build_definitions(platform).resolve_job_def(CHECKS_JOB)
    n = len(platform.certificates) * CHECKS_PER_CERT
    with (
        DagsterInstance.from_config(str(home)) as first,
        DagsterInstance.from_config(str(home)) as second,
    ):
        before = job.execute_in_process(instance=first)
        assert len(_evaluations(second, before.run_id)) == n
        second.wipe()  # removes the run's file under the first instance's open engine
        assert not _evaluations(second, before.run_id)
        after = job.execute_in_process(instance=first, run_id=before.run_id)
        assert len(_evaluations(second, after.run_id)) == n
        assert len(_evaluations(first, after.run_id)) == n
        key = certificate_check_keys(platform, "db-server")[0]
        history = second.event_log_storage.get_asset_check_execution_history(key, limit=5)
        assert len(history) == 1


def _check_event(run_id: str, at: float, data) -> EventLogEntry:
    planned = isinstance(data, AssetCheckEvaluationPlanned)
    kind = "ASSET_CHECK_EVALUATION_PLANNED" if planned else "ASSET_CHECK_EVALUATION"
    return EventLogEntry(
        error_info=None,
        level=logging.DEBUG,
        user_message="",
        run_id=run_id,
        timestamp=at,
        step_key="inspect",
        job_name="checks",
        dagster_event=DagsterEvent(
            event_type_value=DagsterEventType[kind].value,
            job_name="checks",
            step_key=None if planned else "inspect",
            event_specific_data=data,
        ),
    )


# Columns the database stamps with the time a row was made (not the event's time).
_STAMPED_WHEN_WRITTEN = {"create_timestamp", "migration_completed"}


def _tables(path: Path) -> dict[str, list[tuple]]:
    """Every table of a database file with its rows, but the columns stamped when written."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        names = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        tables = {}
        for name in names:
            cursor = db.execute(f'SELECT * FROM "{name}" ORDER BY rowid')  # noqa: S608 (its own)
            keep = [
                i for i, c in enumerate(cursor.description) if c[0] not in _STAMPED_WHEN_WRITTEN
            ]
            tables[name] = [tuple(row[i] for i in keep) for row in cursor]
        return tables


def test_a_check_evaluation_is_stored_and_read_back_as_dagsters_own_class_does(tmp_path):
    """The check evaluations of an op job (no planned event), of an asset job (the planned
    event's row is completed), failed, against a materialization, of a partition: stored
    by both classes, the same rows in the same tables, read back the same."""
    asset = AssetKey(["certificates", "web"])
    target = TargetMaterialization(storage_id=7, run_id="r0", timestamp=1_700_000_000.0)
    op_run, asset_run = "op-run", "asset-run"
    events = [
        _check_event(
            asset_run,
            1_700_000_001.0,
            AssetCheckEvaluationPlanned(asset_key=asset, check_name="expiry"),
        ),
        _check_event(op_run, 1_700_000_002.0, AssetCheckEvaluation(asset, "expiry", passed=True)),
        _check_event(
            op_run,
            1_700_000_003.0,
            AssetCheckEvaluation(
                asset,
                "chain",
                passed=False,
                description="signed by an unknown CA",
                target_materialization_data=target,
            ),
        ),
        _check_event(
            op_run,
            1_700_000_004.0,
            AssetCheckEvaluation(asset, "served", passed=True, partition="2026-12-03"),
        ),
        _check_event(
            asset_run,
            1_700_000_005.0,
            AssetCheckEvaluation(asset, "expiry", passed=False, target_materialization_data=target),
        ),
    ]
    dagsters = SqliteEventLogStorage(str(tmp_path / "dagster"))
    ours = PooledSqliteEventLogStorage(str(tmp_path / "ours"))
    try:
        for storage in (dagsters, ours):
            for event in events:
                storage.store_event(event)

        for shard in ("index", op_run, asset_run):
            expected = _tables(tmp_path / "dagster" / f"{shard}.db")
            assert _tables(tmp_path / "ours" / f"{shard}.db") == expected, shard
        executions = _tables(tmp_path / "ours" / "index.db")["asset_check_executions"]
        assert len(executions) == 4  # the asset job's planned row completed, not doubled

        def read_back(storage) -> list:
            keys = [AssetCheckKey(asset, name) for name in ("expiry", "chain", "served")]
            history = [storage.get_asset_check_execution_history(k, limit=10) for k in keys]
            summaries = storage.get_asset_check_summary_records(keys)
            latest = [s.last_check_execution_record for s in summaries.values()]
            runs = [storage.get_records_for_run(r).records for r in (op_run, asset_run)]
            return [
                [r._replace(create_timestamp=0.0) for r in [*sum(history, []), *latest]],
                runs,
            ]

        assert read_back(ours) == read_back(dagsters)
    finally:
        dagsters.dispose()
        ours.dispose()
