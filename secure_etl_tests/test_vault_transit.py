"""Raw files' data keys wrapped by a real Vault-API server (OpenBao's dev server)."""

from __future__ import annotations

import copy

import pyarrow as pa
import pytest
import yaml

from secure_etl.config import ConfigError, load_config
from secure_etl.etl import storage
from secure_etl.security.kms import KeyUnwrapError
from secure_etl.security.vault_transit import VaultError, VaultTransit


def _transit(openbao, key="raw-data", token=None) -> VaultTransit:
    return VaultTransit(
        openbao.address, key, token or openbao.token, ca_bundle=str(openbao.ca_bundle)
    )


def test_wrap_unwrap_through_vault_and_the_key_id_is_bound(openbao):
    openbao.request("POST", "transit/keys/raw-data")
    transit = _transit(openbao)
    data_key = bytes(range(32))
    wrapped = transit.wrap(data_key, "secure_etl-raw")
    assert wrapped.startswith("vault:v1:") and data_key.hex() not in wrapped
    assert transit.unwrap(wrapped, "secure_etl-raw") == data_key
    with pytest.raises(KeyUnwrapError, match="cannot unwrap the key for 'other-id'"):
        transit.unwrap(wrapped, "other-id")

    # Rotating the key in Vault: new wraps use v2, the v1 wrap still opens.
    openbao.request("POST", "transit/keys/raw-data/rotate")
    assert transit.wrap(data_key, "secure_etl-raw").startswith("vault:v2:")
    assert transit.unwrap(wrapped, "secure_etl-raw") == data_key


def test_a_bad_token_and_a_missing_key_are_clear_errors(openbao):
    with pytest.raises(VaultError, match=r"encrypt/raw-data: permission denied"):
        _transit(openbao, token="not-the-token").wrap(b"k" * 32, "id")
    with pytest.raises(KeyUnwrapError, match="decrypt/absent"):
        _transit(openbao, key="absent").unwrap("vault:v1:AAAA", "id")


def test_raw_partitions_are_encrypted_with_keys_wrapped_by_vault(
    openbao, write_config, monkeypatch
):
    openbao.request("POST", "transit/keys/etl")
    monkeypatch.setenv("TEST_VAULT_TOKEN", openbao.token)
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["kms"] = {
        "type": "vault_transit",
        "address": openbao.address,
        "key": "etl",
        "token_env": "TEST_VAULT_TOKEN",
        "ca_bundle": str(openbao.ca_bundle),
    }
    platform = load_config(write_config(data))
    path = storage.partition_file(platform.resolved_state_dir(), "raw", "p", "h")
    table = pa.table({"email": ["ann@example.org", "bo@example.org"]})
    storage.write_partition(path, table, storage.raw_crypto(platform))

    assert b"ann@example.org" not in path.read_bytes()
    assert storage.read_partition(path, storage.raw_crypto(platform))["email"].tolist() == [
        "ann@example.org",
        "bo@example.org",
    ]
    # Without Vault's key (here: another transit key) the file does not open.
    other = copy.deepcopy(data)
    other["kms"]["key"] = "someone-elses"
    openbao.request("POST", "transit/keys/someone-elses")
    with pytest.raises(Exception, match="someone-elses"):
        storage.read_partition(path, storage.raw_crypto(load_config(write_config(other, "o.yaml"))))
    # No token in the environment: the error names the variable.
    monkeypatch.delenv("TEST_VAULT_TOKEN")
    with pytest.raises(VaultError, match="TEST_VAULT_TOKEN"):
        storage.raw_crypto(platform)


def test_vault_must_be_spoken_to_over_https(write_config):
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["kms"] = {"type": "vault_transit", "address": "http://vault:8200", "key": "etl"}
    with pytest.raises(ConfigError, match=r"kms\.vault_transit\.address|kms\.address"):
        load_config(write_config(data))
