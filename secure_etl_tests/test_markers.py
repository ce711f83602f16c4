"""The `integration` marker cannot rot: a test that uses a server fixture or starts a
server program without it fails, naming what it used, before any server starts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from secure_etl_tests.conftest import _server_program

REPO = Path(__file__).resolve().parents[1]

INNER = """
import subprocess

import pytest


def test_unmarked_fixture(bind9):
    pass


def test_unmarked_program():
    subprocess.Popen(["/nonexistent/named", "-g"])


@pytest.mark.integration
def test_marked_program():
    with pytest.raises(FileNotFoundError):  # the guard let it through to the OS
        subprocess.Popen(["/nonexistent/named", "-g"])


def test_unmarked_other_program():
    assert subprocess.run(["true"]).returncode == 0
"""


def test_server_programs_are_found_behind_wrappers_and_python_m():
    assert _server_program(["runuser", "-u", "postgres", "--", "/usr/lib/x/initdb"]) == "initdb"
    assert _server_program([sys.executable, "-m", "moto.server", "-p", "1"]) == "moto.server"
    assert _server_program("/usr/bin/pebble") == "pebble"
    assert _server_program([sys.executable, "-m", "secure_etl.cli", "demo"]) is None
    assert _server_program(["psql", "-U", "postgres"]) is None


def test_unmarked_tests_that_need_a_server_fail_and_say_what_to_add(tmp_path):
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER))
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "secure_etl_tests.conftest",
            "-p",
            "no:cacheprovider",
        ]
        + [
            "-q",
            "-rA",
            "-o",
            "markers=integration",
            "--rootdir",
            str(tmp_path),
            "--basetemp",
            str(tmp_path / "bt"),
        ]
        + [str(tmp_path / "test_inner.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=path),
    )

    out = result.stdout
    assert "test_unmarked_fixture uses bind9 but is not marked integration" in out, out
    assert "test_unmarked_program starts named but is not marked integration" in out, out
    assert "PASSED test_inner.py::test_marked_program" in out, out
    assert "PASSED test_inner.py::test_unmarked_other_program" in out, out
    assert "1 failed, 2 passed, 1 error" in out, out
    assert not list(tmp_path.rglob("named.conf"))  # BIND9 was never started
