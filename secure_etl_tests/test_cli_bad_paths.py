"""Every `secure-etl` command, run as a user runs it, against bad paths: one line on
stderr, exit 2, never a traceback (README, "The `secure-etl` command").

The commands and their path arguments are read from the CLI's own parser, so a new
command or a new path argument fails ``test_every_path_argument_has_a_kind`` until it
is listed here, and with it gets the bad-path cases of its kind.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from secure_etl.cli import _parser
from secure_etl_tests.conftest import BASE_CONFIG
from secure_etl_tests.pki.certs import authority, leaf, new_key, pem

README = Path(__file__).resolve().parents[1] / "README.md"
# Nothing listens here: a command that reached the network before refusing its bad
# path would fail with a connection error (exit 1), not exit 2.
DIRECTORY = "https://127.0.0.1:9/directory"

# What each path argument is, which decides the bad cases it gets:
#   input    a file that is read: missing, a directory, empty, garbage
#   dir_in   a directory that is read: missing, an empty file, a garbage file
#   file_out a file that is written: a directory, in a missing directory, under a file
#   dir_out  a directory written into (created if missing): an empty file, a garbage file
#   key      a key file created if missing: a directory, empty, garbage
PATH_KINDS: dict[tuple[str, str], str] = {
    ("certs inspect", "path"): "input",
    ("certs inspect", "--ca-bundle"): "input",
    ("certs renew", "--config"): "input",
    ("certs list", "--config"): "input",
    ("acme issue", "--ca-bundle"): "input",
    ("acme issue", "--account-key"): "key",
    ("acme issue", "--webroot"): "dir_in",
    ("acme issue", "--out"): "dir_out",
    ("acme revoke", "cert"): "input",
    ("acme revoke", "--key"): "input",
    ("acme revoke", "--config"): "input",
    ("acme revoke", "--ca-bundle"): "input",
    ("acme revoke", "--account-key"): "key",
    ("demo", "--config"): "input",
    ("audit verify", "path"): "input",
    ("audit verify", "--checkpoints"): "dir_in",
    ("audit verify", "--public-key"): "input",
    ("audit verify", "--config"): "input",
    ("status", "--prometheus"): "file_out",
    ("status", "--config"): "input",
    ("keys pseudonym", "--config"): "input",
    ("keys decrypt", "--config"): "input",
    ("policy check", "--config"): "input",
}
BAD_CASES = {
    "input": ("missing", "directory", "empty", "garbage"),
    "dir_in": ("missing", "empty", "garbage"),
    "file_out": ("directory", "in-missing-directory", "under-a-file"),
    "dir_out": ("empty", "garbage"),
    "key": ("directory", "empty", "garbage"),
}


def _commands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> dict[str, argparse.ArgumentParser]:
    """Every runnable command of the parser: ``"certs inspect" -> its parser``."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= _commands(sub, f"{prefix} {name}".strip())
    if not found and prefix:
        found[prefix] = parser
    return found


def _path_arguments(parser: argparse.ArgumentParser) -> list[str]:
    """The arguments that take a path: ``--config`` for options, the dest for positionals."""
    return [
        action.option_strings[-1] if action.option_strings else action.dest
        for action in parser._actions
        if action.type is Path
    ]


COMMANDS = _commands(_parser())


def test_every_path_argument_has_a_kind():
    found = {(name, arg) for name, sub in COMMANDS.items() for arg in _path_arguments(sub)}
    assert found == set(PATH_KINDS), "give each new path argument its kind in PATH_KINDS"


GROUPS = {"certs", "acme", "audit", "keys", "policy"}  # commands with subcommands


def test_the_commands_are_the_ones_the_readme_documents():
    block = README.read_text().split("## The `secure-etl` command", 1)[1].split("```")[1]
    documented = set()
    for line in block.splitlines():
        words = line.split()
        if words[:1] == ["secure-etl"]:
            documented.add(" ".join(words[1:3] if words[1] in GROUPS else words[1:2]))
    assert documented == set(COMMANDS)


@pytest.fixture
def world(tmp_path: Path) -> dict[str, str]:
    return _world(tmp_path)


