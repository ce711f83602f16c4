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


def _billion_laughs(levels: int = 9) -> str:
    """The classic YAML bomb: nine short lines that stand for 9**9 strings."""
    lines = ['  - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghij"
    for previous, name in zip(names, names[1:levels], strict=False):
        lines.append(f"  - &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _yaml_with_state_dir(write_config, state_dir_yaml: str):
    """The base config with ``state_dir:`` followed by raw YAML (kept out of safe_dump)."""
    path = write_config()
    data = yaml.safe_load(path.read_text())
    data.pop("state_dir")
    path.write_text(yaml.safe_dump(data) + "state_dir:" + state_dir_yaml)
    return path


def test_a_billion_laughs_is_refused_before_anything_is_built(write_config, monkeypatch):
    from secure_etl import config as config_module

    def never(*args, **kwargs):
        raise AssertionError("the expansion was built")

    # Before the fix, validating the bomb as state_dir and repr-ing it ran for minutes.
    monkeypatch.setattr(config_module._BoundedLoader, "construct_document", never)
    monkeypatch.setattr(config_module.PlatformConfig, "model_validate", never)
    path = _yaml_with_state_dir(write_config, "\n" + _billion_laughs())
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    err = caught.value
    assert str(err).startswith(f"{path}: line ")
    assert "more than 100000 values once aliases expand" in err.message
    assert len(str(err).splitlines()) == 1


def test_more_aliases_than_the_budget_is_refused(write_config):
    path = _yaml_with_state_dir(write_config, " &x s\nlabels: [" + ", ".join(["*x"] * 101) + "]\n")
    with pytest.raises(ConfigError, match="more than 100 aliases"):
        load_config(path)


def test_a_few_aliases_are_still_fine(write_config):
    path = write_config()
    text = path.read_text().replace("issuer: test-ca", "issuer: &ca test-ca", 1)
    path.write_text(text.replace("issuer: test-ca", "issuer: *ca"))
    assert {c.issuer for c in load_config(path).certificates.values()} == {"test-ca"}


def test_a_thousand_nested_lists_is_one_line_not_a_recursion_error(write_config):
    path = _yaml_with_state_dir(write_config, " " + "[" * 1000 + "]" * 1000 + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "nested more than 50 levels deep" in caught.value.message
    assert str(caught.value).startswith(f"{path}: line ")


def test_a_huge_wrong_value_is_echoed_in_at_most_80_characters(write_config):
    data = _with(lambda d: d.update(state_dir=["x" * 1000] * 1000))
    err = _error(write_config, data)
    assert err.key == "state_dir"
    echoed = err.message.partition("(got ")[2]
    assert echoed and len(echoed) <= 81 and "..." in echoed


def test_control_characters_in_a_key_or_value_are_escaped(write_config, capsys):
    from secure_etl.cli import main

    hostile = "evil\x1b[31m\nsecure-etl: all good\x00"
    data = _with(lambda d: d["certificates"]["etl-client"].update({hostile: hostile}))
    err = _error(write_config, data)
    assert "evil\\x1b[31m\\nsecure-etl: all good\\x00" in err.key
    data = _with(lambda d: d["certificates"]["etl-client"].update(issuer=hostile))
    err = _error(write_config, data)
    assert "\\x1b[31m" in err.message and "\\n" in err.message
    for text in (str(err), err.key, err.message):
        assert not any(c in text for c in "\x1b\n\x00")

    data = _with(lambda d: d["certificates"]["etl-client"].update({hostile: 1}))
    assert main(["status", "--config", str(write_config(data, "hostile.yaml"))]) == 2
    printed = capsys.readouterr().err
    assert printed.count("\n") == 1 and "\x1b" not in printed and "\x00" not in printed
    assert "evil\\x1b[31m\\nsecure-etl: all good\\x00" in printed


def test_a_misspelt_required_key_is_named_with_the_closest_valid_one(write_config):
    def change(d):
        d["certificates"]["etl-client"]["usage"] = d["certificates"]["etl-client"].pop("use")

    err = _error(write_config, _with(change))
    assert err.key == "certificates.etl-client.usage"
    assert err.message == "unknown key; did you mean `use`?"


def test_an_unknown_partition_type_names_the_key_written_and_the_known_types(write_config):
    def change(d):
        d["pipelines"]["customers"]["partitions"] = {"type": "daily"}

    err = _error(write_config, _with(change))
    assert err.key == "pipelines.customers.partitions.type"
    assert err.message == "unknown type 'daily' (one of: hourly, cron, incremental)"


def test_an_unknown_source_type_lists_the_known_ones(write_config):
    err = _error(
        write_config, _with(lambda d: d["pipelines"]["customers"]["source"].update(type="ftp"))
    )
    assert err.key == "pipelines.customers.source.type"
    assert "unknown type 'ftp' (one of: " in err.message and "postgres" in err.message


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("certificate_check_schedule", "every 30 minutes", "needs 5 fields"),
        ("retention_schedule", "61 * * * *", "minute 61 is outside 0-59"),
        ("retention_schedule", "0 25 * * *", "hour 25 is outside 0-23"),
        ("retention_schedule", "*/0 * * * *", "step of 0"),
        ("retention_schedule", "0 0 * foo *", "month 'foo' is not a number"),
    ],
)
def test_a_schedule_that_is_not_cron_is_refused_at_load(write_config, key, value, says):
    err = _error(write_config, _with(lambda d: d.update({key: value})))
    assert err.key == key
    assert says in err.message


def test_two_pipelines_writing_one_table_are_refused(write_config):
    def change(d):
        d["pipelines"]["again"] = copy.deepcopy(d["pipelines"]["customers"])

    err = _error(write_config, _with(change))
    assert err.key == "pipelines.again.destination"
    assert "pipeline 'customers' already writes this table" in err.message
    # Another table in the same warehouse is fine.
    ok = _with(change)
    ok["pipelines"]["again"]["destination"]["table"] = "customers_eu"
    load_config(write_config(ok))


def test_relative_paths_resolve_against_the_config_files_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("SECURE_ETL_STATE_DIR", raising=False)
    data = _with(lambda d: d["certificates"]["db-server"].update(ca_bundle="roots.pem"))
    data["state_dir"] = "state"
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "platform.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)  # anywhere but the config's directory

    config = load_config(path)

    assert config.resolved_state_dir() == tmp_path / "conf" / "state"
    assert config.certificates["db-server"].ca_bundle == str(tmp_path / "conf" / "roots.pem")


def test_the_bundled_demo_keeps_its_state_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("SECURE_ETL_STATE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert load_config(default_config_path()).resolved_state_dir() == tmp_path / ".secure_etl"


@pytest.mark.parametrize("bad", ["customers; DROP TABLE x", "1st", "a" * 64, 'q"uote'])
def test_a_sql_name_that_is_not_plain_is_refused_at_load(write_config, bad):
    from secure_etl.identifiers import is_sql_name

    pipeline = next(iter(BASE_CONFIG["pipelines"]))
    data = _with(lambda d: d["pipelines"][pipeline]["destination"].update(table=bad))
    err = _error(write_config, data)
    assert err.key == f"pipelines.{pipeline}.destination.table"
    assert not is_sql_name(bad) and is_sql_name("customers_2") and is_sql_name("_" + "a" * 62)


def test_one_sql_name_rule_at_each_databases_length():
    from secure_etl.config import MariaDBSource
    from secure_etl.identifiers import is_sql_name

    assert not is_sql_name("customers\n")  # no end-of-line slips past the anchor
    assert is_sql_name("a" * 64, longest=64) and not is_sql_name("a" * 65, longest=64)
    source = {"type": "mariadb", "host": "db", "user": "etl", "time_column": "t"}
    assert MariaDBSource(**source, database="d" * 64, table="t" * 64).table == "t" * 64
    for bad in ({"table": "t" * 65}, {"table": "1t"}, {"time_column": "c" * 64}):
        with pytest.raises(ValueError, match="should match pattern"):
            MariaDBSource(**{**source, "database": "d", "table": "t", **bad})


def _pipeline(change) -> dict:
    return _with(lambda d: change(d["pipelines"]["customers"]))


def _filter(where: dict):
    return lambda p: p["transforms"].append({"type": "filter", "where": where})


POSTGRES = {"type": "postgres", "host": "db.test", "dbname": "shop", "user": "etl", "table": "t"}


@pytest.mark.parametrize(
    ("change", "key", "says"),
    [
        (
            lambda p: p.update(key_column="cust_id"),
            "key_column",
            "unknown column 'cust_id' (the source has amount_eur, country, customer_id, "
            "email, full_name, phone, signup_at); did you mean `customer_id`?",
        ),
        (
            _filter({"gt": ["amount_eur", "10"]}),
            "transforms[1].where.gt",
            "amount_eur is a number column: compare it with a number, unquoted, "
            "not the string '10'",
        ),
        (
            _filter({"and": [{"ne": ["country", "US"]}, {"not": {"in": ["country", ["DE", 3]]}}]}),
            "transforms[1].where.and[1].not.in",
            "country is a string column: compare it with a string",
        ),
        (
            _filter({"ge": ["signup_at", "2026-11-01"]}),
            "transforms[1].where.ge",
            "signup_at is a timestamp column: compare it with a date (2026-11-01) or a time "
            "with its zone (2026-11-01T00:00:00Z), unquoted, not the string '2026-11-01'",
        ),
        (
            _filter({"eq": ["customer_id", 1.5]}),
            "transforms[1].where.eq",
            "customer_id is an integer column: compare it with a whole number",
        ),
        (
            _filter({"eq": ["customer_id", True]}),
            "transforms[1].where.eq",
            "not true",
        ),
        (
            _filter({"eq": ["contry", "DE"]}),
            "transforms[1].where.eq",
            "unknown column contry",
        ),
        (
            lambda p: p["transforms"].append({"type": "drop", "columns": ["customer_id"]}),
            "transforms[1].columns",
            "drops the key_column 'customer_id', which the destination needs",
        ),
        (
            lambda p: p.update(
                source={
                    **POSTGRES,
                    "time_column": "amount",
                    "columns": {"id": "integer", "amount": "number"},
                },
                key_column="id",
                transforms=[],
            ),
            "source.time_column",
            "amount is a number column; this must be a timestamp or date column",
        ),
        (
            lambda p: p.update(
                source={
                    **POSTGRES,
                    "incremental": {"cursor_column": "updated_at"},
                    "columns": ["id"],
                },
                key_column="id",
                transforms=[],
                partitions={"type": "incremental"},
            ),
            "source.incremental.cursor_column",
            "'updated_at' is not among the source's columns (id); add it to columns",
        ),
        (
            lambda p: p.update(
                source={
                    **POSTGRES,
                    "incremental": {"cursor_column": "id"},
                    "columns": {"id": "integer"},
                },
                key_column="id",
                transforms=[],
                partitions={"type": "incremental"},
            ),
            "source.incremental.cursor_column",
            "id is an integer column; this must be a timestamp or date column",
        ),
        (
            lambda p: p.update(
                source={
                    **POSTGRES,
                    "time_column": "ts",
                    "columns": {"id": "integer", "ts": "timezone"},
                },
                key_column="id",
                transforms=[],
            ),
            "source.columns.ts",
            "Input should be 'integer', 'number', 'string', 'boolean', 'timestamp' or 'date'",
        ),
        (
            lambda p: p.update(
                source={**POSTGRES, "time_column": "ts", "columns": "id"},
                key_column="id",
                transforms=[],
            ),
            "source.columns",
            "expected a list of column names, or a mapping of names to their kinds",
        ),
        (
            lambda p: p.update(
                source={**POSTGRES, "time_column": "ts", "columns": ["id", "bad name"]},
                key_column="id",
                transforms=[],
            ),
            "source.columns",
            "String should match pattern",
        ),
        (
            lambda p: p.update(
                source={
                    "type": "mariadb",
                    "host": "db.test",
                    "database": "shop",
                    "user": "etl",
                    "table": "t",
                    "time_column": "ts",
                    "columns": {"id": "integer", "ts": "timestamp", "vip": "boolean"},
                },
                key_column="id",
                transforms=[{"type": "filter", "where": {"eq": ["vip", "yes"]}}],
            ),
            "transforms[0].where.eq",
            "vip is a boolean column: compare it with true or false, unquoted, not the string",
        ),
    ],
)
def test_key_time_cursor_and_filter_columns_are_checked_against_the_sources_columns(
    write_config, change, key, says
):
    err = _error(write_config, _pipeline(change))
    assert err.key == f"pipelines.customers.{key}"
    assert says in err.message


@pytest.mark.parametrize(
    "change",
    [
        _filter({"gt": ["amount_eur", 10]}),
        _filter(
            {"and": [{"ge": ["signup_at", "2026-11-01"]}]}
        ),  # quoted here, a date in YAML below
        _filter({"in": ["country", ["DE", "FR"]]}),
        # Names only: kinds unknown, so any value is left to the run; a time_column that
        # is not among the columns read may still be the one the query filters on.
        lambda p: p.update(
            source={**POSTGRES, "time_column": "created_at", "columns": ["id", "amount"]},
            key_column="id",
            transforms=[{"type": "filter", "where": {"gt": ["amount", "10"]}}],
        ),
        # No columns named: nothing is known, nothing is said.
        lambda p: p.update(
            source={**POSTGRES, "time_column": "created_at"},
            key_column="anything",
            transforms=[{"type": "filter", "where": {"gt": ["whatever", "10"]}}],
        ),
        lambda p: p.update(
            source={"type": "https_api", "url": "https://api.test/rows"},
            key_column="id",
            transforms=[{"type": "filter", "where": {"eq": ["x", 1]}}],
        ),
    ],
)
def test_what_fits_the_sources_columns_or_cannot_be_known_loads(write_config, change):
    data = _pipeline(change)
    text = yaml.safe_dump(data, sort_keys=False).replace("'2026-11-01'", "2026-11-01")
    path = write_config(data)
    path.write_text(text)
    assert load_config(path).pipelines["customers"]


def test_declared_column_kinds_are_what_the_source_reports_and_reads(write_config):
    data = _pipeline(
        lambda p: p.update(
            source={
                **POSTGRES,
                "time_column": "ts",
                "columns": {"id": "integer", "ts": "timestamp"},
            },
            key_column="id",
            transforms=[],
        )
    )
    source = load_config(write_config(data)).pipelines["customers"].source
    assert source.column_kinds() == {"id": "integer", "ts": "timestamp"}
    assert source.selected_columns() == ["id", "ts"]
    assert source.known_columns() == {"id", "ts"}


def test_the_column_kinds_of_the_config_are_the_filter_grammars():
    import typing

    from secure_etl import filter_grammar
    from secure_etl.config import ColumnKind
    from secure_etl.demo.schema import KINDS, SCHEMA

    assert typing.get_args(ColumnKind) == filter_grammar.KINDS
    assert set(KINDS) == set(SCHEMA) and set(KINDS.values()) <= set(filter_grammar.KINDS)


def test_a_shared_backend_without_its_connection_is_named(write_config):
    data = {**copy.deepcopy(BASE_CONFIG), "audit": {"backend": "postgres"}}
    err = _error(write_config, data)
    assert err.key == "audit" and "backend postgres needs a postgres: section" in err.message


def test_a_certificate_store_section_without_its_backend_is_named(write_config):
    section = {"host": "db", "dbname": "d", "user": "u", "client_certificate": "c.pem"}
    section |= {"client_key": "c.key", "ca_bundle": "ca.pem"}
    data = {**copy.deepcopy(BASE_CONFIG), "certificate_store": {"postgres": section}}
    err = _error(write_config, data)
    assert err.key == "certificate_store" and "needs backend: postgres" in err.message
