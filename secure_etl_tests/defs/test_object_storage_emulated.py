"""Stage files in a bucket, against moto's standalone S3 server and gcp-storage-emulator
(no real AWS or GCS runs here): every test name says ``emulated``, and each runs once per
store. The pipeline reads and writes its raw, hashed and quarantined files and its load
markers in the bucket, nothing under the state directory's dataset folder, and retention
deletes the objects there."""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import boto3
import duckdb
import pyarrow as pa
import pytest
import yaml

from secure_etl.config import load_config
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import RENEWAL_JOB
from secure_etl.defs.retention import RETENTION_JOB
from secure_etl.etl import storage
from secure_etl.etl.destinations import duckdb as duckdb_dest
from secure_etl.pki.internal_ca import InternalCA
from secure_etl.pki.keys import generate_private_key
from secure_etl.security.audit_trail import platform_audit_log, verify_log
from secure_etl_tests.servers import start_python_server

pytestmark = pytest.mark.integration

PARTITION = "2026-03-01-10:00"
FILE = "2026-03-01-10-00.parquet"


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory):
    """moto's S3 server for the module (each test has its own bucket)."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc, url = start_python_server(["moto.server", "-H", "127.0.0.1", "-p"], "/moto-api/", log)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:  # it sometimes ignores SIGTERM (seen in CI)
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def moto_s3_tls(tmp_path_factory):
    """moto's S3 server over HTTPS, its certificate from an internal CA: (URL, CA file)."""
    work = tmp_path_factory.mktemp("moto-tls")
    ca = InternalCA("s3-tls", work / "ca")
    served = ca.issue(["127.0.0.1"], "server", generate_private_key("ec256"))
    (work / "cert.pem").write_bytes(served.fullchain_pem)
    (work / "key.pem").write_bytes(served.key_pem)
    argv = ["moto.server", "-H", "127.0.0.1", "-c", str(work / "cert.pem")]
    argv += ["-k", str(work / "key.pem"), "-p"]
    proc, url = start_python_server(argv, "/moto-api/", work / "moto.log", str(ca.root_path))
    yield url, str(ca.root_path)
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def gcs_emulator(tmp_path_factory):
    """gcp-storage-emulator (the GCS JSON API, in memory) for the module."""
    log = tmp_path_factory.mktemp("gcs") / "gcs.log"
    argv = ["gcp_storage_emulator", "start", "--in-memory", "--host", "127.0.0.1", "--port"]
    proc, url = start_python_server(argv, "/storage/v1/b", log)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:  # it sometimes ignores SIGTERM (seen in CI)
        proc.kill()
        proc.wait(10)


@dataclass(frozen=True)
class Bucket:
    """A fresh bucket on an emulator: its URL scheme, name, and how to list it."""

    scheme: str
    name: str
    keys: Callable[[], set[str]]


@pytest.fixture(params=["s3", "gs"])
def bucket(request, monkeypatch) -> Bucket:
    """A fresh bucket; the endpoint and credentials in the environment, as in production."""
    monkeypatch.delenv("SECURE_ETL_STATE_DIR", raising=False)
    name = f"etl-{uuid.uuid4().hex[:12]}"
    if request.param == "s3":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEMULATED")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "emulated-secret")
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        monkeypatch.setenv("AWS_ENDPOINT_URL", request.getfixturevalue("moto_s3"))
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        client = boto3.client("s3")  # endpoint, region and credentials from the environment
        client.create_bucket(Bucket=name)
        return Bucket("s3", name, lambda: _s3_keys(client, name))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", request.getfixturevalue("gcs_emulator"))
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    client = gcs.Client(project="emulated", credentials=AnonymousCredentials())
    client.create_bucket(name)
    return Bucket(
        "gs", name, lambda: _folders_dropped({b.name: b.size for b in client.list_blobs(name)})
    )


