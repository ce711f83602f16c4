"""Config errors name the file, the key path and what was expected."""

from __future__ import annotations

import copy

import pytest
import yaml

from secure_etl.config import ConfigError, default_config_path, load_config
from secure_etl_tests.conftest import BASE_CONFIG


def _with(change) -> dict:
    data = copy.deepcopy(BASE_CONFIG)
    change(data)
    return data


def _error(write_config, data) -> ConfigError:
    path = write_config(data)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    return caught.value


def test_the_bundled_demo_config_is_valid():
    config = load_config(default_config_path())
    assert config.pipelines["customers"].client_certificate == "etl-client"


def test_the_environment_chooses_the_config(write_config, monkeypatch):
    path = write_config()
    monkeypatch.setenv("SECURE_ETL_CONFIG", str(path))
    assert set(load_config().certificates) == {"db-server", "etl-client"}


def test_an_unknown_key_is_an_error_naming_its_path(write_config):
    err = _error(write_config, _with(lambda d: d["certificates"]["etl-client"].update(usage="x")))
    assert err.key == "certificates.etl-client.usage"
    assert "unknown key" in err.message


def test_a_missing_key_names_where_it_is_missing(write_config):
    err = _error(write_config, _with(lambda d: d["certificates"]["etl-client"].pop("use")))
    assert err.key == "certificates.etl-client.use"
    assert "missing" in err.message


def test_a_wrong_value_says_what_was_expected(write_config):
    err = _error(write_config, _with(lambda d: d["certificates"]["db-server"].update(use="both")))
    assert err.key == "certificates.db-server.use"
    assert "'server'" in err.message and "'client'" in err.message


def test_an_error_inside_a_list_item_names_its_index(write_config):
    def change(d):
        d["pipelines"]["customers"]["transforms"][0]["colums"] = ["email"]

    err = _error(write_config, _with(change))
    assert err.key == "pipelines.customers.transforms[0].colums"


def test_an_unknown_issuer_lists_the_ones_defined(write_config):
    err = _error(write_config, _with(lambda d: d["certificates"]["db-server"].update(issuer="le")))
    assert err.key == "certificates.db-server.issuer"
    assert "'le'" in err.message and "test-ca" in err.message


def test_a_pipeline_needs_a_client_certificate(write_config):
    def change(d):
        d["pipelines"]["customers"]["client_certificate"] = "db-server"

    err = _error(write_config, _with(change))
    assert err.key == "pipelines.customers.client_certificate"
    assert "etl-client" in err.message


def test_an_identifier_must_be_a_dns_name_or_an_ip(write_config):
    def change(d):
        d["certificates"]["db-server"]["identifiers"] = ["localhost", "not a name"]

    err = _error(write_config, _with(change))
    assert err.key == "certificates.db-server.identifiers"
    assert "not a name" in err.message


def test_broken_yaml_gives_the_line(write_config, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("issuers:\n  a: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: line \d+"):
        load_config(path)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_a_top_level_list_is_refused(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)


def test_a_certificate_named_like_a_union_tag_keeps_its_name_in_errors(write_config):
    def change(d):
        d["certificates"]["command"] = {"issuer": "test-ca", "use": "server", "identifiers": []}

    err = _error(write_config, _with(change))
    assert err.key == "certificates.command.identifiers"
