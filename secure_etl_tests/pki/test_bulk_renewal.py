"""renew_many: many certificates over forked worker processes, each with its threads."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest

from secure_etl.config import load_config
from secure_etl.pki import bulk
from secure_etl.pki.renewal import certificate_store, inspect_current
from secure_etl.security.audit_trail import platform_audit_log, read_records, verify_log
from secure_etl_tests.conftest import BASE_CONFIG

COUNT = 2 * bulk.MIN_PER_PROCESS + 3  # two processes' worth, and a short last chunk


# renew_many in a fresh interpreter: forking is only for a process with no other thread,
# and this test process has the shared servers' threads. It sees two CPUs; `mode`
# "fail" makes one certificate raise, "die" kills the worker that renews the last one.
DRIVER = """
import json, os, sys
from secure_etl.config import load_config
from secure_etl.pki import bulk
config_path, mode = sys.argv[1:]
config = load_config(config_path)
names = list(config.certificates)
bulk.usable_cpus = lambda: 2
real, parent = bulk.ensure_certificate, os.getpid()
def ensure(config, name, **kwargs):
    if mode == "fail" and name == names[40]:
        raise ValueError("the issuer refused " + name)
    if mode == "die" and name == names[-1]:
        if os.getpid() == parent:
            raise AssertionError("renewed in the calling process, not a worker")
        os._exit(9)  # killed between two certificates, as the OOM killer would
    return real(config, name, **kwargs)
bulk.ensure_certificate = ensure  # before the workers fork: they inherit it
processes = bulk.worker_processes(len(names), 8)
outcomes = [
    [name, result and {"outcome": result.outcome, "version": result.version}, err]
    for name, result, err in bulk.renew_many(config, names, jobs=8)
]
print(json.dumps({"processes": processes, "outcomes": outcomes}))
"""


@pytest.fixture
def many(write_config, monkeypatch):
    """An internal-CA platform of COUNT certificates."""
    monkeypatch.delenv("SECURE_ETL_STATE_DIR", raising=False)
    data = copy.deepcopy(BASE_CONFIG)
    data["pipelines"] = {}
    template = data["certificates"]["db-server"]
    data["certificates"] = {
        f"svc-{i:03d}": dict(template, identifiers=[f"svc{i}.internal.test"]) for i in range(COUNT)
    }
    path = write_config(data)
    return path, load_config(path)


def _renew_many(config_path, mode: str = "") -> list:
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, str(config_path), mode],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["processes"] == 2  # the work was spread over two worker processes
    return report["outcomes"]


def test_how_many_processes_share_the_work():
    per = bulk.MIN_PER_PROCESS
    assert bulk.worker_processes(1000, 8, cpus=2) == 2
    assert bulk.worker_processes(1000, 8, cpus=16) == 8  # never more than --jobs
    assert bulk.worker_processes(1000, 1, cpus=2) == 1  # --jobs 1: one at a time, here
    assert bulk.worker_processes(2 * per - 1, 8, cpus=2) == 1  # too few to fork for
    assert bulk.worker_processes(3, 8, cpus=2) == 1


def test_many_certificates_are_issued_across_processes_in_order_and_audited(many):
    path, platform = many
    names = list(platform.certificates)
    outcomes = _renew_many(path)

    assert [name for name, _, _ in outcomes] == names  # in the order asked
    assert [err for _, _, err in outcomes] == [None] * COUNT
    assert {result["outcome"] for _, result, _ in outcomes} == {"issued"}
    store = certificate_store(platform)
    for name, result, _ in outcomes:
        assert store.current_version(name) == result["version"]
        assert all(r.passed for r in inspect_current(platform, name)), name
    # Both processes appended to one log: an intent and an outcome for each, one chain.
    log = platform_audit_log(platform)
    assert verify_log(log).ok, verify_log(log).problem
    installed = [r for r in read_records(log) if r["action"] == "certificate.issued"]
    assert sorted(r["asset"] for r in installed) == [f"certificates/{n}" for n in names]

    again = _renew_many(path)
    assert {result["outcome"] for _, result, _ in again} == {"not_due"}


def test_a_certificate_that_fails_in_a_worker_is_reported_and_the_others_go_on(many):
    path, platform = many
    names = list(platform.certificates)
    outcomes = {name: (result, err) for name, result, err in _renew_many(path, "fail")}
    assert outcomes[names[40]] == (None, f"the issuer refused {names[40]}")
    assert all(result is not None for n, (result, _) in outcomes.items() if n != names[40])
    assert not certificate_store(platform).has_current(names[40])


def test_a_worker_process_that_dies_fails_what_it_had_not_reported(many):
    path, platform = many
    names = list(platform.certificates)
    outcomes = _renew_many(path, "die")

    assert [name for name, _, _ in outcomes] == names  # every name has an outcome
    failed = [(name, err) for name, result, err in outcomes if result is None]
    assert names[-1] in dict(failed)
    assert all("worker process died" in err for _, err in failed)
    # What was reported before the worker died was installed and stays.
    store = certificate_store(platform)
    assert all(store.has_current(name) for name, result, _ in outcomes if result is not None)
    assert len(failed) < len(names)


def test_a_process_with_other_threads_renews_in_threads_only():
    import threading

    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert bulk.worker_processes(1000, 8, cpus=2) == 1
    finally:
        stop.set()
        other.join()
    assert bulk.worker_processes(1000, 8, cpus=2) == 2


def test_ctrl_c_stops_a_bulk_renewal_in_one_line_and_a_rerun_completes_it(many):
    import signal

    path, platform = many
    names = list(platform.certificates)
    command = [sys.executable, "-m", "secure_etl.cli", "certs", "renew", "--all"]
    renewal = subprocess.Popen(
        [*command, "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first = renewal.stdout.readline()  # running: the first outcomes are in
        assert first.startswith(names[0] + ": issued"), first
        os.killpg(renewal.pid, signal.SIGINT)  # Ctrl-C: the command and its workers
        out, err = renewal.communicate(timeout=60)
    finally:
        if renewal.poll() is None:
            os.killpg(renewal.pid, signal.SIGKILL)
    assert renewal.returncode == 130, (out, err)
    assert err == "secure-etl: interrupted\n"

    store = certificate_store(platform)
    for name in names:  # whatever was installed is whole
        if store.has_current(name):
            assert all(r.passed for r in inspect_current(platform, name)), name
    rerun = subprocess.run(
        [*command, "--config", str(path)], capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"{COUNT}/{COUNT} succeeded" in rerun.stdout