def _world(tmp_path: Path) -> dict[str, str]:
    """What makes each command otherwise valid: a config, a certificate, keys."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from secure_etl.security.audit import key_pin

    config = dict(BASE_CONFIG, state_dir=str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    (tmp_path / "platform.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "cert.pem").write_bytes(pem(leaf(authority(), ["svc.example.test"])))
    account = tmp_path / "account.key"
    account.write_bytes(
        new_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    account.chmod(0o600)
    (tmp_path / "webroot").mkdir()
    return {
        "config": str(tmp_path / "platform.yaml"),
        "cert": str(tmp_path / "cert.pem"),
        "account": str(account),
        "webroot": str(tmp_path / "webroot"),
        "out": str(tmp_path / "out"),
        "pin": key_pin(Ed25519PrivateKey.generate().public_key()),
    }


def _base(command: str, w: dict[str, str]) -> list[str]:
    """A command line that is valid but for the argument under test."""
    config = ["--config", w["config"]]
    server = ["--directory", DIRECTORY, "--account-key", w["account"]]
    return {
        "certs inspect": [w["cert"]],
        "certs renew": ["--all", *config],
        "certs list": config,
        "acme issue": ["-d", "svc.example.test", *server, "--webroot", w["webroot"]]
        + ["--out", w["out"]],
        "acme revoke": [w["cert"], *server],
        "demo": config,
        "audit verify": [*config, "--public-key", w["pin"]],
        "status": config,
        "keys pseudonym": ["pseudo-1", *config],
        "keys decrypt": ["pseudo-1", "--column", "email", *config],
        "policy check": config,
    }[command]


def _bad_path(tmp_path: Path, case: str) -> str:
    bad = tmp_path / "bad"
    bad.mkdir(exist_ok=True)
    if case == "missing":
        return str(bad / "absent.pem")
    if case == "directory":
        (bad / "a-directory").mkdir(exist_ok=True)
        return str(bad / "a-directory")
    if case in ("empty", "garbage"):
        path = bad / f"{case}.bin"
        # Bytes that are no text, PEM, YAML or DER; 0600, so a key file is judged by
        # what is in it, not by its mode.
        path.write_bytes(b"" if case == "empty" else bytes(range(255, 127, -1)) * 3)
        path.chmod(0o600)
        return str(path)
    if case == "in-missing-directory":
        return str(bad / "no-such-dir" / "out.prom")
    if case == "under-a-file":
        (bad / "a-file").write_text("x")
        return str(bad / "a-file" / "out.prom")
    raise ValueError(case)


def _with_arg(argv: list[str], arg: str, value: str, parser: argparse.ArgumentParser) -> list[str]:
    """``argv`` with ``arg`` (an option, or a positional's dest) set to ``value``. Every
    path positional is its command's first positional: the base line's first word, or
    left out of it when optional."""
    argv = list(argv)
    if arg.startswith("-"):
        if arg in argv:
            argv[argv.index(arg) + 1] = value
        else:
            argv += [arg, value]
        return argv
    positional = next(a for a in parser._actions if not a.option_strings and a.dest != "help")
    assert positional.dest == arg
    return [value, *argv] if positional.nargs == "?" else [value, *argv[1:]]


def _run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """The command as a user runs it: the console entry point in a fresh process."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("SECURE_ETL", "DAGSTER"))
    }
    environment.update(env)
    script = Path(sys.executable).with_name("secure-etl")
    entry = [str(script)] if script.exists() else [sys.executable, "-m", "secure_etl.cli"]
    return subprocess.run(
        [*entry, *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def _assert_one_line_exit_2(result: subprocess.CompletedProcess, *named: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("secure-etl: "), result.stderr
    for name in named:
        assert name in lines[0], (name, lines[0])
    return lines[0]


CASES = [
    (command, arg, case) for (command, arg), kind in PATH_KINDS.items() for case in BAD_CASES[kind]
]


@pytest.fixture(scope="module")
def bad_path_runs(tmp_path_factory) -> dict[tuple[str, str, str], tuple[str, object]]:
    """Every bad-path case run once, a few at a time (each is a fresh process, and most
    of its time is Python starting): case -> (the bad path, the finished process)."""
    root = tmp_path_factory.mktemp("bad-paths")
    runs = {}
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for number, (command, arg, case) in enumerate(CASES):
            here = root / str(number)
            here.mkdir()
            bad = _bad_path(here, case)
            argv = _with_arg(_base(command, _world(here)), arg, bad, COMMANDS[command])
            runs[command, arg, case] = (bad, pool.submit(_run, [*command.split(), *argv], here))
        return {key: (bad, job.result()) for key, (bad, job) in runs.items()}


@pytest.mark.parametrize(
    ("command", "arg", "case"),
    [pytest.param(*c, id=f"{c[0].replace(' ', '-')}-{c[1].lstrip('-')}-{c[2]}") for c in CASES],
)
def test_a_bad_path_is_one_line_and_exit_2(bad_path_runs, command, arg, case):
    bad, result = bad_path_runs[command, arg, case]
    _assert_one_line_exit_2(result, bad)


@pytest.mark.parametrize(
    "case", ["missing", "a-file", "relative", "not-utf8", "not-a-mapping", "unknown-setting"]
)
@pytest.mark.parametrize("command", ["status", "demo"])
def test_a_bad_dagster_home_is_one_line_and_exit_2(world, tmp_path, command, case):
    home = tmp_path / "dagster_home"
    if case == "missing":
        value = str(home)
    elif case == "a-file":
        home.write_text("")
        value = str(home)
    elif case == "relative":
        value = "dagster_home"
    else:
        home.mkdir()
        (home / "dagster.yaml").write_bytes(
            {
                "not-utf8": b"\xff\xfe\x00garbage",
                "not-a-mapping": b"- just\n- a list\n",
                "unknown-setting": b"no_such_dagster_setting: 1\n",
            }[case]
        )
        value = str(home)
    result = _run([command, *_base(command, world)], cwd=tmp_path, DAGSTER_HOME=value)
    _assert_one_line_exit_2(result, "dagster")
    assert not (tmp_path / "state" / "certs").exists()  # nothing ran


@pytest.mark.parametrize(
    "pin", ["ed25519:zz", "ed25519:" + "0" * 10, "not-a-file.pub", "garbage"], ids=str
)
def test_a_garbage_public_key_is_one_line_and_exit_2(world, tmp_path, pin):
    if pin == "garbage":
        pin = _bad_path(tmp_path, "garbage")
    result = _run(["audit", "verify", "--config", world["config"], "--public-key", pin], tmp_path)
    _assert_one_line_exit_2(result, "--public-key")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["demo", "--partitions", "-1"], "--partitions -1: give at least 1"),
        (["demo", "--partitions", "0"], "--partitions 0: give at least 1"),
        (["certs", "renew", "--all", "db-server"], "give --all or names (db-server), not both"),
        (["certs", "renew", "--jobs", "0", "db-server"], "--jobs 0: give at least 1"),
    ],
)
def test_impossible_flags_are_refused(world, tmp_path, argv, says):
    result = _run([*argv, "--config", world["config"]], tmp_path)
    _assert_one_line_exit_2(result, says)
    assert not (tmp_path / "state" / "certs").exists()  # nothing was issued


