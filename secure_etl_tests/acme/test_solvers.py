"""Challenge solvers on their own: what they serve, write and remove."""

from __future__ import annotations

import base64
import hashlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from secure_etl.acme.challenges import (
    Dns01,
    ExecProvider,
    Http01Standalone,
    Http01Webroot,
    SolverError,
    dns01_record_name,
    dns01_txt_value,
)
from secure_etl_tests.servers import free_port


def test_standalone_solvers_share_one_listener_per_port():
    port = free_port()
    first, second = Http01Standalone("127.0.0.1", port), Http01Standalone("127.0.0.1", port)
    first.present("a.example", "tok-a", "tok-a.thumb")
    second.present("b.example", "tok-b", "tok-b.thumb")
    url = f"http://127.0.0.1:{port}/.well-known/acme-challenge/"
    assert httpx.get(url + "tok-a").text == "tok-a.thumb"
    assert httpx.get(url + "tok-b").text == "tok-b.thumb"

    first.close()
    assert httpx.get(url + "tok-a").status_code == 404
    assert httpx.get(url + "tok-b").text == "tok-b.thumb"
    second.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "tok-b")


def test_solvers_opening_and_closing_one_port_at_once_never_collide():
    # `certs renew --all --jobs 8`: one solver closing the port's last use while another
    # opens it must not find the port still held ("Address already in use"); before the
    # close moved under the registry's lock, about half of these acquisitions failed.
    port = free_port()

    def open_and_close(i: int) -> None:
        solver = Http01Standalone("127.0.0.1", port)
        try:
            solver.present(f"{i}.example", f"tok-{i}", f"tok-{i}.thumb")
        finally:
            solver.close()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(open_and_close, range(800)))  # raises the first SolverError


def test_webroot_writes_the_token_and_removes_it(tmp_path):
    solver = Http01Webroot(tmp_path)
    solver.present("a.example", "tok", "tok.thumb")
    path = tmp_path / ".well-known" / "acme-challenge" / "tok"
    assert path.read_text() == "tok.thumb"
    solver.cleanup("a.example", "tok")
    assert not path.exists()
    with pytest.raises(SolverError, match="not a plain name"):
        solver.present("a.example", "../escape", "x")


def test_dns01_record_name_and_value_follow_rfc_8555():
    assert dns01_record_name("*.example.com") == "_acme-challenge.example.com."
    digest = hashlib.sha256(b"tok.thumb").digest()
    assert dns01_txt_value("tok.thumb") == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_exec_provider_runs_the_hook_with_action_name_and_value(tmp_path):
    log = tmp_path / "calls"
    hook = ["sh", "-c", f'echo "$0 $1 $2" >> {log}']
    solver = Dns01(ExecProvider(hook))
    solver.present("a.example", "tok", "tok.thumb")
    solver.cleanup("a.example", "tok")
    value = dns01_txt_value("tok.thumb")
    assert log.read_text().splitlines() == [
        f"present _acme-challenge.a.example. {value}",
        f"cleanup _acme-challenge.a.example. {value}",
    ]


def test_a_failing_exec_hook_is_reported_with_its_stderr():
    solver = Dns01(ExecProvider(["sh", "-c", "echo 'zone not found' >&2; exit 4"]))
    with pytest.raises(SolverError, match="exited 4: zone not found"):
        solver.present("a.example", "tok", "tok.thumb")
