"""renew_many: many certificates over forked worker processes, each with its threads."""

from __future__ import annotations

import copy
import os

import pytest

from secure_etl.config import load_config
from secure_etl.pki import bulk
from secure_etl.pki.renewal import certificate_store, inspect_current
from secure_etl.security.audit_trail import platform_audit_log, read_records, verify_log
from secure_etl_tests.conftest import BASE_CONFIG

COUNT = 2 * bulk.MIN_PER_PROCESS + 3  # two processes' worth, and a short last chunk


@pytest.fixture
def many(write_config, monkeypatch):
    """An internal-CA platform of COUNT certificates; renew_many sees two CPUs."""
    monkeypatch.delenv("SECURE_ETL_STATE_DIR", raising=False)
    monkeypatch.setattr(bulk, "usable_cpus", lambda: 2)
    data = copy.deepcopy(BASE_CONFIG)
    data["pipelines"] = {}
    template = data["certificates"]["db-server"]
    data["certificates"] = {
        f"svc-{i:03d}": dict(template, identifiers=[f"svc{i}.internal.test"]) for i in range(COUNT)
    }
    return load_config(write_config(data))


def test_how_many_processes_share_the_work():
    per = bulk.MIN_PER_PROCESS
    assert bulk.worker_processes(1000, 8, cpus=2) == 2
    assert bulk.worker_processes(1000, 8, cpus=16) == 8  # never more than --jobs
    assert bulk.worker_processes(1000, 1, cpus=2) == 1  # --jobs 1: one at a time, here
    assert bulk.worker_processes(2 * per - 1, 8, cpus=2) == 1  # too few to fork for
    assert bulk.worker_processes(3, 8, cpus=2) == 1


def test_many_certificates_are_issued_across_processes_in_order_and_audited(many):
    names = list(many.certificates)
    assert bulk.worker_processes(len(names), 8) == 2
    outcomes = list(bulk.renew_many(many, names, jobs=8))

    assert [name for name, _, _ in outcomes] == names  # in the order asked
    assert [err for _, _, err in outcomes] == [None] * COUNT
    assert {result.outcome for _, result, _ in outcomes} == {"issued"}
    store = certificate_store(many)
    for name, result, _ in outcomes:
        assert store.current_version(name) == result.version
        assert all(r.passed for r in inspect_current(many, name)), name
    # Both processes appended to one log: an intent and an outcome for each, one chain.
    log = platform_audit_log(many)
    assert verify_log(log).ok, verify_log(log).problem
    installed = [r for r in read_records(log) if r["action"] == "certificate.issued"]
    assert sorted(r["asset"] for r in installed) == [f"certificates/{n}" for n in names]

    again = list(bulk.renew_many(many, names, jobs=8))
    assert {result.outcome for _, result, _ in again} == {"not_due"}


def test_a_certificate_that_fails_in_a_worker_is_reported_and_the_others_go_on(many, monkeypatch):
    names = list(many.certificates)
    real = bulk.ensure_certificate

    def ensure(config, name, **kwargs):
        if name == names[40]:
            raise ValueError("the issuer refused svc-040")
        return real(config, name, **kwargs)

    # Set before the workers fork, so they inherit it.
    monkeypatch.setattr(bulk, "ensure_certificate", ensure)
    outcomes = {name: (result, err) for name, result, err in bulk.renew_many(many, names)}
    assert outcomes[names[40]] == (None, "the issuer refused svc-040")
    assert all(result is not None for n, (result, _) in outcomes.items() if n != names[40])
    assert not certificate_store(many).has_current(names[40])


def test_a_worker_process_that_dies_fails_what_it_had_not_reported(many, monkeypatch):
    names = list(many.certificates)
    real = bulk.ensure_certificate
    parent = os.getpid()

    def ensure(config, name, **kwargs):
        if name == names[-1]:
            # Only ever in a worker: here, in the test's own process, it fails plainly.
            if os.getpid() == parent:
                raise AssertionError("renew_many renewed in this process, not a worker")
            os._exit(9)  # killed between two certificates, as the OOM killer would
        return real(config, name, **kwargs)

    monkeypatch.setattr(bulk, "ensure_certificate", ensure)
    outcomes = list(bulk.renew_many(many, names, jobs=8))

    assert [name for name, _, _ in outcomes] == names  # every name has an outcome
    failed = [(name, err) for name, result, err in outcomes if result is None]
    assert names[-1] in dict(failed)
    assert all("worker process died" in err for _, err in failed)
    # What was reported before the worker died was installed and stays.
    store = certificate_store(many)
    assert all(store.has_current(name) for name, result, _ in outcomes if result is not None)
    assert len(failed) < len(names)
