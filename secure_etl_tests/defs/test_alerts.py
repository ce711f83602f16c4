"""Alerts for failed and recovered checks and failed runs, delivered to a real local
HTTP receiver (Slack format and JSON webhook) and a real SMTP server (aiosmtpd) over
STARTTLS."""

from __future__ import annotations

import copy
import email
import email.policy
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from dagster import build_run_status_sensor_context, build_sensor_context, job, op

from secure_etl.config import load_config
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import CHECKS_JOB, RENEWAL_JOB
from secure_etl.monitor.notify import Channel, DeliveryError, Notification, deliver
from secure_etl.pki.internal_ca import InternalCA
from secure_etl.pki.keys import generate_private_key
from secure_etl_tests.servers import free_port


class Receiver:
    """Records every JSON POST by path; answers 500 to the first ``fail`` requests."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict]] = []
        self.fail = 0
        self.attempts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                receiver.attempts += 1
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.fail > 0:
                    receiver.fail -= 1
                    self.send_response(500)
                else:
                    receiver.posts.append((self.path, json.loads(body)))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def by_path(self, path: str) -> list[dict]:
        return [body for p, body in self.posts if p == path]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def smtp(tmp_path):
    """aiosmtpd on loopback with STARTTLS required, its certificate from a test CA."""
    from aiosmtpd.controller import Controller

    ca = InternalCA("smtp-test", tmp_path / "smtp-ca", common_name="smtp test CA")
    ca.ensure_root()
    key = generate_private_key("ec256")
    issued = ca.issue(["127.0.0.1"], "server", key)
    (tmp_path / "smtp.pem").write_bytes(issued.cert_pem)
    (tmp_path / "smtp.key").write_bytes(issued.key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "smtp.pem", tmp_path / "smtp.key")

    class Handler:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
            self.messages.append(
                email.message_from_bytes(envelope.content, policy=email.policy.default)
            )
            return "250 OK"

    handler = Handler()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=context,
        require_starttls=True,
    )
    controller.start()
    controller.ca_bundle = str(ca.root_path)
    controller.messages = handler.messages
    yield controller
    controller.stop()


def _alerting_config(write_config, receiver, smtp, monkeypatch, **alerts):
    monkeypatch.setenv("TEST_SLACK_URL", receiver.url("/slack"))
    monkeypatch.setenv("TEST_HOOK_URL", receiver.url("/hook"))
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["alerts"] = {
        "channels": [
            {"type": "slack", "url_env": "TEST_SLACK_URL"},
            {"type": "webhook", "url_env": "TEST_HOOK_URL"},
            {
                "type": "email",
                "host": "127.0.0.1",
                "port": smtp.port,
                "sender": "secure-etl@example.test",
                "recipients": ["oncall@example.test"],
                "ca_bundle": smtp.ca_bundle,
            },
        ],
        "backoff_s": 0.05,
        **alerts,
    }
    return data


def _tick(defs, instance, cursor):
    context = build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    defs.resolve_sensor_def("check_alerts")(context)
    return context.cursor


def _wanting_60_days(data: dict) -> dict:
    """The config with a policy that wants 60 days left: the 30-day certificates then
    fail expiry_window (a WARN)."""
    strict = copy.deepcopy(data)
    for cert in strict["certificates"].values():
        cert["renewal"] = {"min_days_left": 60}
    return strict


def _run_checks(data, write_config, instance, name):
    platform = load_config(write_config(data, name))
    defs = build_definitions(platform)
    defs.resolve_job_def(CHECKS_JOB).execute_in_process(instance=instance)
    return defs


def test_one_message_per_failed_evaluation_none_on_the_next_tick_and_one_recovery(
    write_config, receiver, smtp, instance, monkeypatch
):
    data = _alerting_config(write_config, receiver, smtp, monkeypatch)
    platform = load_config(write_config(data))
    defs = build_definitions(platform)
    defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
    cursor = _tick(defs, instance, None)
    assert receiver.posts == [] and smtp.messages == []  # everything passes

    strict = _wanting_60_days(data)
    _run_checks(strict, write_config, instance, "strict.yaml")
    cursor = _tick(defs, instance, cursor)

    failed = [b for b in receiver.by_path("/hook") if b["kind"] == "check_failed"]
    assert sorted(b["asset"] for b in failed) == [
        "certificates/db-server",
        "certificates/etl-client",
    ]
    assert {b["check"] for b in failed} == {"expiry_window"}
    assert len({b["dedupe_key"] for b in failed}) == 2
    slack = receiver.by_path("/slack")
    assert len(slack) == 2 and all("expiry_window" in s["text"] for s in slack), slack
    assert len(smtp.messages) == 2
    assert all(m["Subject"].startswith("[secure_etl WARN] failed: ") for m in smtp.messages)
    assert "days left" in smtp.messages[0].get_content()

    # The next tick: nothing new, nothing sent.
    cursor = _tick(defs, instance, cursor)
    assert len(receiver.posts) == 4 and len(smtp.messages) == 2

    # The checks pass again: one recovery message per check, per channel.
    _run_checks(data, write_config, instance, "again.yaml")
    cursor = _tick(defs, instance, cursor)
    recovered = [b for b in receiver.by_path("/hook") if b["kind"] == "check_recovered"]
    assert sorted(b["asset"] for b in recovered) == [
        "certificates/db-server",
        "certificates/etl-client",
    ]
    assert len(receiver.by_path("/slack")) == 4 and len(smtp.messages) == 4
    _tick(defs, instance, cursor)
    assert len(receiver.posts) == 8  # and no second recovery


def test_a_500_is_retried_with_backoff_and_an_outage_waits_for_the_next_tick(
    write_config, receiver, smtp, instance, monkeypatch
):
    data = _alerting_config(write_config, receiver, smtp, monkeypatch, attempts=3)
    data["alerts"]["channels"] = data["alerts"]["channels"][1:2]  # the JSON webhook
    defs = build_definitions(load_config(write_config(data)))
    defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
    strict = _wanting_60_days(data)
    _run_checks(strict, write_config, instance, "strict.yaml")

    receiver.fail = 2  # two 500s, then 200: delivered on the third attempt
    cursor = _tick(defs, instance, None)
    assert receiver.attempts == 2 + 2 and len(receiver.by_path("/hook")) == 2
    assert json.loads(cursor)["pending"] == []
    first_wave = 2

    # An outage longer than the retries: the notifications wait in the cursor...
    _run_checks(strict, write_config, instance, "strict-again.yaml")
    receiver.fail = 1000
    before = receiver.attempts
    cursor = _tick(defs, instance, cursor)
    assert len(receiver.by_path("/hook")) == first_wave
    # One retry sequence (3 attempts) for the first; the channel is then known to be
    # down for this tick, so the second is not tried until the next one.
    assert receiver.attempts - before == 3
    assert len(json.loads(cursor)["pending"]) == 2
    # ...and go out on the next tick once the receiver is back, exactly once.
    receiver.fail = 0
    cursor = _tick(defs, instance, cursor)
    assert len(receiver.by_path("/hook")) == first_wave + 2
    assert json.loads(cursor)["pending"] == []
    _tick(defs, instance, cursor)
    assert len(receiver.by_path("/hook")) == first_wave + 2


def test_a_failed_run_is_announced(write_config, receiver, smtp, instance, monkeypatch):
    data = _alerting_config(
        write_config, receiver, smtp, monkeypatch, dagster_url="https://dagster.corp.example/"
    )
    defs = build_definitions(load_config(write_config(data)))

    @op
    def breaks():
        raise RuntimeError("the database went away")

    @job
    def nightly():
        breaks()

    result = nightly.execute_in_process(instance=instance, raise_on_error=False)
    context = build_run_status_sensor_context(
        sensor_name="run_failure_alerts",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
    ).for_run_failure()
    defs.resolve_sensor_def("run_failure_alerts")(context)

    [hook] = receiver.by_path("/hook")
    assert hook["kind"] == "run_failed" and hook["job"] == "nightly"
    assert hook["run_id"] == result.run_id
    assert f"https://dagster.corp.example/runs/{result.run_id}" in hook["text"]
    assert "the database went away" not in json.dumps(hook)  # Dagster's summary only
    assert len(receiver.by_path("/slack")) == 1 and len(smtp.messages) == 1


def test_the_severity_filter_holds_back_warnings(
    write_config, receiver, smtp, instance, monkeypatch
):
    data = _alerting_config(write_config, receiver, smtp, monkeypatch, min_severity="ERROR")
    defs = build_definitions(load_config(write_config(data)))
    defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
    strict = _wanting_60_days(data)
    _run_checks(strict, write_config, instance, "strict.yaml")  # expiry_window: WARN

    cursor = _tick(defs, instance, None)
    assert receiver.posts == [] and smtp.messages == []
    assert json.loads(cursor)["failing"] == []  # not announced, so no recovery later either


def test_no_attempt_starts_after_the_deadline():
    class Down(Channel):
        name = "down"
        calls = 0

        def send(self, notification):
            Down.calls += 1
            raise DeliveryError("down: HTTP 503")

    note = Notification("check_failed", "t", "x", "WARN", "k")
    slept = []
    [late] = deliver(
        note, [Down()], attempts=5, backoff_s=10, sleep=slept.append, deadline=time.monotonic()
    )
    assert (late.ok, late.attempts, Down.calls, slept) == (False, 0, 0, [])
    [tried] = deliver(note, [Down()], attempts=3, backoff_s=0.5, sleep=slept.append)
    assert (tried.ok, tried.attempts, tried.error) == (False, 3, "down: HTTP 503")
    assert Down.calls == 3 and slept == [0.5, 1.0]  # exponential backoff


def test_a_channels_retry_after_is_waited_out_and_one_past_the_backoff_gives_up():
    class Busy(Channel):
        name = "busy"

        def __init__(self, wait: float) -> None:
            self.wait, self.calls = wait, 0

        def send(self, notification):
            self.calls += 1
            if self.calls == 1:
                raise DeliveryError("busy: HTTP 429", retry_after=self.wait)

    note = Notification("check_failed", "t", "x", "WARN", "k")
    slept = []
    [ok] = deliver(note, [Busy(1.5)], attempts=3, backoff_s=1.0, sleep=slept.append)
    assert (ok.ok, ok.attempts, slept) == (True, 2, [1.5])  # not the 1 s backoff
    patient = Busy(3600)
    [gave_up] = deliver(note, [patient], attempts=3, backoff_s=1.0, sleep=slept.append)
    assert (gave_up.ok, gave_up.attempts, patient.calls, slept) == (False, 1, 1, [1.5])
