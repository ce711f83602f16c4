"""The certificate store in PostgreSQL (``certificate_store.backend: postgres``) against
a real server (verify-full, client-certificate login) with keys wrapped by a real
Vault-API transit engine (OpenBao): one renewal at a time across processes, a second
worker with its own state_dir reads and uses the current version, old versions are
pruned, and a private key is on disk only in a 0600 file removed after use."""

from __future__ import annotations

import copy
import multiprocessing
import os
import shutil
import stat
from pathlib import Path

import psycopg
import pytest
import yaml

from secure_etl.config import load_config
from secure_etl.pki.renewal import certificate_store, current_leaf, ensure_certificate
from secure_etl.pki.store_postgres import open_key
from secure_etl.security.kms import KeyUnwrapError, LocalKeyFile
from secure_etl.security.postgres_tls import PgEndpoint
from secure_etl.security.vault_transit import VaultTransit
from secure_etl_tests.conftest import BASE_CONFIG, module_platform

pytestmark = pytest.mark.integration

TOKEN_ENV = "TEST_STORE_VAULT_TOKEN"


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    return module_platform(tmp_path_factory)


@pytest.fixture(scope="module")
def servers(platform, tmp_path_factory):
    """PostgreSQL whose `certs` database the etl-client certificate logs in to, and
    OpenBao with the transit key `certs`."""
    from secure_etl_tests.servers import OpenBao, postgres_for_platform

    postgres = postgres_for_platform(platform, tmp_path_factory.mktemp("pg"))
    postgres.psql('CREATE ROLE "etl-client.test" LOGIN')
    postgres.psql('CREATE DATABASE certs OWNER "etl-client.test"')
    try:
        openbao = OpenBao(tmp_path_factory.mktemp("openbao")).start()
    except BaseException:
        postgres.stop()
        raise
    openbao.request("POST", "transit/keys/certs")
    os.environ[TOKEN_ENV] = openbao.token  # spawned workers inherit it
    yield postgres, openbao
    os.environ.pop(TOKEN_ENV, None)
    openbao.stop()
    postgres.stop()


def _worker(platform, servers, directory: Path, state: Path | None = None) -> Path:
    """A worker's config: its own state_dir (default: a fresh one, with no CA and no
    certificates), the shared store reached with the bootstrap client files it was given
    (copied in, like a mounted secret), the KMS in OpenBao."""
    postgres, openbao = servers
    secrets = directory / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    local = certificate_store(platform).paths("etl-client")
    ca = platform.resolved_state_dir() / "ca" / "test-ca" / "ca.pem"
    for source, name in ((local.fullchain, "client.pem"), (local.privkey, "client.key")):
        shutil.copyfile(source, secrets / name)
    shutil.copyfile(ca, secrets / "ca.pem")
    os.chmod(secrets / "client.key", 0o600)
    data = copy.deepcopy(BASE_CONFIG)
    data["state_dir"] = str(state or directory / "state")
    data["certificates"]["etl-client"]["ca_bundle"] = str(secrets / "ca.pem")
    data["certificates"]["etl-client"]["keep_versions"] = 2
    data["certificate_store"] = {
        "backend": "postgres",
        "postgres": {
            "host": "localhost",
            "port": postgres.port,
            "dbname": "certs",
            "user": "etl-client.test",
            "schema": "store",
            "client_certificate": str(secrets / "client.pem"),
            "client_key": str(secrets / "client.key"),
            "ca_bundle": str(secrets / "ca.pem"),
        },
    }
    data["kms"] = {
        "type": "vault_transit",
        "address": openbao.address,
        "key": "certs",
        "token_env": TOKEN_ENV,
        "ca_bundle": str(openbao.ca_bundle),
    }
    path = directory / "platform.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def renewer(platform, servers, tmp_path_factory) -> Path:
    """The worker that renews: it holds the internal CA (the module platform's state)."""
    return _worker(
        platform, servers, tmp_path_factory.mktemp("renewer"), platform.resolved_state_dir()
    )


def _ensure(config: str, start, results) -> None:
    platform = load_config(config)
    start.wait()
    results.put(ensure_certificate(platform, "etl-client").outcome)


