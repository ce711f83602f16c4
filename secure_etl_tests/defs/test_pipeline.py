"""The demo graph materialized in-process: certificates, then raw -> hashed -> loaded."""

from __future__ import annotations

import copy
import gc
import hashlib
import hmac
import json
import stat
import subprocess
import sys

import duckdb
import pandas as pd
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from dagster import AssetKey

from secure_etl.config import ConfigError, load_config
from secure_etl.defs.build import build_definitions
from secure_etl.defs.certificates import RENEWAL_JOB
from secure_etl.defs.demo import latest_complete_partitions, run_demo
from secure_etl.defs.names import certificate_check_names
from secure_etl.defs.pipelines import _data_step
from secure_etl.etl import storage
from secure_etl.etl.check_names import LOADED_CHECKS
from secure_etl.etl.destinations import duckdb as duckdb_dest
from secure_etl.security.hmac_keys import load_hmac_key

PARTITION = "2026-03-01-10:00"


def _materialize(platform, instance, partition=PARTITION):
    defs = build_definitions(platform)
    defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
    return defs.resolve_job_def("customers_etl").execute_in_process(
        partition_key=partition, instance=instance
    )


def _checks(result) -> dict[str, tuple[bool, str]]:
    return {e.check_name: (e.passed, e.description) for e in result.get_asset_check_evaluations()}


def test_a_partition_flows_to_the_warehouse_with_every_data_check_passing(platform, instance):
    result = _materialize(platform, instance)

    checks = _checks(result)
    assert set(checks) == {
        "rows_reconcile",
        "null_rate",
        "unique_keys",
        "no_pii_leak",
        "no_undeclared_pii",
        "audit_chain",
    }
    assert all(passed for passed, _ in checks.values()), checks
    rows = {
        e.asset_key.path[0]: e.materialization.metadata["rows"].value
        for e in result.get_asset_materialization_events()
    }
    quarantined = 200 - rows["hashed"]
    assert rows["raw"] == 200 and 0 < quarantined < 20  # bad_row_rate 0.02
    assert rows["loaded"] == rows["hashed"]
    expected = f"raw 200 = loaded {rows['loaded']} + quarantined {quarantined} + filtered 0"
    assert checks["rows_reconcile"][1] == expected


def test_pii_is_replaced_by_the_keyed_hmac_and_the_key_id_is_recorded(platform, instance):
    _materialize(platform, instance)
    state = platform.resolved_state_dir()
    raw = storage.read_partition(
        storage.partition_file(state, "raw", "customers", PARTITION), storage.raw_crypto(platform)
    )
    loaded = duckdb_dest.read_partition(state / "warehouse.duckdb", "customers", PARTITION)
    key = load_hmac_key("pseudo-1", platform.keys["pseudo-1"], state)

    first = raw.dropna(subset=["customer_id"]).iloc[0]
    row = loaded[loaded["customer_id"] == first["customer_id"]].iloc[0]
    expected = hmac.new(key.secret, first["email"].encode(), hashlib.sha256).hexdigest()
    assert row["email"] == expected
    assert row["_pseudonym_key_id"] == "pseudo-1"
    assert not loaded["email"].isin(raw["email"]).any()
    assert {"_run_id", "_pipeline_version", "_processed_at"} <= set(loaded.columns)
    key_file = state / "keys" / "pseudo-1.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_raw_and_quarantined_partitions_are_owner_only(platform, instance):
    _materialize(platform, instance)
    state = platform.resolved_state_dir()
    for stage in ("raw", "quarantine"):
        path = storage.partition_file(state, stage, "customers", PARTITION)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_loading_a_partition_twice_leaves_the_same_table(platform, instance):
    _materialize(platform, instance)
    db = platform.resolved_state_dir() / "warehouse.duckdb"
    query = "SELECT * EXCLUDE (_run_id, _processed_at) FROM customers ORDER BY customer_id"
    with duckdb.connect(str(db), read_only=True) as con:
        before = con.execute(query).df()

    _materialize(platform, instance)

    with duckdb.connect(str(db), read_only=True) as con:
        after = con.execute(query).df()
        runs = con.execute("SELECT count(DISTINCT _run_id) FROM customers").fetchone()[0]
    assert len(before) > 0
    pd.testing.assert_frame_equal(before, after)
    assert runs == 1  # the second load replaced the first, it did not add to it


