"""Column encryption, masking and row filters: round trips, tampering, and filters
that are checked when the config loads."""

from __future__ import annotations

import copy

import pyarrow as pa
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from secure_etl.config import ConfigError, load_config
from secure_etl.etl import filters
from secure_etl.etl.protect import ColumnCipher, DecryptError, decrypt_value, mask_column

KEY = bytes(range(32))
KEYS = {"k1": KEY}


@pytest.mark.parametrize("deterministic", [True, False])
def test_decrypt_of_encrypt_is_the_value_and_nulls_stay(deterministic):
    values = ["ada@example.com", None, "Grace Hopper", "ü∂", ""]
    out = ColumnCipher(KEY, "k1", deterministic).column(pa.array(values), "email")
    assert out[1].as_py() is None
    for plain, cipher in zip(values, out.to_pylist(), strict=True):
        if plain is not None:
            algorithm = "aes-siv" if deterministic else "aes-gcm"
            assert cipher.startswith(f"enc:v1:{algorithm}:k1:")
            assert decrypt_value(cipher, "email", KEYS) == plain


def test_aes_siv_is_deterministic_and_aes_gcm_is_not():
    twice = pa.array(["x", "x"])
    siv = ColumnCipher(KEY, "k1", True).column(twice, "c").to_pylist()
    gcm = ColumnCipher(KEY, "k1", False).column(twice, "c").to_pylist()
    assert siv[0] == siv[1] and gcm[0] != gcm[1]


@pytest.mark.parametrize("deterministic", [True, False])
def test_a_tampered_value_another_column_or_another_key_does_not_decrypt(deterministic):
    cipher = ColumnCipher(KEY, "k1", deterministic).column(pa.array(["secret"]), "c")[0].as_py()
    head, payload = cipher.rsplit(":", 1)
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    with pytest.raises(DecryptError, match="does not authenticate"):
        decrypt_value(f"{head}:{flipped}", "c", KEYS)
    with pytest.raises(DecryptError, match="does not authenticate"):
        decrypt_value(cipher, "other_column", KEYS)
    with pytest.raises(DecryptError, match="does not authenticate"):
        decrypt_value(cipher, "c", {"k1": bytes(32)})
    with pytest.raises(DecryptError, match="unknown key id"):
        decrypt_value(cipher, "c", {"k2": KEY})


def test_masks_keep_only_what_they_promise():
    phones = pa.array(["+49 30 1234567", "12", None])
    assert mask_column(phones, "keep_last", 4).to_pylist() == ["****4567", "****", None]
    emails = pa.array(["ada@example.com", "no-at-sign", None])
    assert mask_column(emails, "email_domain").to_pylist() == ["*@example.com", "****", None]
    assert mask_column(phones, "null").to_pylist() == [None, None, None]


def test_filters_follow_sql_semantics_for_nulls():
    table = pa.table({"country": ["DE", "US", None, "FR"], "amount": [1.0, -2.0, 3.0, None]})
    condition = filters.parse(
        {"and": [{"in": ["country", ["DE", "FR"]]}, {"not": {"lt": ["amount", 0]}}]}
    )
    assert filters.apply(table, condition)["country"].to_pylist() == ["DE"]
    assert filters.apply(table, filters.parse({"is_null": "country"})).num_rows == 1
    assert filters.apply(table, filters.parse({"not_in": ["country", ["US"]]})).num_rows == 2
    assert filters.columns(condition) == {"country", "amount"}


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({"like": ["email", "%@x"]}, "unknown operator 'like'"),
        ({"eq": ["email"]}, "where.eq: expects [column, value]"),
        ({"in": ["country", []]}, "the list of values is empty"),
        ({"and": []}, "expects a non-empty list"),
        ({"eq": ["a", 1], "ne": ["a", 2]}, "one operator"),
        ({"eq": [["a"], 1]}, "a column name is expected"),
    ],
)
def test_a_malformed_filter_is_refused_when_the_config_loads(write_config, where, message):
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["pipelines"]["customers"]["transforms"].append({"type": "filter", "where": where})
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(data, "f.yaml"))
    assert caught.value.key.startswith("pipelines.customers.transforms")
    assert message in caught.value.message


def test_an_unknown_column_in_a_filter_or_transform_is_refused_when_the_config_loads(
    write_config,
):
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["pipelines"]["customers"]["transforms"].append(
        {"type": "filter", "where": {"eq": ["contry", "DE"]}}
    )
    with pytest.raises(ConfigError, match="unknown column contry"):
        load_config(write_config(data, "f.yaml"))
    data["pipelines"]["customers"]["transforms"][-1] = {"type": "mask", "columns": ["email"]}
    with pytest.raises(ConfigError, match="column 'email' already takes pseudonymise"):
        load_config(write_config(data, "g.yaml"))


conditions = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from([*filters.OPERATORS, "x"]), inner, max_size=2)
    ),
    max_leaves=12,
)


@given(data=conditions)
def test_filter_parsing_raises_only_filter_error_on_any_input(data):
    try:
        condition = filters.parse(data)
    except filters.FilterError as err:
        assert str(err).startswith("where")
    else:
        assert filters.columns(condition)


def test_filter_values_are_fitted_to_the_columns_time_zone_and_decimal_precision():
    import datetime as dt

    table = pa.table(
        {
            "utc": pa.array(
                [dt.datetime(2026, 1, 1), dt.datetime(2026, 2, 1)], pa.timestamp("us", "UTC")
            ),
            "naive": pa.array(
                [dt.datetime(2026, 1, 1), dt.datetime(2026, 2, 1)], pa.timestamp("us")
            ),
            "price": pa.array([1, 2], pa.decimal128(10, 2)),
        }
    )
    # A time without a zone against a UTC column is taken as UTC, and the other way round.
    assert (
        filters.apply(table, filters.parse({"gt": ["utc", dt.datetime(2026, 1, 2)]})).num_rows == 1
    )
    aware = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    assert filters.apply(table, filters.parse({"gt": ["naive", aware]})).num_rows == 1
    assert (
        filters.apply(table, filters.parse({"in": ["utc", [dt.datetime(2026, 1, 1)]]})).num_rows
        == 1
    )
    # A whole number against a decimal(10, 2) (Arrow would need precision 21 otherwise).
    assert filters.apply(table, filters.parse({"ge": ["price", 2]})).num_rows == 1