def test_status_prometheus_does_not_create_missing_directories(world, tmp_path):
    target = tmp_path / "metrics" / "deep" / "secure_etl.prom"
    result = _run(["status", "--config", world["config"], "--prometheus", str(target)], tmp_path)
    _assert_one_line_exit_2(result, "metrics/deep does not exist; create it first")
    assert not (tmp_path / "metrics").exists()


@pytest.mark.parametrize("command", [["certs", "list"], ["status"], ["audit", "verify"]])
def test_a_command_that_finds_no_state_says_where_it_looked(world, tmp_path, command):
    config = dict(BASE_CONFIG, state_dir="never-created")
    path = tmp_path / "conf" / "platform.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(config))
    argv = [*command, "--config", str(path)]
    if command == ["audit", "verify"]:
        argv += ["--public-key", world["pin"]]
    result = _run(argv, tmp_path)
    assert "Traceback" not in result.stderr
    assert (
        f"secure-etl: note: no state found: {tmp_path / 'conf' / 'never-created'} "
        f"(state_dir of {path}) does not exist" in result.stderr
    )
    assert not (tmp_path / "conf" / "never-created").exists()  # looking created nothing


def test_a_reader_that_goes_away_gets_no_traceback(world, tmp_path):
    # `secure-etl certs list | head -1`: the reader has closed the pipe before the
    # command writes, so its first write fails (EPIPE) as a reader's early exit does.
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("SECURE_ETL", "DAGSTER"))
    }
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "secure_etl.cli", "certs", "list", "--config", world["config"]],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=environment,
            timeout=120,
        )
    finally:
        os.close(write)
    assert "Traceback" not in result.stderr, result.stderr
    assert "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 1
