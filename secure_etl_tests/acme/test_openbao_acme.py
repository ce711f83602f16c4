"""OpenBao's PKI ACME server (Vault's API) as a second real CA: server and mTLS client
certificates, through the bare client and through the platform, revocation, account reuse
and OpenBao's own error bodies.

OpenBao validates http-01 on port 80 of the identifier and looks names up in BIND9 (its
``dns_resolver``), whose example.test zone points every name at 127.0.0.1, where
``Http01Standalone`` answers.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secure_etl.acme.challenges import Http01Standalone
from secure_etl.acme.client import AcmeClient
from secure_etl.acme.errors import AcmeProblem
from secure_etl.acme.jws import AccountKey
from secure_etl.acme.transport import Transport
from secure_etl.config import load_config
from secure_etl.pki.inspect import inspect_chain, load_pem_chain
from secure_etl.pki.keys import generate_private_key
from secure_etl.pki.renewal import certificate_store, ensure_certificate, inspect_current
from secure_etl_tests.conftest import BASE_CONFIG
from secure_etl_tests.servers import Bind9, OpenBao, require_port

pytestmark = pytest.mark.integration

HTTP01 = ("127.0.0.1", 80)  # where OpenBao's validator connects: port 80, always


@pytest.fixture(scope="module")
def openbao_acme(tmp_path_factory):
    """One OpenBao with PKI ACME for the module (each test uses its own account key)."""
    require_port(*HTTP01, "http-01 validation by OpenBao")
    bind9 = Bind9(tmp_path_factory.mktemp("bind9")).start()
    server = OpenBao(tmp_path_factory.mktemp("openbao"))
    try:
        server.start().enable_pki_acme(dns_resolver=bind9.server)
        yield server
    finally:
        server.stop()
        bind9.stop()


@pytest.fixture
def solver():
    solver = Http01Standalone(*HTTP01)
    yield solver
    solver.close()


def _client(openbao: OpenBao, role: str, key: AccountKey | None = None) -> AcmeClient:
    transport = Transport(openbao.acme_directory(role), verify=str(openbao.ca_bundle))
    return AcmeClient(transport, key or AccountKey(generate_private_key("ec256")))


def _judge(chain_pem: bytes, identifiers: list[str], use: str, openbao: OpenBao) -> dict:
    certs = load_pem_chain(chain_pem, "OpenBao")
    roots = load_pem_chain(openbao.pki_root.read_bytes(), str(openbao.pki_root))
    results = inspect_chain(certs, identifiers=identifiers, use=use, roots=roots)
    return {r.name: r for r in results}


def test_openbao_issues_a_server_certificate_for_an_ip_first_order(openbao_acme, solver):
    # OpenBao refuses a CSR whose CN is an IP address ("common name 127.0.0.1 not allowed
    # by this role"): the CN must be the first DNS name.
    identifiers = ["127.0.0.1", "web.example.test"]
    client = _client(openbao_acme, "server")
    client.register("ops@example.com")
    key = generate_private_key("ec256")

    chain = client.issue(identifiers, key, solver)

    leaf = load_pem_chain(chain.pem, chain.url)[0]
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["web.example.test"]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["web.example.test"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    results = _judge(chain.pem, identifiers, "server", openbao_acme)
    for check in ("chain_trusted", "covers_identifiers", "eku_fits_use"):
        assert results[check].passed, results[check].reason


def test_an_ip_only_certificate_has_no_cn_and_openbao_issues_it(openbao_acme, solver):
    # With no DNS name there is no CN; OpenBao then needs a role without require_cn.
    client = _client(openbao_acme, "server-no-cn")
    client.register()

    chain = client.issue(["127.0.0.1"], generate_private_key("ec256"), solver)

    leaf = load_pem_chain(chain.pem, chain.url)[0]
    assert not leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    results = _judge(chain.pem, ["127.0.0.1"], "server", openbao_acme)
    assert results["covers_identifiers"].passed and results["chain_trusted"].passed


def test_openbao_client_role_issues_an_mtls_client_certificate(openbao_acme, solver):
    client = _client(openbao_acme, "client")
    client.register()

    chain = client.issue(["etl-client.example.test"], generate_private_key("ec256"), solver)

    leaf = load_pem_chain(chain.pem, chain.url)[0]
    ekus = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(ekus) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    as_client = _judge(chain.pem, ["etl-client.example.test"], "client", openbao_acme)
    assert as_client["eku_fits_use"].passed and as_client["chain_trusted"].passed
    # The same certificate judged as a server certificate fails: the check can tell.
    as_server = _judge(chain.pem, ["etl-client.example.test"], "server", openbao_acme)
    assert not as_server["eku_fits_use"].passed


@pytest.fixture
def openbao_platform(openbao_acme, tmp_path):
    """A platform whose web server and ETL client certificates come from OpenBao."""
    data = copy.deepcopy(BASE_CONFIG)
    for name, role in (("openbao-server", "server"), ("openbao-client", "client")):
        data["issuers"][name] = {
            "type": "acme",
            "directory_url": openbao_acme.acme_directory(role),
            "server_ca_bundle": str(openbao_acme.ca_bundle),
            "trust_bundle": str(openbao_acme.pki_root),
            "challenge": {"type": "http-01", "address": HTTP01[0], "port": HTTP01[1]},
        }
    data["certificates"] = {
        "web": {
            "issuer": "openbao-server",
            "use": "server",
            "identifiers": ["127.0.0.1", "web.example.test"],
        },
        "etl-client": {
            "issuer": "openbao-client",
            "use": "client",
            "identifiers": ["etl-client.example.test"],
        },
    }
    data["pipelines"] = {}
    data["state_dir"] = str(tmp_path / "state")
    path = tmp_path / "openbao.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


def test_platform_gets_server_and_client_certificates_from_openbao(openbao_platform):
    for name in ("web", "etl-client"):
        result = ensure_certificate(openbao_platform, name)
        assert result.outcome == "issued", result.reason
        failed = [r for r in inspect_current(openbao_platform, name) if not r.passed]
        assert not failed, failed
    paths = certificate_store(openbao_platform).paths("etl-client")
    leaf = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku


def test_platform_renewal_reuses_the_openbao_account(openbao_platform):
    logs: list[str] = []
    ensure_certificate(openbao_platform, "web", log=logs.append)
    state = openbao_platform.resolved_state_dir() / "acme" / "openbao-server"
    account_url = json.loads((state / "account.json").read_text())["url"]

    renewed = ensure_certificate(openbao_platform, "web", force=True, log=logs.append)
    # Without the saved URL, the same account key must lead back to the same account.
    (state / "account.json").unlink()
    again = ensure_certificate(openbao_platform, "web", force=True, log=logs.append)

    assert (renewed.outcome, again.outcome) == ("renewed", "renewed")
    registrations = [line for line in logs if line.startswith("openbao-server: ACME account ")]
    assert registrations == [f"openbao-server: ACME account {account_url}"] * 2, logs
    assert sum("created ACME account key" in line for line in logs) == 1


def test_the_same_account_key_finds_the_same_openbao_account(openbao_acme):
    key = AccountKey(generate_private_key("ec256"))
    first = _client(openbao_acme, "server", key).register("ops@example.com")

    again = _client(openbao_acme, "server", key).register("ops@example.com")
    found = _client(openbao_acme, "server", key).find_account()
    other = _client(openbao_acme, "server").register()

    assert again.url == found.url == first.url
    assert other.url != first.url


def test_a_revoked_certificate_is_listed_revoked_by_openbao(openbao_acme, solver):
    client = _client(openbao_acme, "server")
    client.register()
    chain = client.issue(["revoke-me.example.test"], generate_private_key("ec256"), solver)
    leaf = load_pem_chain(chain.pem, chain.url)[0]
    assert openbao_acme.revocation_time(leaf.serial_number) == 0

    der = leaf.public_bytes(serialization.Encoding.DER)
    with pytest.raises(AcmeProblem, match="OpenBao does not support revocation reasons"):
        client.revoke(der, reason="keyCompromise")

    client.revoke(der)

    assert openbao_acme.revocation_time(leaf.serial_number) > 0
    serial = f"{leaf.serial_number:x}"
    listed = {s.replace(":", "").lstrip("0") for s in openbao_acme.revoked_serials()}
    assert serial.lstrip("0") in listed


def test_openbao_permission_denied_body_shows_its_text_and_the_url(openbao_acme):
    # Not a problem document: Vault's {"errors": ["permission denied"]}, HTTP 403.
    url = f"{openbao_acme.address}/v1/no-such-mount/acme/directory"
    client = AcmeClient(
        Transport(url, verify=str(openbao_acme.ca_bundle)),
        AccountKey(generate_private_key("ec256")),
    )
    with pytest.raises(AcmeProblem) as caught:
        client.register()
    assert caught.value.status == 403
    assert str(caught.value) == f"permission denied (HTTP 403 from {url})"


def test_openbao_refusing_an_identifier_names_it_and_the_url(openbao_acme):
    client = _client(openbao_acme, "server")
    client.register()
    with pytest.raises(AcmeProblem) as caught:
        client.new_order(["www.not-allowed.invalid"])
    message = str(caught.value)
    assert "will not issue certificate for name www.not-allowed.invalid" in message
    assert openbao_acme.acme_directory("server").removesuffix("directory") in message


def test_openbao_with_acme_disabled_says_so_with_status_and_url(openbao_acme):
    config = openbao_acme.request("GET", "pki/config/acme")["data"]
    openbao_acme.request("POST", "pki/config/acme", {**config, "enabled": False})
    try:
        client = _client(openbao_acme, "server")
        with pytest.raises(AcmeProblem) as caught:
            client.register()
    finally:
        openbao_acme.request("POST", "pki/config/acme", config)
    url = openbao_acme.acme_directory("server")
    assert str(caught.value) == f"no error text (HTTP 404 from {url})"
    assert openbao_acme.request("GET", "pki/config/acme")["data"] == config


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "secure_etl.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_acme_issue_from_openbao_ip_first_and_a_wrong_directory_is_one_line(
    openbao_acme, tmp_path
):
    common = ["--ca-bundle", str(openbao_acme.ca_bundle), "--http-01-address", HTTP01[0]]
    common += ["--http-01-port", str(HTTP01[1]), "--account-key", str(tmp_path / "acct.key")]
    issued = _cli(
        "acme",
        "issue",
        *("-d", "127.0.0.1", "-d", "cli.example.test"),
        *("--directory", openbao_acme.acme_directory("server")),
        *common,
        *("--out", str(tmp_path / "out")),
    )
    assert issued.returncode == 0, issued.stderr
    assert issued.stdout.startswith("issued 127.0.0.1, cli.example.test")

    wrong = f"{openbao_acme.address}/v1/pki-typo/acme/directory"
    refused = _cli(
        "acme",
        "issue",
        *("-d", "cli.example.test", "--directory", wrong),
        *common,
        *("--out", str(tmp_path / "not-written")),
    )
    assert refused.returncode != 0
    assert refused.stderr == f"secure-etl: permission denied (HTTP 403 from {wrong})\n"
    assert not (tmp_path / "not-written").exists()
