"""Property tests (hypothesis): on any input, config loading and PEM inspection raise
only their own error types, never a traceback from deep inside; and a scan of the
package for constructs that must not be there."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secure_etl.config import ConfigError, PlatformConfig, load_config
from secure_etl.pki.inspect import PemError, load_pem_chain
from secure_etl_tests.conftest import BASE_CONFIG

PACKAGE = Path(__file__).parents[1] / "secure_etl"

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def _paths(data, prefix=()):
    """Every key path in a nested config."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield (*prefix, i)
            yield from _paths(value, (*prefix, i))


PATHS = list(_paths(BASE_CONFIG))


def _load(tmp_path_factory, text: str):
    path = tmp_path_factory.mktemp("cfg") / "platform.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=300))
def test_any_text_as_a_config_loads_or_raises_config_error(tmp_path_factory, text):
    try:
        assert isinstance(_load(tmp_path_factory, text), PlatformConfig)
    except ConfigError as err:
        assert str(err.path).endswith("platform.yaml")


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(where=st.sampled_from(PATHS), value=values)
def test_any_value_anywhere_in_a_valid_config_loads_or_names_a_key(tmp_path_factory, where, value):
    data = copy.deepcopy(BASE_CONFIG)
    data["state_dir"] = "/tmp/secure-etl-property"  # noqa: S108 - never written to
    target = data
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    try:
        _load(tmp_path_factory, yaml.safe_dump(data))
    except ConfigError as err:
        assert err.message


@settings(max_examples=200)
@given(data=st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_any_bytes_as_pem_give_certificates_or_pem_error(data):
    try:
        chain = load_pem_chain(data, "input.pem")
        assert chain
    except PemError as err:
        assert "input.pem" in str(err)


@given(body=st.binary(min_size=0, max_size=300))
def test_a_pem_block_with_any_body_gives_pem_error_naming_the_source(body):
    import base64

    pem = (
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(body) + b"-----END CERTIFICATE-----\n"
    )
    try:
        load_pem_chain(pem, "mangled.pem")
    except PemError as err:
        assert "mangled.pem" in str(err)


FORBIDDEN = re.compile(
    r"(^|[^.\w])(eval|exec)\(|shell\s*=\s*True|yaml\.load\(|yaml\.unsafe_load|pickle\.loads?\("
)


def test_the_package_has_no_eval_exec_shell_or_unsafe_yaml():
    hits = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if FORBIDDEN.search(line)
    ]
    assert hits == []
    assert FORBIDDEN.search("x = eval(s)") and FORBIDDEN.search("run(a, shell=True)")


def test_the_repository_holds_no_private_key():
    """Keys are made at run time (tests, demo); none may be committed."""
    import shutil
    import subprocess

    root = PACKAGE.parent
    git = shutil.which("git") or "/usr/bin/git"
    tracked = subprocess.run(
        [git, "ls-files", "-z"], cwd=root, capture_output=True, check=True, timeout=60
    ).stdout.split(b"\0")
    marker = b"PRIVATE" + b" KEY-----"  # spelled in two parts so this file does not match
    found = [
        name.decode() for name in tracked if name and marker in (root / name.decode()).read_bytes()
    ]
    assert found == []


def _real_ders() -> list[bytes]:
    from cryptography.hazmat.primitives import serialization

    from secure_etl_tests.pki.certs import authority, leaf, new_key

    ca = authority()
    certs = [ca.cert, leaf(ca), leaf(ca, key=new_key("rsa2048"))]
    return [c.public_bytes(serialization.Encoding.DER) for c in certs]


REAL_DERS = _real_ders()
mutations = st.lists(
    st.tuples(st.sampled_from(["flip", "insert", "delete"]), st.floats(0, 1), st.integers(0, 255)),
    min_size=1,
    max_size=4,
)


def _mutate(der: bytes, steps) -> bytes:
    out = bytearray(der)
    for op, where, byte in steps:
        at = min(int(where * len(out)), len(out) - 1)
        if op == "flip":
            out[at] ^= byte or 1
        elif op == "insert":
            out.insert(at, byte)
        elif len(out) > 1:
            del out[at]
    return bytes(out)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(which=st.integers(0, len(REAL_DERS) - 1), steps=mutations, as_json=st.booleans())
def test_certs_inspect_on_a_mutated_real_certificate_exits_0_1_or_2_in_one_line(
    tmp_path_factory, which, steps, as_json
):
    """Mutations of real DER (not random bytes) reach the lazily parsed fields: key, curve,
    algorithms, version, dates. Each gives a verdict or one line and exit 2."""
    import base64
    import contextlib
    import io

    from secure_etl.cli import main

    path = tmp_path_factory.mktemp("pem") / "mutated.pem"
    body = base64.encodebytes(_mutate(REAL_DERS[which], steps))
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n")
    args = ["certs", "inspect", str(path), "-d", "svc.example.com", "--use", "server"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*args, "--json"] if as_json else args)
    assert code in {0, 1, 2}
    if code == 2:
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"secure-etl: {path}: ")
    else:
        assert out.getvalue() and "Traceback" not in err.getvalue()
