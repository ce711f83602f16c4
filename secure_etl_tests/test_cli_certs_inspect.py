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


def test_passing_checks_carry_no_severity_so_they_cannot_be_read_as_errors(files):
    result = _run(
        str(files / "client.pem"), "--use", "server", "--ca-bundle", str(files / "ca.pem")
    )
    assert result.returncode == 1
    lines = [line.split() for line in result.stdout.splitlines()[2:]]
    checks = [words for words in lines if words and words[0] in {"ok", "skip", "FAIL"}]
    assert len(checks) == 7
    for words in checks:
        if words[0] == "FAIL":
            assert words[1] in {"(ERROR)", "(WARN)"}
        else:
            assert words[0] in {"ok", "skip"}
            assert "ERROR" not in words and "WARN" not in words and "(ERROR)" not in words
    assert ["FAIL", "(ERROR)", "eku_fits_use"] == next(w[:3] for w in checks if w[0] == "FAIL")


def test_the_system_trust_store_is_read_quietly(files):
    """Without --ca-bundle the system's roots are used; certificates in it that
    cryptography warns about (negative serials, in many distributions' bundles) are
    none of the user's business: nothing is printed about them."""
    from secure_etl.pki.inspect import load_roots_file, system_trust_bundle

    bundle = system_trust_bundle()
    assert bundle is not None, "this test needs a system trust store"
    assert len(load_roots_file(bundle)) > 10
    result = _run(str(files / "good.pem"), "-d", "svc.example.com")
    assert result.returncode == 1  # a private test CA is not in the system store
    assert result.stderr == ""
    assert "FAIL (ERROR) chain_trusted" in result.stdout


def test_roots_that_cannot_be_read_are_left_out_quietly(files, recwarn):
    from secure_etl.pki.inspect import load_roots_file

    good = (files / "ca.pem").read_bytes()
    broken = good.replace(good[70:73], b"###")
    (files / "mixed.pem").write_bytes(broken + good)
    assert len(load_roots_file(files / "mixed.pem")) == 1
    assert not recwarn.list


def _key_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization

    from secure_etl_tests.pki.certs import new_key

    return new_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_der() -> bytes:
    from cryptography.hazmat.primitives import serialization

    from secure_etl_tests.pki.certs import new_key

    return new_key().private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _csr_pem() -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    from secure_etl_tests.pki.certs import new_key

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "svc.example.com")])
    csr = (
        x509.CertificateSigningRequestBuilder().subject_name(name).sign(new_key(), hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (_key_pem, "it holds a private key, not a certificate"),
        (_key_der, "it holds a DER (binary) private key, not a certificate"),
        (lambda: _der_of(leaf(authority())), "it is a DER (binary) certificate; convert it"),
        (_csr_pem, "it holds a certificate signing request (CSR), not a certificate"),
        (lambda: b"", "the file is empty"),
        (lambda: b"just some notes\n", "it is text with no -----BEGIN CERTIFICATE----- line"),
        (lambda: bytes(range(200, 256)), "it is binary data, not a PEM certificate"),
    ],
    ids=["pem-key", "der-key", "der-cert", "csr", "empty", "text", "binary"],
)
def test_a_file_that_is_not_a_pem_certificate_is_named_for_what_it_is(tmp_path, content, says):
    path = tmp_path / "input"
    path.write_bytes(content())
    result = _run(str(path))
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"secure-etl: {path}: no PEM certificate found: {says}")
    assert len(result.stderr.strip().splitlines()) == 1
