"""Certificate checks at scale: a few ops for many certificates, run in process, and a
renewal sensor whose cursor stays a few numbers long (one query, only what is new)."""

from __future__ import annotations

import json

from dagster import in_process_executor

from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import (
    CERTIFICATES_PER_OP,
    CHECKS_JOB,
    RENEWAL_JOB,
    certificate_checks,
)
from secure_etl.defs.check_state import EvaluationCursor, _ranges, new_check_evaluations
from secure_etl.defs.names import certificate_check_keys
from secure_etl.defs.resources import resource_key


def test_many_certificates_share_a_few_subsettable_check_ops(platform):
    names = [f"c-{i:03d}" for i in range(CERTIFICATES_PER_OP + 5)]
    template = platform.certificates["db-server"]
    many = platform.model_copy(update={"certificates": {n: template for n in names}})
    ops = certificate_checks(many)
    assert len(ops) == 2
    assert all(op.can_subset for op in ops)
    # Every certificate keeps every one of its checks, each defined once.
    keys = [key for op in ops for key in op.check_keys]
    assert len(keys) == len(set(keys))
    assert set(keys) == {k for n in names for k in certificate_check_keys(many, n)}


def test_the_checks_job_runs_in_process_and_only_used_resources_are_registered(platform):
    defs = build_definitions(platform)
    assert defs.resolve_job_def(CHECKS_JOB).executor_def is in_process_executor
    # The pipeline's client certificate is a resource; the server certificate is not.
    resources = defs.get_repository_def().get_top_level_resources()
    assert resource_key("etl-client") in resources
    assert resource_key("db-server") not in resources


def test_the_evaluation_cursor_knows_what_is_new_in_a_few_numbers():
    cursor = EvaluationCursor(after=100, waiting=_ranges([7, 8, 9, 40]))
    assert cursor.waiting == ((7, 9), (40, 40))
    assert [cursor.is_new(i) for i in (6, 7, 9, 10, 40, 100, 101)] == [
        False,
        True,
        True,
        False,
        True,
        False,
        True,
    ]
    again, legacy = EvaluationCursor.from_json(cursor.to_json())
    assert again == cursor and legacy is None
    # A cursor of the earlier form (check -> the execution seen last) is read once.
    old, legacy = EvaluationCursor.from_json(json.dumps({"certificates/a:expiry_window": 5}))
    assert old == EvaluationCursor() and legacy == {"certificates/a:expiry_window": 5}


def test_each_evaluation_is_new_once_and_the_cursor_stays_small(platform, instance):
    defs = build_definitions(platform)
    keys = [k for n in platform.certificates for k in certificate_check_keys(platform, n)]
    job = defs.resolve_job_def(CHECKS_JOB)
    job.execute_in_process(instance=instance)

    fresh, cursor = new_check_evaluations(instance, keys, None)
    assert {e.key for e in fresh} == set(keys)
    assert not any(e.passed for e in fresh)  # nothing issued yet
    assert len(cursor) < 60, cursor

    nothing, same = new_check_evaluations(instance, keys, cursor)
    assert nothing == [] and json.loads(same) == json.loads(cursor)

    job.execute_in_process(instance=instance)
    second, later = new_check_evaluations(instance, keys, cursor)
    assert {e.key for e in second} == set(keys)
    assert min(e.storage_id for e in second) > max(e.storage_id for e in fresh)
    assert len(later) < 60, later

    # The earlier per-check cursor: what it saw is not new, the rest is.
    seen = {e.key.to_user_string(): e.storage_id for e in second if e.key.name != "expiry_window"}
    legacy, _ = new_check_evaluations(instance, keys, json.dumps(seen))
    assert {e.key.name for e in legacy} == {"expiry_window"}


def test_the_sensor_reads_only_the_failed_evaluations_since_its_cursor(platform, instance):
    defs = build_definitions(platform)
    keys = [k for n in platform.certificates for k in certificate_check_keys(platform, n)]
    _, start = new_check_evaluations(instance, keys, None)
    defs.resolve_job_def(CHECKS_JOB).execute_in_process(instance=instance)  # none issued
    failed, after_checks = new_check_evaluations(instance, keys, start, failed_only=True)
    assert {e.key for e in failed} == set(keys) and not any(e.passed for e in failed)

    defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)  # all pass now
    none_failed, _ = new_check_evaluations(instance, keys, after_checks, failed_only=True)
    passed, _ = new_check_evaluations(instance, keys, after_checks)
    assert none_failed == []
    assert {e.key for e in passed} == set(keys) and all(e.passed for e in passed)