def test_the_leak_check_fails_when_pii_is_not_pseudonymised(write_config, instance):
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["pipelines"]["customers"]["transforms"] = []
    # The policy refuses this config; its exemption (with a reason) lets the test load it.
    data["pipelines"]["customers"]["exemption"] = {"pii_transformed": "the leak check's test"}
    platform = load_config(write_config(data, "leaky.yaml"))

    checks = _checks(_materialize(platform, instance))

    passed, description = checks["no_pii_leak"]
    assert passed is False
    assert "email" in description and "full_name" in description
    assert "@" not in description  # counts, never the values
    # Declared PII (the demo schema marks these) is not the undeclared-PII check's business.
    assert checks["no_undeclared_pii"][0] is True


def test_the_demo_materializes_the_whole_graph_and_summarises_it(platform, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # an ephemeral instance
    summary = run_demo(platform, partitions=2, log=lambda _: None)

    assert set(summary.certificates) == {"db-server", "etl-client"}
    assert all(c["outcome"] == "issued" for c in summary.certificates.values())
    assert all(29 < c["days_remaining"] <= 30 for c in summary.certificates.values())
    partitions = latest_complete_partitions("2026-01-01-00:00", 2)
    assert len(partitions) == 2
    assert {label.split("[")[0] for label in summary.rows} == {
        "raw/customers",
        "hashed/customers",
        "loaded/customers",
    }
    assert len(summary.rows) == 6
    assert summary.all_checks_passed
    # Each certificate's, the loaded checks per partition, the health report's 2.
    assert len(summary.checks) == _cert_checks(platform) + 2 * len(LOADED_CHECKS) + 2
    # The base config keeps raw files 24 h after their load: the retention job ran and
    # deleted nothing yet.
    assert summary.deleted == []


def _one_pass_config(write_config, name="one-pass.yaml", **pipeline):
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["pipelines"]["customers"].update(one_pass=True, **pipeline)
    return load_config(write_config(data, name))


def test_one_pass_makes_the_same_assets_and_rows_as_the_staged_steps(
    platform, write_config, instance
):
    staged = _materialize(platform, instance)
    one_pass_config = _one_pass_config(
        write_config, destination={"type": "duckdb", "path": "one.duckdb", "table": "customers"}
    )
    one_pass = _materialize(one_pass_config, instance)

    assert all(passed for passed, _ in _checks(one_pass).values()), _checks(one_pass)
    stages = {e.asset_key.path[0] for e in one_pass.get_asset_materialization_events()}
    assert stages == {"raw", "hashed", "loaded"}
    state = platform.resolved_state_dir()
    ignore = ["_run_id", "_processed_at"]
    a = duckdb_dest.read_partition(state / "warehouse.duckdb", "customers", PARTITION)
    b = duckdb_dest.read_partition(state / "one.duckdb", "customers", PARTITION)
    pd.testing.assert_frame_equal(
        a.drop(columns=ignore).sort_values("customer_id").reset_index(drop=True),
        b.drop(columns=ignore).sort_values("customer_id").reset_index(drop=True),
    )
    assert staged.success


def test_one_pass_that_fails_to_load_leaves_no_files_behind(write_config, instance):
    config = _one_pass_config(
        write_config, destination={"type": "duckdb", "path": "blocked", "table": "customers"}
    )
    state = config.resolved_state_dir()
    (state / "blocked").mkdir(parents=True)  # a directory where the DuckDB file should be
    defs = build_definitions(config)
    defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
    result = defs.resolve_job_def("customers_etl").execute_in_process(
        partition_key=PARTITION, instance=instance, raise_on_error=False
    )
    assert not result.success
    for stage in ("raw", "hashed", "quarantine"):
        assert not storage.partition_file(state, stage, "customers", PARTITION).exists()
    assert gc.get_freeze_count() == 0  # the failed step handed its objects back


def test_a_data_step_keeps_what_exists_out_of_the_collector_and_hands_it_back():
    assert gc.get_freeze_count() == 0
    existing = len(gc.get_objects())
    with pytest.raises(RuntimeError), _data_step():
        # the objects of the process so far are out of the collector's passes...
        assert gc.get_freeze_count() >= existing // 2
        assert len(gc.get_objects()) < existing // 10
        raise RuntimeError("the step failed")
    # ...and back in them when the step ends, even by an exception
    assert gc.get_freeze_count() == 0
    assert len(gc.get_objects()) >= existing // 2


def test_every_kind_of_transform_in_one_pipeline(write_config, instance):
    from secure_etl.etl.value_cipher import decrypt_value

    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["keys"]["enc-1"] = {"file": "keys/enc-1.key", "create": True}
    data["pipelines"]["customers"]["transforms"] = [
        {"type": "filter", "where": {"not": {"in": ["country", ["US", "CA"]]}}},
        {"type": "pseudonymise", "columns": ["full_name"], "key": "pseudo-1"},
        {"type": "encrypt", "columns": ["email"], "key": "enc-1", "deterministic": True},
        {"type": "mask", "columns": ["phone"], "style": "keep_last", "keep": 3},
        {"type": "drop", "columns": ["amount_eur"]},
    ]
    config = load_config(write_config(data, "all.yaml"))
    result = _materialize(config, instance)

    checks = _checks(result)
    assert all(passed for passed, _ in checks.values()), checks
    state = config.resolved_state_dir()
    raw = storage.read_partition(
        storage.partition_file(state, "raw", "customers", PARTITION), storage.raw_crypto(config)
    )
    loaded = duckdb_dest.read_partition(state / "warehouse.duckdb", "customers", PARTITION)
    kept = raw.dropna(subset=["customer_id"])
    kept = kept[~kept["country"].isin(["US", "CA"])].set_index("customer_id")
    assert "amount_eur" not in loaded.columns
    assert set(loaded["country"]) <= set(kept["country"]) and len(loaded) == len(kept)
    key = load_hmac_key("enc-1", config.keys["enc-1"], state)
    first = loaded.iloc[0]
    assert (
        decrypt_value(first["email"], "email", {key.key_id: key.secret})
        == (kept.loc[first["customer_id"], "email"])
    )
    assert first["phone"] == "****" + kept.loc[first["customer_id"], "phone"][-3:]
    filtered = len(raw.dropna(subset=["customer_id"])) - len(kept)
    assert f"+ filtered {filtered}" in checks["rows_reconcile"][1] and filtered > 0


def test_raw_data_is_encrypted_at_rest_and_a_flipped_byte_is_detected(platform, instance):
    import pytest

    _materialize(platform, instance)
    state = platform.resolved_state_dir()
    path = storage.partition_file(state, "raw", "customers", PARTITION)
    crypto = storage.raw_crypto(platform)
    frame = storage.read_partition(path, crypto)
    email = frame["email"].dropna().iloc[0]
    assert email.encode() not in path.read_bytes()  # no plaintext on disk
    with pytest.raises(OSError, match="cannot read"):
        storage.read_partition(path)  # without the key
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    flipped = path.with_name("flipped.parquet")
    flipped.write_bytes(bytes(data))
    with pytest.raises(OSError):
        storage.read_partition(flipped, crypto)
    master = state / platform.kms.path
    assert oct(master.stat().st_mode & 0o777) == "0o600"


def test_retention_deletes_raw_after_the_load_and_its_grace_and_records_it(write_config, instance):
    from secure_etl.defs.retention import RETENTION_JOB
    from secure_etl.security.audit_trail import platform_audit_log, verify_log

    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["pipelines"]["customers"]["retention"] = {"raw_grace_hours": 0, "hashed_days": 30}
    config = load_config(write_config(data, "retention.yaml"))
    state = config.resolved_state_dir()
    defs = build_definitions(config)
    defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
    # Extracted but not loaded yet: nothing may go.
    defs.resolve_job_def("customers_etl").execute_in_process(
        partition_key=PARTITION, instance=instance, asset_selection=[AssetKey(["raw", "customers"])]
    )
    retention = defs.resolve_job_def(RETENTION_JOB)
    first = retention.execute_in_process(instance=instance)
    assert first.output_for_node("apply_retention") == 0
    raw = storage.partition_file(state, "raw", "customers", PARTITION)
    assert raw.exists()

    _materialize(config, instance)
    quarantine = storage.partition_file(state, "quarantine", "customers", PARTITION)
    assert quarantine.exists()
    second = retention.execute_in_process(instance=instance)
    assert second.output_for_node("apply_retention") == 2
    assert not raw.exists() and not quarantine.exists()
    assert storage.partition_file(state, "hashed", "customers", PARTITION).exists()  # 30 days
    log = platform_audit_log(config)
    actions = [json.loads(line) for line in log.path.open() if "retention.delete" in line]
    assert len(actions) == 2 and verify_log(log).ok
    # The same partition key as the extract, transform and load records.
    assert {a["partition"] for a in actions} == {PARTITION}


def test_a_rotated_key_gives_new_data_a_new_id_and_old_pseudonyms_stay_verifiable(
    write_config, instance, tmp_path
):
    base = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    base["pipelines"]["customers"]["transforms"][0]["truncate"] = 32
    first = load_config(write_config(base, "before.yaml"))
    _materialize(first, instance, "2026-03-01-10:00")

    # Rotate: a new secret with a new id; the old file moves under ``previous``.
    rotated = copy.deepcopy(base)
    rotated["keys"]["pseudo-1"] = {
        "file": "keys/pseudo-2.key",
        "create": True,
        "id": "pseudo-2",
        "previous": {"pseudo-1": {"file": "keys/pseudo-1.key"}},
    }
    second_path = write_config(rotated, "after.yaml")
    second = load_config(second_path)
    _materialize(second, instance, "2026-03-01-11:00")

    state = second.resolved_state_dir()
    db = state / "warehouse.duckdb"
    old = duckdb_dest.read_partition(db, "customers", "2026-03-01-10:00")
    new = duckdb_dest.read_partition(db, "customers", "2026-03-01-11:00")
    assert set(old["_pseudonym_key_id"]) == {"pseudo-1"}
    assert set(new["_pseudonym_key_id"]) == {"pseudo-2"}
    assert old["email"].str.len().eq(32).all() and new["email"].str.len().eq(32).all()

    # `secure-etl keys pseudonym` finds each stored pseudonym under its own key id.
    crypto = storage.raw_crypto(second)
    emails = []
    for partition, loaded in (("2026-03-01-10:00", old), ("2026-03-01-11:00", new)):
        raw = storage.read_partition(
            storage.partition_file(state, "raw", "customers", partition), crypto
        ).dropna(subset=["customer_id", "email"])
        row = raw.iloc[0]
        emails.append((row["email"], loaded.set_index("customer_id").loc[row["customer_id"]]))
    done = subprocess.run(
        [sys.executable, "-m", "secure_etl.cli", "keys", "pseudonym", "pseudo-1"]
        + ["--truncate", "32", "--config", str(second_path)],
        input="".join(f"{email}\n" for email, _ in emails),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == 2 and all(set(a) == {"pseudo-1", "pseudo-2"} for a in answers)
    for (email, stored), answer in zip(emails, answers, strict=True):
        assert answer[stored["_pseudonym_key_id"]] == stored["email"]
        assert email not in done.stdout.replace(json.dumps(answer), "")  # values not echoed
    # The key use is audited by ids and counts only.
    records = [json.loads(line) for line in (state / "audit" / "audit.log").open()]
    use = [r for r in records if r["action"] == "key.pseudonym"]
    assert use and use[-1]["key_ids"] == ["pseudo-1", "pseudo-2"]
    assert use[-1]["outputs"]["values"] == "2"
    assert emails[0][0] not in (state / "audit" / "audit.log").read_text()


def test_a_truncation_below_the_floor_is_refused_naming_the_key(write_config):
    data = copy.deepcopy(yaml.safe_load(write_config().read_text()))
    data["pipelines"]["customers"]["transforms"][0]["truncate"] = 16
    with pytest.raises(ConfigError, match=r"transforms\[0\]\.truncate: .* 32 \(got 16\)"):
        load_config(write_config(data, "short.yaml"))


def test_the_leak_guard_finds_a_raw_value_written_to_the_event_log(platform, instance):
    result = _materialize(platform, instance)
    assert _checks(result)["no_pii_leak"][0] is True  # previews and logs hold no raw PII
    state = platform.resolved_state_dir()
    raw = storage.read_partition(
        storage.partition_file(state, "raw", "customers", PARTITION), storage.raw_crypto(platform)
    )
    email = raw["email"].dropna().iloc[0]
    # A careless log line in the run that made the raw and hashed files...
    instance.report_engine_event(
        f"debug: first row has {email}", run_id=result.run_id, job_name="customers_etl"
    )

    # ...is found when the partition is loaded again, in another run.
    again = (
        build_definitions(platform)
        .resolve_job_def("customers_etl")
        .execute_in_process(
            partition_key=PARTITION,
            instance=instance,
            asset_selection=[AssetKey(["loaded", "customers"])],
            raise_on_error=False,
        )
    )
    passed, description = _checks(again)["no_pii_leak"]
    assert passed is False
    assert description == "raw PII values found in event_log (1)"


def test_the_bundled_demo_protects_its_data_end_to_end_and_its_audit_log_verifies(
    tmp_path, monkeypatch
):
    """What `make demo` runs, on the bundled config: a filter, pseudonyms, an encrypted
    column, encrypted raw files, retention and the audit log."""
    monkeypatch.setenv("SECURE_ETL_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "dagster_home").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.delenv("SECURE_ETL_CONFIG", raising=False)
    done = subprocess.run(
        [sys.executable, "-m", "secure_etl.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    checks = _cert_checks(load_config()) + len(LOADED_CHECKS) + 2  # one partition
    assert f"Checks: {checks}/{checks} passed" in done.stdout
    assert "Retention: deleted 2 files" in done.stdout  # raw and quarantine, once loaded
    platform = load_config()
    state = platform.resolved_state_dir()
    # The data came over mutual TLS: the demo API saw the etl-client certificate now
    # current (its SHA-256 computed here, from the store), and the endpoint check passed.
    assert "Connections verified: 1/1\n" in done.stdout
    pem = (state / "certs" / "etl-client" / "current" / "fullchain.pem").read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    seen = f"client certificate etl-client sha256:{hashlib.sha256(der).hexdigest()[:16]}, "
    seen += "1 connection\n"
    assert seen in done.stdout
    assert "the demo API answered 4 requests" in done.stdout  # 1000 rows, 250 a page
    loaded = (
        duckdb.connect(str(state / "warehouse.duckdb"), read_only=True)
        .execute("SELECT country, email, phone, _pseudonym_key_id FROM customers")
        .df()
    )
    assert len(loaded) > 500 and "US" not in set(loaded["country"])  # the filter
    assert loaded["email"].str.fullmatch("[0-9a-f]{64}").all()  # pseudonyms
    assert loaded["phone"].str.startswith("enc:v1:aes-gcm:demo-encryption-1:").all()
    assert not list((state / "data" / "raw").rglob("*.parquet"))  # retention ran
    verified = subprocess.run(
        [sys.executable, "-m", "secure_etl.cli", "audit", "verify"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0, verified.stdout
    log = (state / "audit" / "audit.log").read_text()
    assert all(f'"action":"{a}"' in log for a in ("extract", "transform", "load"))
    assert '"action":"retention.delete"' in log

    # `secure-etl status` reports from the same instance, store and log.
    status = subprocess.run(
        [sys.executable, "-m", "secure_etl.cli", "status", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    [pipeline] = report["pipelines"]
    assert pipeline["last_run_status"] == "SUCCESS" and pipeline["fresh"] is True
    assert pipeline["rows_loaded"] == len(loaded)
    assert 0 < pipeline["quarantine_rate"] < 0.02 and pipeline["filtered_rows"] > 0
    assert {c["name"] for c in report["certificates"]} == {"warehouse-server", "etl-client"}
    assert all(c["ready"] and 29 < c["days_left"] <= 30 for c in report["certificates"])
    assert report["security"]["audit_chain_ok"] and report["security"]["renewals_30d"] == 2
    assert (report["security"]["connections"], report["security"]["connections_verified"]) == (1, 1)
    assert report["problems"] == []
    prom = (state / "metrics" / "secure_etl.prom").read_text()
    ready = 'secure_etl_certificate_ready_status{name="etl-client",issuer="demo-ca",'
    assert ready + 'condition="True"} 1.0' in prom and ready + 'condition="False"} 0.0' in prom
    assert f'secure_etl_pipeline_rows_loaded{{pipeline="customers"}} {float(len(loaded))!r}' in prom


def _cert_checks(platform) -> int:
    """How many checks the certificates have (served_by_endpoint only with endpoints)."""
    return sum(len(certificate_check_names(platform, name)) for name in platform.certificates)
