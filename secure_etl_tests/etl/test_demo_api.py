"""The offline demo's HTTPS API: the bundled demo's certificates, a real TLS server on
127.0.0.1, real clients (the https_api source, a bare handshake, httpx)."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import ssl

import httpx
import pandas as pd
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from secure_etl.config import default_config_path, load_config
from secure_etl.etl import demo_api
from secure_etl.etl.sources.demo import generate_partition
from secure_etl.etl.sources.https_api import ApiError, ApiSource, client_context, fetch_pages
from secure_etl.pki.endpoints import served_chain, stale_endpoints
from secure_etl.pki.internal_ca import InternalCA
from secure_etl.pki.keys import generate_private_key
from secure_etl.pki.renewal import (
    certificate_store,
    current_chain,
    ensure_certificate,
    trust_bundle,
)

PARTITION = "2026-03-01-10:00"
HOUR = {"start": "2026-03-01T10:00:00+00:00", "end": "2026-03-01T11:00:00+00:00"}


def free_port() -> int:
    with socket.create_server((demo_api.HOST, 0)) as sock:
        return sock.getsockname()[1]


def bundled_demo(tmp_path, port: int):
    """The bundled demo config with its API (url, endpoint, demo_api) on ``port`` and its
    state in ``tmp_path/state`` (the config file beside it, so its relative paths agree)."""
    text = default_config_path().read_text().replace("18443", str(port))
    data = yaml.safe_load(text)
    data["state_dir"] = "."
    data["pipelines"]["customers"]["retry"] = {"max_retries": 0, "delay_s": 0}
    (tmp_path / "state").mkdir(exist_ok=True)
    path = tmp_path / "state" / "platform.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


@pytest.fixture
def demo(tmp_path, monkeypatch):
    """The bundled demo's certificates issued; its API's settings on a free port."""
    monkeypatch.delenv("SECURE_ETL_STATE_DIR", raising=False)
    platform = bundled_demo(tmp_path, 18443)  # the tests below serve on a free port
    for name in platform.certificates:
        ensure_certificate(platform, name)
    store = certificate_store(platform)
    ca = trust_bundle(platform, "warehouse-server")  # demo-ca's root
    settings = demo_api.DemoApiSettings(
        port=0,
        certificate_dir=store.paths("warehouse-server").directory,
        ca_bundle=ca,
        rows_per_partition=1000,
        seed=7,
        bad_row_rate=0.005,
        page_size=250,
    )
    client = store.paths("etl-client")
    return {
        "platform": platform,
        "settings": settings,
        "client": (str(client.fullchain), str(client.privkey)),
        "ca": str(ca),
    }


def _fingerprint(pem_path: str) -> str:
    """SHA-256 of the certificate's DER, computed apart from the server's own code."""
    with open(pem_path, "rb") as pem:
        leaf = x509.load_pem_x509_certificate(pem.read())
    return hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()


def _ids(values) -> list:
    return [None if pd.isna(v) else str(v) for v in values]


def test_the_api_pages_the_demo_customers_over_mutual_tls_and_sees_our_certificate(demo):
    with demo_api.serving(demo["settings"]) as server:
        source = ApiSource(url=f"{server.origin}/customers", params=tuple(HOUR.items()))
        pages = list(fetch_pages(source, client_context(*demo["client"], demo["ca"])))
    assert [len(p) for p in pages] == [250, 250, 250, 250]
    expected = generate_partition(PARTITION, 1000, seed=7, bad_row_rate=0.005)
    got = [i for p in pages for i in p["customer_id"]]
    assert _ids(got) == _ids(expected["customer_id"])  # ids as strings, a bad row's missing
    assert None in _ids(got)
    assert [e for p in pages for e in p["email"]] == list(expected["email"])
    # The server saw exactly our client certificate, by its SHA-256, on one connection
    # that carried the four pages.
    assert dict(server.seen.clients) == {_fingerprint(demo["client"][0]): 1}
    assert server.seen.requests == 4 and server.seen.refused == []
    assert server.seen.protocols <= {"TLSv1.2", "TLSv1.3"}


def test_a_client_without_a_certificate_is_refused(demo):
    context = ssl.create_default_context(cafile=demo["ca"])  # verifies the server, no cert
    with demo_api.serving(demo["settings"]) as server:
        source = ApiSource(url=f"{server.origin}/customers", params=tuple(HOUR.items()))
        with pytest.raises(ApiError):
            list(fetch_pages(source, context, sleep=lambda s: None))
    assert server.seen.requests == 0 and not server.seen.clients
    assert server.seen.refused
    assert all("peer did not return a certificate" in why for why in server.seen.refused)


def test_a_client_certificate_of_another_ca_is_refused(demo, tmp_path):
    other = InternalCA("other", tmp_path / "other")
    issued = other.issue(
        ["etl-client.secure-etl.internal"], "client", generate_private_key("ec256")
    )
    (tmp_path / "other.pem").write_bytes(issued.fullchain_pem)
    (tmp_path / "other.key").write_bytes(issued.key_pem)
    context = client_context(str(tmp_path / "other.pem"), str(tmp_path / "other.key"), demo["ca"])
    with demo_api.serving(demo["settings"]) as server:
        source = ApiSource(
            url=f"{server.origin}/customers", params=tuple(HOUR.items()), max_retries=0
        )
        with pytest.raises(ApiError):
            list(fetch_pages(source, context))
    assert server.seen.requests == 0 and not server.seen.clients
    assert any("certificate verify failed" in why for why in server.seen.refused)


def test_the_api_serves_the_stores_current_version_and_the_renewed_one_after_it(demo):
    platform = demo["platform"]
    with demo_api.serving(demo["settings"]) as server:
        endpoint = (
            platform.certificates["warehouse-server"]
            .endpoints[0]
            .model_copy(update={"port": server.port})
        )
        before = served_chain(demo_api.HOST, server.port)
        assert stale_endpoints([endpoint], current_chain(platform, "warehouse-server")) == []

        renewed = ensure_certificate(platform, "warehouse-server", force=True)

        after = served_chain(demo_api.HOST, server.port)
        assert renewed.outcome == "renewed"
        assert stale_endpoints([endpoint], current_chain(platform, "warehouse-server")) == []
    sha = hashes.SHA256()
    assert before[0].fingerprint(sha) != after[0].fingerprint(sha)  # reloaded, no restart
    assert after[0].fingerprint(sha) == current_chain(platform, "warehouse-server")[0].fingerprint(
        sha
    )


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/customers", 400),  # no hour
        ("/customers?start=2026-03-01T10:00:00%2B00:00&end=2026-03-01T12:00:00%2B00:00", 400),
        ("/customers?start=2026-03-01T10:00:00&end=2026-03-01T11:00:00", 400),  # no zone
        (
            "/customers?start=2026-03-01T10:00:00%2B00:00&end=2026-03-01T11:00:00%2B00:00&page=-1",
            400,
        ),
        ("/other", 404),
    ],
)
def test_a_request_the_api_cannot_answer_gets_a_clear_status(demo, path, status):
    context = client_context(*demo["client"], demo["ca"])
    with demo_api.serving(demo["settings"]) as server, httpx.Client(verify=context) as client:
        answer = client.get(f"{server.origin}{path}")
    assert answer.status_code == status
    assert answer.json()["error"]


def test_a_taken_port_falls_back_to_a_free_one_or_is_left_to_its_holder(demo):
    with socket.create_server((demo_api.HOST, 0)) as holder:
        taken = holder.getsockname()[1]
        settings = dataclasses.replace(demo["settings"], port=taken)
        said = []
        with demo_api.serving(settings, fallback=True, log=said.append) as server:
            assert server is not None and server.port != taken
        assert said == [
            f"demo API: 127.0.0.1:{taken} is taken; serving on 127.0.0.1:{server.port} instead"
        ]
        with demo_api.serving(settings, log=said.append) as none:
            assert none is None
        assert said[-1] == f"demo API: 127.0.0.1:{taken} is taken; using whatever serves there"


def test_users_in_one_process_share_one_server_until_the_last_leaves(demo):
    with demo_api.serving(demo["settings"]) as outer:
        settings = dataclasses.replace(demo["settings"], port=outer.port)
        with demo_api.serving(settings) as inner:
            assert inner is outer
        served_chain(demo_api.HOST, outer.port)  # still serving after the inner user left
    with pytest.raises(OSError):
        socket.create_connection((demo_api.HOST, outer.port), timeout=2).close()


def test_without_the_demo_command_the_steps_that_need_the_api_start_it(tmp_path, monkeypatch):
    """What `dagster dev` does with the bundled demo: no `secure-etl demo` around it, so
    the demo_api resource runs the API for the extraction and for the certificate checks."""
    from dagster import instance_for_test

    from secure_etl.defs.build import build_definitions
    from secure_etl.defs.certificates import CHECKS_JOB, RENEWAL_JOB

    monkeypatch.delenv("SECURE_ETL_STATE_DIR", raising=False)
    port = free_port()
    platform = bundled_demo(tmp_path, port)
    defs = build_definitions(platform)
    with instance_for_test() as instance:
        renewal = defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
        checks = defs.resolve_job_def(CHECKS_JOB).execute_in_process(instance=instance)
        etl = defs.resolve_job_def("customers_etl").execute_in_process(
            partition_key="2026-11-02-10:00", instance=instance
        )
    for result in (renewal, checks):
        served = {
            e.asset_check_key.asset_key.path[-1]: (e.passed, e.description)
            for e in result.get_asset_check_evaluations()
            if e.check_name == "served_by_endpoint"
        }
        assert served == {"warehouse-server": (True, f"served by 127.0.0.1:{port}")}
    rows = {
        e.asset_key.path[0]: e.materialization.metadata["rows"].value
        for e in etl.get_asset_materialization_events()
    }
    assert rows["raw"] == 1000 and 0 < rows["loaded"] < 1000
    assert all(e.passed for e in etl.get_asset_check_evaluations()), [
        (e.check_name, e.description) for e in etl.get_asset_check_evaluations() if not e.passed
    ]
    with pytest.raises(OSError):  # each step's server stopped with its step
        socket.create_connection((demo_api.HOST, port), timeout=2).close()


def test_e_mails_the_demo_loads_undeclared_and_untransformed_fail_the_pii_pattern_check(
    tmp_path, monkeypatch
):
    """The demo pipeline with its e-mails neither declared nor pseudonymised: the config
    loads (nothing declared is loaded raw), and the check on the load names the column."""
    from dagster import instance_for_test

    from secure_etl.defs.build import build_definitions
    from secure_etl.defs.certificates import RENEWAL_JOB

    monkeypatch.delenv("SECURE_ETL_STATE_DIR", raising=False)
    port = free_port()
    platform = bundled_demo(tmp_path, port)
    path = tmp_path / "state" / "platform.yaml"
    data = yaml.safe_load(path.read_text())
    pipeline = data["pipelines"]["customers"]
    pipeline["pii"] = ["full_name", "phone"]
    pipeline["transforms"][1]["columns"] = ["full_name"]  # email no longer pseudonymised
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    platform = load_config(path)
    defs = build_definitions(platform)
    with instance_for_test() as instance:
        defs.resolve_job_def(RENEWAL_JOB).execute_in_process(instance=instance)
        etl = defs.resolve_job_def("customers_etl").execute_in_process(
            partition_key="2026-11-02-10:00", instance=instance, raise_on_error=False
        )
    checks = {e.check_name: e for e in etl.get_asset_check_evaluations()}
    found = checks["no_undeclared_pii"]
    loaded = etl.get_asset_materialization_events()[-1].materialization.metadata["rows"].value
    assert not found.passed
    assert f"email ({loaded})" in found.description  # every loaded row: sample > partition
    assert "@" not in found.description
