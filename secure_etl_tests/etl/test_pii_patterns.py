"""The check for personal data in undeclared columns: real Parquet stage files, each
count compared with one made here by hand; never a value in the result."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from secure_etl.etl import checks, pii_patterns, storage
from secure_etl.etl.sources.demo import generate_partition

PARTITION = "2026-03-01-10:00"
EMAILS = [f"person{i}@example.org" for i in range(7)]


def _files(tmp_path, hashed: pd.DataFrame) -> checks.StageFiles:
    files = checks.StageFiles.of(tmp_path, "people", PARTITION, None)
    storage.write_partition(files.hashed, hashed)
    return files


def test_a_planted_email_column_fails_naming_the_column_and_the_count_never_a_value(tmp_path):
    hashed = pd.DataFrame(
        {
            "id": range(10),
            "contact": [*EMAILS, "n/a", None, "call later"],
            "email": ["a" * 32] * 10,  # declared and pseudonymised: not looked at
        }
    )

    result = checks.no_undeclared_pii(_files(tmp_path, hashed), ["email"])

    assert not result.passed
    assert "contact (7)" in result.description
    assert not any(e in result.description for e in EMAILS)
    assert result.metadata["suspect_values"] == 7


def test_a_declared_column_is_not_counted(tmp_path):
    hashed = pd.DataFrame({"id": range(7), "contact": EMAILS})

    assert checks.no_undeclared_pii(_files(tmp_path, hashed), ["contact"]).passed


def test_the_demo_partition_as_the_demo_pipeline_loads_it_passes(tmp_path):
    raw = generate_partition(PARTITION, rows=500, seed=7)
    raw["customer_id"] = raw["customer_id"].astype(str)  # as the https_api source reads it
    hashed = raw.assign(
        full_name=["f" * 32] * len(raw), email=["e" * 32] * len(raw), phone=["v1:x"] * len(raw)
    )

    result = checks.no_undeclared_pii(_files(tmp_path, hashed), ["full_name", "email", "phone"])

    assert result.passed, result.description
    # The same demo data with its e-mails loaded raw under another name fails.
    leaked = hashed.assign(notes=raw["email"])
    failed = checks.no_undeclared_pii(_files(tmp_path, leaked), ["full_name", "email", "phone"])
    assert not failed.passed and "notes (" in failed.description


@pytest.mark.parametrize(
    ("value", "looks_personal"),
    [
        ("4111 1111 1111 1111", True),  # a test Visa number: Luhn digit right
        ("4111 1111 1111 1112", False),  # one digit off: not a card
        ("378282246310005", True),  # an American Express test number
        ("4982260000000", False),  # 13 digits, Luhn right: an id, no card in use
        ("9111111111111110", False),  # Luhn right, no issuer's prefix
        ("DE89 3704 0044 0532 0130 00", True),  # the textbook IBAN: mod-97 is 1
        ("DE89 3704 0044 0532 0130 01", False),
        ("+49 30 1234567", True),
        ("12345678", False),  # a bare number is no phone
        ("order-2026-0001", False),
        ("ann@example.org", True),
        ("see ann@example.org", True),
    ],
)
def test_each_pattern_and_its_checksum(value, looks_personal):
    counts = pii_patterns.personal_data_counts([pa.table({"c": [value, "plain text"]})])

    assert counts == ({"c": 1} if looks_personal else {})


def test_luhn_and_mod97_agree_with_a_by_hand_computation():
    # 79927398713: the Luhn example of ISO/IEC 7812; GB82WEST12345698765432 of ISO 13616.
    assert pii_patterns.luhn_valid("79927398713") and not pii_patterns.luhn_valid("79927398710")
    assert pii_patterns.iban_valid("GB82WEST12345698765432")
    assert not pii_patterns.iban_valid("GB82WEST12345698765433")


def test_only_the_sample_is_read():
    tables = [pa.table({"c": EMAILS}) for _ in range(10)]  # 70 rows

    assert pii_patterns.personal_data_counts(tables, sample_rows=10) == {"c": 10}