def _s3_keys(client, bucket: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return _folders_dropped(
        {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}
    )


def _folders_dropped(sizes: dict[str, int]) -> set[str]:
    """The objects, but the empty ``folder/`` markers pyarrow leaves when it deletes a
    folder's last object (they hold nothing)."""
    assert all(size == 0 for key, size in sizes.items() if key.endswith("/"))
    return {key for key in sizes if not key.endswith("/")}


def _platform(write_config, bucket: Bucket):
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["storage"] = {"url": f"{bucket.scheme}://{bucket.name}/lake/v1"}
    data["pipelines"]["customers"]["retention"] = {"raw_grace_hours": 0, "hashed_days": 30}
    return load_config(write_config(data, "s3.yaml"))


def test_a_partition_flows_through_the_bucket_and_retention_deletes_raw_there_emulated(
    write_config, bucket, instance
):
    platform = _platform(write_config, bucket)
    state = platform.resolved_state_dir()
    defs = build_definitions(platform)
    defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)

    result = defs.resolve_job_def("customers_etl").execute_in_process(
        partition_key=PARTITION, instance=instance
    )

    checks = {e.check_name: (e.passed, e.description) for e in result.get_asset_check_evaluations()}
    assert all(passed for passed, _ in checks.values()), checks
    rows = {
        e.asset_key.path[0]: e.materialization.metadata["rows"].value
        for e in result.get_asset_materialization_events()
    }
    quarantined = 200 - rows["hashed"]
    assert rows["raw"] == 200 and quarantined > 0
    assert checks["rows_reconcile"][1] == (
        f"raw 200 = loaded {rows['loaded']} + quarantined {quarantined} + filtered 0"
    )
    loaded = duckdb_dest.read_partition(state / "warehouse.duckdb", "customers", PARTITION)
    assert len(loaded) == rows["loaded"] == rows["hashed"]
    stage_keys = {f"lake/v1/{stage}/customers/{FILE}" for stage in ("raw", "hashed", "quarantine")}
    marker = f"lake/v1/hashed/customers/{FILE}.loaded.json"
    assert stage_keys | {marker, f"lake/v1/hashed/customers/{FILE}.counts.json"} <= bucket.keys()
    assert not (state / "data").exists()  # nothing on local disk but keys, certs, audit

    # Raw rows in the bucket are encrypted: unreadable without the key.
    raw = storage.storage_for(platform).file("raw", "customers", PARTITION)
    assert len(storage.read_partition(raw, storage.raw_crypto(platform))) == 200
    with pytest.raises(OSError):
        storage.read_partition(raw)
    # The audit log names the objects' digests, computed from the bucket.
    log = platform_audit_log(platform)
    extract = [r for r in map(json.loads, log.path.open()) if r["action"] == "extract"]
    assert extract[-1]["outputs"]["raw"] == raw.digest()

    deleted = defs.resolve_job_def(RETENTION_JOB).execute_in_process(instance=instance)

    assert deleted.output_for_node("apply_retention") == 2
    left = bucket.keys()
    assert f"lake/v1/raw/customers/{FILE}" not in left
    assert f"lake/v1/quarantine/customers/{FILE}" not in left
    assert {f"lake/v1/hashed/customers/{FILE}", marker} <= left  # hashed kept 30 days
    records = [r for r in map(json.loads, log.path.open()) if r["action"] == "retention.delete"]
    assert {r["inputs"].get("raw") or r["inputs"].get("quarantine") for r in records} == {
        f"{bucket.scheme}://{bucket.name}/lake/v1/raw/customers/{FILE}",
        f"{bucket.scheme}://{bucket.name}/lake/v1/quarantine/customers/{FILE}",
    }
    assert verify_log(log).ok
    assert not (state / "data").exists()


def test_the_one_pass_pipeline_writes_its_files_to_the_bucket_emulated(
    write_config, bucket, instance
):
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["storage"] = {"url": f"{bucket.scheme}://{bucket.name}/lake/v1"}
    data["pipelines"]["customers"]["one_pass"] = True
    platform = load_config(write_config(data, "one-pass.yaml"))
    defs = build_definitions(platform)
    defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)

    result = defs.resolve_job_def("customers_etl").execute_in_process(
        partition_key=PARTITION, instance=instance
    )

    assert all(e.passed for e in result.get_asset_check_evaluations())
    assert {f"lake/v1/{s}/customers/{FILE}" for s in storage.STAGES} <= bucket.keys()
    assert not (platform.resolved_state_dir() / "data").exists()


