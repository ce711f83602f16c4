"""The production instance (deploy/dagster.yaml): runs, events and schedules in a real
PostgreSQL reached over verify-full TLS with a client certificate; a run submitted to
the queue is dequeued by the running daemon and succeeds."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from secure_etl.pki.renewal import certificate_store, trust_bundle

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def production_home(platform, postgres_tls, tmp_path, monkeypatch):
    """A DAGSTER_HOME holding deploy/dagster.yaml, its URL in the environment."""
    postgres_tls.psql('CREATE DATABASE dagster OWNER "etl-client.test"')
    client = certificate_store(platform).paths("etl-client")
    url = (
        f"postgresql+psycopg2://{quote('etl-client.test')}@localhost:{postgres_tls.port}/dagster"
        f"?sslmode=verify-full&sslrootcert={trust_bundle(platform, 'db-server')}"
        f"&sslcert={client.cert}&sslkey={client.privkey}"
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", url)
    monkeypatch.setenv("SECURE_ETL_CONFIG", str(tmp_path / "platform.yaml"))
    return home


def _stop_group(process: subprocess.Popen) -> None:
    """The daemon and the code server it started; killed if they do not stop in 30 s."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def _wait_for(predicate, timeout_s: float, what: str, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout_s} s; daemon log:\n{log.read_text()[-3000:]}")


def test_a_queued_run_is_dequeued_by_the_daemon_and_succeeds_on_postgres(production_home, tmp_path):
    bin_dir = Path(sys.executable).parent
    log = tmp_path / "daemon.log"
    with DagsterInstance.get() as instance:
        coordinator = instance.run_coordinator
        assert type(coordinator).__name__ == "QueuedRunCoordinator"
        assert coordinator.dequeue_use_threads and coordinator.dequeue_interval_seconds == 2
        # What the daemon dequeues by: the instance's `concurrency` settings.
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config.max_concurrent_runs == 8
        renewals, pipelines, checks, renewal_runs = (
            concurrency.run_queue_config.tag_concurrency_limits
        )
        assert renewals["key"] == "secure_etl/renewal_of" and renewals["limit"] == 1
        # Pipelines never take every slot: a checks run and a renewal always find one.
        assert (pipelines["key"], pipelines["value"], pipelines["limit"]) == (
            "secure_etl/kind",
            "pipeline",
            3,
        )
        assert (checks["value"], checks["limit"]) == ("checks", 1)
        # Renewals retrying through an outage never take the checks run's slot.
        assert (renewal_runs["value"], renewal_runs["limit"]) == ("renewal", 4)
        assert pipelines["limit"] + checks["limit"] + renewal_runs["limit"] == 8
        assert concurrency.pool_config.default_pool_limit == 1  # one load per database
        # The runs of one sensor tick are submitted in parallel (a renewal of several
        # certificates at once must not make the tick slow).
        sensors = instance.get_settings("sensors")
        assert sensors["use_threads"] and sensors["num_submit_workers"] >= 2
        assert "postgres" in type(instance.run_storage).__module__

        with log.open("wb") as out:
            daemon = subprocess.Popen(
                [str(bin_dir / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its code server is in the group: stop both
            )
        try:
            launched = subprocess.run(
                [str(bin_dir / "dagster"), "job", "launch", "-w", str(ROOT / "workspace.yaml")]
                + ["-j", "certificate_renewal"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert launched.returncode == 0, launched.stderr
            [run] = instance.get_runs(limit=1)
            finished = _wait_for(
                lambda: (r := instance.get_run_by_id(run.run_id)).is_finished and r,
                180,
                "the run did not finish",
                log,
            )
        finally:
            _stop_group(daemon)
        assert finished.status == DagsterRunStatus.SUCCESS, finished.status
        assert finished.tags["secure_etl/kind"] == "renewal"  # what the queue limits by
        events = {
            e.dagster_event.event_type for e in instance.all_logs(run.run_id) if e.is_dagster_event
        }
        # Through the queue: enqueued by `job launch`; only the daemon starts queued runs.
        assert {DagsterEventType.RUN_ENQUEUED, DagsterEventType.RUN_STARTING} <= events
        assert DagsterEventType.ASSET_MATERIALIZATION in events


def test_two_runs_creating_one_concurrency_pool_at_once_both_claim_it_on_postgres(
    production_home,
):
    """A pool's first claim creates its row (INSERT, then UPDATE on a unique violation).
    A second claimer whose INSERT meets the row another run committed a moment before —
    here simply a second creation of the same pool — must not fail: on PostgreSQL
    Dagster's own class sends its UPDATE in the aborted transaction and raises."""
    from dagster_postgres.event_log import PostgresEventLogStorage as DagsterEventLog
    from sqlalchemy import exc as db_exc

    from secure_etl.defs.postgres_storage import PostgresEventLogStorage

    with DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        assert type(storage) is PostgresEventLogStorage  # what deploy/dagster.yaml names
        pool = "load/postgres/localhost:5432/warehouse"
        assert storage.initialize_concurrency_limit_to_default(pool)
        # The race's second claimer: the row is there when its INSERT runs.
        assert storage.initialize_concurrency_limit_to_default(pool)
        info = storage.get_concurrency_info(pool)
        assert info.slot_count == 1  # concurrency.pools.default_limit, slots allocated once

        dagsters = DagsterEventLog(os.environ["DAGSTER_POSTGRES_URL"])
        dagsters.register_instance(instance)
        with pytest.raises(db_exc.DBAPIError, match="current transaction is aborted"):
            dagsters.initialize_concurrency_limit_to_default(pool)
        dagsters.dispose()


def test_the_production_storages_keep_a_connection_instead_of_one_per_call(
    production_home, postgres_tls
):
    """Every storage call of dagster-postgres's classes opens a TLS connection with a
    client certificate (a handshake and a server backend each); ours keep one per
    storage, and a server restarted meanwhile costs a reconnect, not an error."""
    from dagster import AssetKey, RunsFilter
    from dagster_postgres.run_storage import PostgresRunStorage as DagsterRunStorage
    from sqlalchemy import event

    from secure_etl.defs import postgres_storage as ours

    certificate = AssetKey(["certificates", "etl-client"])

    def counting(engine) -> list:
        opened: list = []
        event.listen(engine, "connect", lambda *_: opened.append(1))
        return opened

    def calls(instance) -> None:
        for _ in range(10):
            instance.get_run_records(RunsFilter(job_name="certificate_renewal"), limit=1)
            instance.all_instigator_state()
            instance.get_latest_materialization_event(certificate)
            instance.get_runs_count()

    with DagsterInstance.get() as instance:
        storages = {
            "run": instance.run_storage,
            "event log": instance.event_log_storage,
            "schedule": instance.schedule_storage,
        }
        assert [type(s) for s in storages.values()] == [
            ours.PostgresRunStorage,
            ours.PostgresEventLogStorage,
            ours.PostgresScheduleStorage,
        ]  # what deploy/dagster.yaml names
        opened = {name: counting(s._engine) for name, s in storages.items()}
        calls(instance)
        assert {name: len(o) for name, o in opened.items()} == {
            "run": 1,
            "event log": 1,
            "schedule": 1,
        }
        postgres_tls.restart()
        calls(instance)  # the pooled connections died with the server: checked, replaced
        assert all(len(o) == 2 for o in opened.values()), opened

    dagsters = DagsterRunStorage(os.environ["DAGSTER_POSTGRES_URL"])
    opened = counting(dagsters._engine)
    for _ in range(10):
        dagsters.get_runs_count()
    assert len(opened) == 10  # the peer: a connection per call
    dagsters.dispose()