def test_two_processes_renewing_at_once_make_one_renewal(renewer):
    spawn = multiprocessing.get_context("spawn")
    start, results = spawn.Barrier(2), spawn.Queue()
    workers = [spawn.Process(target=_ensure, args=(str(renewer), start, results)) for _ in "ab"]
    for worker in workers:
        worker.start()
    outcomes = sorted(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    assert outcomes == ["issued", "not_due"]
    assert len(certificate_store(load_config(renewer)).versions("etl-client")) == 1


def test_a_second_worker_reads_the_current_version_and_connects_with_it(
    renewer, platform, servers, tmp_path
):
    from secure_etl.defs.resources import certificate_resources, step_certificate

    postgres, _ = servers
    ensure_certificate(load_config(renewer), "etl-client")
    second = load_config(_worker(platform, servers, tmp_path / "second"))
    store = certificate_store(second)
    assert store.has_current("etl-client")

    resource = certificate_resources(second, ["etl-client"])["cert_etl_client"]
    with step_certificate(second, resource) as certificate:
        kwargs = certificate.psycopg_kwargs()
        files = Path(kwargs["sslkey"]).parent.parent
        assert stat.S_IMODE(os.stat(kwargs["sslkey"]).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(files).st_mode) == 0o700
        assert Path(kwargs["sslkey"]).read_bytes() == store.current_key("etl-client")
        with psycopg.connect(
            host="localhost", port=postgres.port, dbname="certs", user="etl-client.test", **kwargs
        ) as conn:
            serial = conn.execute(
                "SELECT client_serial FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone()[0]
    # It logged in with the renewer's current certificate, read from the shared store.
    assert int(serial) == current_leaf(second, "etl-client").serial_number
    assert current_leaf(second, "etl-client") == current_leaf(load_config(renewer), "etl-client")
    assert not files.exists()  # the step's copies are gone
    # Nothing of the key was left in the second worker's state_dir.
    key = store.current_key("etl-client")
    body = b"".join(key.splitlines()[1:-1])
    for path in second.resolved_state_dir().rglob("*"):
        assert not path.is_file() or body[:40] not in path.read_bytes().replace(b"\n", b"")


def test_renewals_keep_the_newest_versions_and_a_rollback_moves_current(renewer):
    config = load_config(renewer)
    store = certificate_store(config)
    made = [ensure_certificate(config, "etl-client", force=True).version for _ in range(3)]
    assert store.versions("etl-client") == made[-2:]  # keep_versions: 2
    assert store.current_version("etl-client") == made[-1]
    store.rollback("etl-client", made[-2])
    assert store.current_version("etl-client") == made[-2]
    with pytest.raises(KeyError):
        store.rollback("etl-client", made[0])


def test_the_stored_key_is_sealed_and_opens_only_through_the_kms(renewer, servers, tmp_path):
    _, openbao = servers
    config = load_config(renewer)
    store = certificate_store(config)
    ensure_certificate(config, "etl-client")
    version = store.current_version("etl-client")
    endpoint: PgEndpoint = store.endpoint
    with endpoint.connect() as conn:
        sealed, wrapped = conn.execute(
            "SELECT key_sealed, key_wrapped FROM store.certificate_versions "
            "WHERE name = 'etl-client' AND version = %s",
            (version,),
        ).fetchone()
    key = store.current_key("etl-client")
    assert key.startswith(b"-----BEGIN ") and key not in bytes(sealed)
    assert wrapped.startswith("vault:v1:")
    transit = VaultTransit(
        openbao.address, "certs", openbao.token, ca_bundle=str(openbao.ca_bundle)
    )
    assert open_key(transit, "etl-client", version, bytes(sealed), wrapped) == key
    # Another master key (a local one, another transit key) cannot open it...
    with pytest.raises(KeyUnwrapError):
        open_key(
            LocalKeyFile(tmp_path / "other.key"), "etl-client", version, bytes(sealed), wrapped
        )
    openbao.request("POST", "transit/keys/other")
    other = VaultTransit(openbao.address, "other", openbao.token, ca_bundle=str(openbao.ca_bundle))
    with pytest.raises(KeyUnwrapError):
        open_key(other, "etl-client", version, bytes(sealed), wrapped)
    # ...nor does it open as another certificate's or version's key.
    with pytest.raises(KeyUnwrapError):
        open_key(transit, "db-server", version, bytes(sealed), wrapped)


def test_the_internal_ca_is_kept_sealed_in_the_store_and_a_worker_without_it_issues(
    renewer, platform, servers, tmp_path
):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    ensure_certificate(load_config(renewer), "etl-client")  # the CA moved into the store
    second = load_config(_worker(platform, servers, tmp_path / "second"))
    assert ensure_certificate(second, "db-server", force=True).outcome in ("issued", "renewed")

    # Signed by the one root the renewer had, whose key the second worker never held on disk.
    root = x509.load_pem_x509_certificate(
        (platform.resolved_state_dir() / "ca" / "test-ca" / "ca.pem").read_bytes()
    )
    current_leaf(second, "db-server").verify_directly_issued_by(root)
    ca_dir = second.resolved_state_dir() / "ca" / "test-ca"
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.pem"]
    assert ca_dir.joinpath("ca.pem").read_bytes() == root.public_bytes(Encoding.PEM)
    store = certificate_store(second)
    assert store.current_key("ca:test-ca").startswith(b"-----BEGIN ")
    assert len(store.versions("ca:test-ca")) == 1


def test_a_worker_with_another_local_root_refuses_to_issue(renewer, platform, servers, tmp_path):
    from secure_etl.pki.internal_ca import InternalCA

    ensure_certificate(load_config(renewer), "etl-client")  # the CA moved into the store
    third = load_config(_worker(platform, servers, tmp_path / "third"))
    InternalCA("test-ca", third.resolved_state_dir() / "ca" / "test-ca").ensure_root()
    with pytest.raises(ValueError, match="another root than the shared store's CA 'ca:test-ca'"):
        ensure_certificate(third, "db-server", force=True)


def test_a_pipeline_run_on_a_second_worker_uses_the_shared_certificate_and_leaves_no_copy(
    renewer, platform, servers, tmp_path, monkeypatch, instance
):
    import json
    import tempfile

    from secure_etl.definitions import build_definitions
    from secure_etl.security.audit_trail import platform_audit_log

    ensure_certificate(load_config(renewer), "etl-client")
    second = load_config(_worker(platform, servers, tmp_path / "second"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    result = (
        build_definitions(second)
        .resolve_job_def("customers_etl")
        .execute_in_process(partition_key="2026-01-01-00:00", instance=instance)
    )
    assert result.success
    assert list(scratch.iterdir()) == []  # each step's copies removed
    extract = next(
        r
        for r in map(json.loads, platform_audit_log(second).path.open())
        if r["action"] == "extract"
    )
    leaf = current_leaf(second, "etl-client")
    assert extract["actor"] == leaf.subject.rfc4514_string()