def test_an_object_appears_whole_or_not_at_all_emulated(write_config, bucket):
    platform = _platform(write_config, bucket)
    store = storage.storage_for(platform)
    file = store.file("raw", "customers", PARTITION)
    crypto = storage.raw_crypto(platform)

    writer = storage.PartitionWriter(file, crypto)
    writer.write(pa.table({"id": [1, 2, 3]}))
    assert not file.exists()  # still under a temporary name
    writer.abort()
    assert bucket.keys() == set() and store.partitions("raw", "customers") == []

    rows, size = storage.write_partition_chunks(
        file, [pa.table({"id": [1, 2]}), pa.table({"id": [3]})], crypto
    )
    assert (rows, size) == (3, file.size()) and bucket.keys() == {f"lake/v1/raw/customers/{FILE}"}
    assert storage.partition_rows(file, crypto) == 3
    with pytest.raises(OSError):
        storage.partition_rows(file)  # encrypted: no key, no footer
    with storage.local_copy(file) as path:
        assert path.stat().st_mode & 0o777 == 0o600
        assert storage.partition_rows(path, crypto) == 3
    assert not path.exists() and not path.parent.exists()
    file.unlink()
    assert not file.exists() and f"lake/v1/raw/customers/{FILE}" not in bucket.keys()


@pytest.mark.parametrize("bucket", ["s3"], indirect=True)
def test_an_incremental_pipeline_merges_from_the_bucket_emulated(
    platform, postgres_tls, write_config, bucket, instance
):
    """The cursor's high-water mark is read from the raw object, and DuckDB (which reads
    a file by its path) merges the hashed object from a temporary copy."""
    postgres_tls.psql(
        "CREATE TABLE orders (id bigint PRIMARY KEY, name text, email text, phone text, "
        "updated_at timestamptz NOT NULL);"
        "INSERT INTO orders SELECT g, 'Name ' || g, 'user' || g || '@example.com', "
        "'+49 30 ' || g, timestamptz '2026-03-01 10:00+00' + g * interval '1 minute' "
        "FROM generate_series(0, 49) g"
    )
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["storage"] = {"url": f"{bucket.scheme}://{bucket.name}/lake"}
    data["pipelines"]["customers"].update(
        source={
            "type": "postgres",
            "host": "localhost",
            "port": postgres_tls.port,
            "user": "etl-client.test",
            "dbname": "postgres",
            "table": "orders",
            "incremental": {"cursor_column": "updated_at", "lag_s": 0},
        },
        key_column="id",
        partitions={"type": "incremental"},
        transforms=[{"type": "pseudonymise", "columns": ["name", "email"], "key": "pseudo-1"}],
    )
    config = load_config(write_config(data, "incremental.yaml"))
    defs = build_definitions(config)
    defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
    job = defs.resolve_job_def("customers_etl")
    warehouse = config.resolved_state_dir() / "warehouse.duckdb"

    def run() -> dict:
        result = job.execute_in_process(instance=instance)
        assert all(e.passed for e in result.get_asset_check_evaluations())
        return result.asset_materializations_for_node("raw__customers")[0].metadata

    first = run()
    assert first["rows"].value == 50
    assert first["cursor_high_water"].value.startswith("2026-03-01T10:49")
    postgres_tls.psql(
        "INSERT INTO orders SELECT g, 'Name ' || g, 'user' || g || '@example.com', "
        "'+49 30 ' || g, timestamptz '2026-03-01 11:00+00' + (g - 50) * interval '1 minute' "
        "FROM generate_series(50, 54) g"
    )
    second = run()
    assert second["rows"].value == 6  # from the high-water mark (10:49) on
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT id) FROM customers").fetchone() == (
            55,
            55,
        )
    assert {f"lake/{s}/customers/incremental.parquet" for s in ("raw", "hashed")} <= bucket.keys()
    assert not (config.resolved_state_dir() / "data").exists()


def test_an_https_endpoint_is_verified_with_aws_ca_bundle_emulated(
    write_config, moto_s3_tls, monkeypatch
):
    url, root = moto_s3_tls
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEMULATED")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "emulated-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CA_BUNDLE", root)  # boto3 reads it too
    name = f"etl-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["storage"] = {"url": f"s3://{name}/tls"}
    platform = load_config(write_config(data, "tls.yaml"))

    file = storage.storage_for(platform).file("raw", "customers", PARTITION)
    storage.write_partition(file, pa.table({"id": [1, 2]}))
    assert storage.partition_rows(file) == 2

    monkeypatch.delenv("AWS_CA_BUNDLE")  # the system's roots do not know the internal CA
    with pytest.raises(OSError, match="(?i)ssl|certificate|curl"):
        storage.storage_for(platform).file("raw", "customers", PARTITION).exists()
