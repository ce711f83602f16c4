"""`secure-etl certs inspect`: exit codes, JSON and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from secure_etl.cli import main
from secure_etl_tests.pki.certs import CLIENT, NOW, authority, leaf, pem


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "secure_etl.cli", "certs", "inspect", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def files(tmp_path):
    import datetime as dt

    ca = authority()
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    (tmp_path / "good.pem").write_bytes(pem(leaf(ca, ["svc.example.com"])))
    (tmp_path / "client.pem").write_bytes(pem(leaf(ca, ["svc.example.com"], eku=[CLIENT])))
    (tmp_path / "soon.pem").write_bytes(
        pem(leaf(ca, not_before=NOW - dt.timedelta(days=80), not_after=NOW + dt.timedelta(days=5)))
    )
    return tmp_path


def test_all_checks_pass_exit_0(files):
    result = _run(
        str(files / "good.pem"),
        "--domain",
        "svc.example.com",
        "--use",
        "server",
        "--ca-bundle",
        str(files / "ca.pem"),
    )
    assert result.returncode == 0, result.stdout
    assert "FAIL" not in result.stdout and "ok           chain_trusted" in result.stdout


def test_a_failing_check_exits_1_and_json_lists_every_check(files):
    result = _run(
        str(files / "client.pem"),
        "-d",
        "svc.example.com",
        "--use",
        "server",
        "--ca-bundle",
        str(files / "ca.pem"),
        "--json",
    )
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["passed"] is False
    checks = {c["name"]: c for c in report["checks"]}
    assert len(checks) == 7
    for check in report["checks"]:
        assert set(check) >= {"name", "passed", "severity", "reason"}
        assert check["severity"] in {"ERROR", "WARN"}
    assert checks["eku_fits_use"]["passed"] is False
    assert "serverAuth" in checks["eku_fits_use"]["reason"]
    assert report["certificate"]["sans"] == ["svc.example.com"]


def test_min_days_fails_the_expiry_check_with_a_warning(files):
    assert (
        main(["certs", "inspect", str(files / "soon.pem"), "--ca-bundle", str(files / "ca.pem")])
        == 0
    )
    result = _run(
        str(files / "soon.pem"), "--ca-bundle", str(files / "ca.pem"), "--min-days", "30", "--json"
    )
    assert result.returncode == 1
    expiry = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "expiry_window")
    assert expiry["severity"] == "WARN" and not expiry["passed"]


@pytest.mark.parametrize("case", ["missing", "broken", "missing-bundle", "not-pem"])
def test_unusable_input_exits_2_with_one_line_and_no_traceback(files, case):
    target, extra = files / "good.pem", []
    if case == "missing":
        target = files / "absent.pem"
    elif case == "broken":
        data = (files / "good.pem").read_bytes()
        target = files / "broken.pem"
        target.write_bytes(data[:70] + b"###" + data[73:])
    elif case == "missing-bundle":
        extra = ["--ca-bundle", str(files / "no-bundle.pem")]
    else:
        target = files / "notes.txt"
        target.write_text("hello")
    result = _run(str(target), *extra)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("secure-etl: ")
    assert (files / "no-bundle.pem").name in lines[0] or target.name in lines[0]


def _der_of(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.DER)


EC_KEY_OID = bytes.fromhex("06072a8648ce3d0201")  # id-ecPublicKey
P256_OID = bytes.fromhex("06082a8648ce3d030107")  # prime256v1
ECDSA_SHA256_OID = bytes.fromhex("06082a8648ce3d040302")
VERSION_3 = bytes.fromhex("a003020102")


@pytest.mark.parametrize(
    ("found", "put", "error"),
    [
        (EC_KEY_OID, EC_KEY_OID[:-1] + b"\x09", "Unknown key type"),
        (P256_OID, P256_OID[:-1] + b"\x08", "is not supported"),
        (ECDSA_SHA256_OID, ECDSA_SHA256_OID[:-1] + b"\x09", "not recognized"),
        (VERSION_3, VERSION_3[:-1] + b"\x05", "version"),
        (P256_OID + bytes.fromhex("034200 04"), P256_OID + bytes.fromhex("034200 05"), "key"),
    ],
    ids=["unknown-key-type", "unknown-curve", "unknown-signature", "bad-version", "bad-point"],
)
def test_a_certificate_broken_in_a_lazily_parsed_field_exits_2_in_one_line(
    tmp_path, capsys, found, put, error
):
    """Inputs that crashed the command with ValueError, UnsupportedAlgorithm or InvalidVersion."""
    import base64

    der = _der_of(leaf(authority()))
    assert found in der
    path = tmp_path / "lazy.pem"
    path.write_bytes(
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.encodebytes(der.replace(found, put))
        + b"-----END CERTIFICATE-----\n"
    )
    assert main(["certs", "inspect", str(path), "--use", "server"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"secure-etl: {path}: broken PEM certificate")
    assert error in lines[0]
