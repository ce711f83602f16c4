"""``storage.url``: left out, the stage files stay exactly where they always were; a URL
that carries credentials or options, or names an unknown scheme, is refused with one
line naming the file and key (the secret is not repeated)."""

from __future__ import annotations

import copy
import stat

import pyarrow as pa
import pytest

from secure_etl import cli
from secure_etl.config import ConfigError, load_config
from secure_etl.etl import storage
from secure_etl_tests.conftest import BASE_CONFIG


def _with_url(url: str) -> dict:
    data = copy.deepcopy(BASE_CONFIG)
    data["storage"] = {"url": url}
    return data


def _refused(write_config, url: str) -> ConfigError:
    path = write_config(_with_url(url))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and caught.value.key == "storage.url"
    assert "\n" not in str(caught.value)
    return caught.value


def test_without_storage_url_the_files_stay_under_the_state_dir_as_before(platform):
    state = platform.resolved_state_dir()
    store = storage.storage_for(platform)
    assert store.is_local and store.fs is None
    for stage in storage.STAGES:
        file = store.file(stage, "customers", "2026-03-01-10:00")
        assert file.local_path == storage.partition_file(
            state, stage, "customers", "2026-03-01-10:00"
        )
        assert file.local_path == state / "data" / stage / "customers" / "2026-03-01-10-00.parquet"


def test_a_local_storage_url_is_relative_to_the_state_dir_and_owner_only(write_config):
    platform = load_config(write_config(_with_url("datasets")))
    store = storage.storage_for(platform)
    file = store.file("raw", "customers", "2026-03-01-10:00")
    storage.write_partition(file, pa.table({"a": [1, 2]}))
    expected = platform.resolved_state_dir() / "datasets" / "raw" / "customers"
    assert file.local_path == expected / "2026-03-01-10-00.parquet"
    assert stat.S_IMODE(file.local_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(expected.stat().st_mode) == 0o700
    assert [f.name for f in store.partitions("raw", "customers")] == ["2026-03-01-10-00.parquet"]
    with storage.local_copy(file) as path:
        assert path == file.local_path  # a local file is read where it is


@pytest.mark.parametrize(
    "url",
    [
        "s3://AKIAEXAMPLE:hunter2-secret@bucket/prefix",
        "s3://hunter2-secret@bucket/prefix",
        "gs://user:hunter2-secret@bucket",
    ],
)
def test_a_storage_url_with_credentials_is_refused_without_repeating_them(write_config, url):
    err = _refused(write_config, url)
    assert "credentials in the URL are refused" in err.message
    assert "hunter2" not in str(err) and "AKIAEXAMPLE" not in str(err)


def test_a_storage_url_with_options_is_refused(write_config):
    err = _refused(write_config, "s3://bucket/prefix?access_key=AK&secret_key=hunter2")
    assert "options in the URL are refused" in err.message and "hunter2" not in str(err)


@pytest.mark.parametrize("url", ["ftp://host/data", "file:///tmp/data", "S3X://bucket/x"])
def test_an_unknown_storage_scheme_is_refused(write_config, url):
    err = _refused(write_config, url)
    assert err.message.startswith("unknown scheme") and "s3, gs" in err.message


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix", "s3://bucket:9000/prefix", " "])
def test_a_storage_url_without_a_bucket_is_refused(write_config, url):
    _refused(write_config, url)


def test_the_cli_refuses_a_url_with_credentials_in_one_line_exit_2(
    write_config, monkeypatch, capsys
):
    monkeypatch.setenv(
        "SECURE_ETL_CONFIG", str(write_config(_with_url("s3://AK:hunter2@bucket/p"), "c.yaml"))
    )
    assert cli.main(["audit", "verify"]) == 2
    err = capsys.readouterr().err
    assert "c.yaml: storage.url: credentials in the URL are refused" in err
    assert len(err.strip().splitlines()) == 1 and "hunter2" not in err
    assert "Traceback" not in err


def test_a_bucket_url_takes_its_region_from_the_environment_and_names_objects_by_url(
    write_config, monkeypatch
):
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    platform = load_config(write_config(_with_url("s3://my-bucket/lake/")))
    store = storage.storage_for(platform)
    assert not store.is_local and store.fs.region == "eu-west-3"
    file = store.file("hashed", "customers", "2026-03-01-10:00")
    assert file.local_path is None and file.path == (
        "my-bucket/lake/hashed/customers/2026-03-01-10-00.parquet"
    )
    assert str(file) == "s3://my-bucket/lake/hashed/customers/2026-03-01-10-00.parquet"
    assert str(storage.counts_file(file)).endswith("2026-03-01-10-00.parquet.counts.json")
    assert storage.partition_of(file) == "2026-03-01-10:00"
