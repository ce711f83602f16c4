"""dns-01 through Route 53, against moto's standalone Route 53 emulator (no real AWS
runs here): every test name says ``emulated``."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from secure_etl.acme.challenges import Dns01, SolverError, dns01_txt_value
from secure_etl.acme.route53 import Route53Provider, txt_quote, txt_unquote
from secure_etl_tests.servers import start_python_server


def _start_moto(tmp_path, env: dict) -> tuple[subprocess.Popen, str]:
    log = tmp_path / f"moto-{uuid.uuid4().hex[:8]}.log"
    return start_python_server(["moto.server", "-H", "127.0.0.1", "-p"], "/moto-api/", log, env=env)


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory):
    proc, url = _start_moto(tmp_path_factory.mktemp("moto"), {})
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def aws_env(monkeypatch, moto_url):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEMULATED")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "emulated-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_ROUTE53", moto_url)


@pytest.fixture
def zone(aws_env) -> tuple[str, str]:
    """A fresh public hosted zone: (its name, its id)."""
    name = f"z{uuid.uuid4().hex[:8]}.example"
    created = (
        Route53Provider().client().create_hosted_zone(Name=name, CallerReference=uuid.uuid4().hex)
    )
    return name, created["HostedZone"]["Id"].removeprefix("/hostedzone/")


def test_txt_values_are_quoted_and_unquoted_per_route53_rules():
    assert txt_quote("abc") == '"abc"'
    assert txt_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert txt_unquote(txt_quote('a"b\\c')) == 'a"b\\c'
    assert txt_unquote('"part one" "part two"') == "part onepart two"


@pytest.mark.integration
def test_emulated_set_writes_a_quoted_record_and_waits_until_insync(zone, monkeypatch):
    name, zone_id = zone
    provider = Route53Provider(zone_id, poll_interval_s=0.01)
    waited = []
    original = provider.wait_insync
    monkeypatch.setattr(
        provider, "wait_insync", lambda change, n="": waited.append(change) or original(change, n)
    )
    fqdn = f"_acme-challenge.{name}."
    provider.set_txt(fqdn, "value-one")

    listed = provider.client().list_resource_record_sets(HostedZoneId=zone_id)
    txt = [r for r in listed["ResourceRecordSets"] if r["Type"] == "TXT"]
    assert txt == [
        {"Name": fqdn, "Type": "TXT", "TTL": 60, "ResourceRecords": [{"Value": '"value-one"'}]}
    ]
    assert len(waited) == 1
    status = provider.client().get_change(Id=waited[0])["ChangeInfo"]["Status"]
    assert status == "INSYNC"


@pytest.mark.integration
def test_emulated_wildcard_and_apex_values_coexist_and_clear_removes_only_its_own(zone):
    name, _ = zone
    provider = Route53Provider(poll_interval_s=0.01)  # the zone is found from the name
    solver = Dns01(provider)
    solver.present(f"*.{name}", "tok-wild", "tok-wild.thumb")
    solver.present(name, "tok-apex", "tok-apex.thumb")
    fqdn = f"_acme-challenge.{name}."
    wild, apex = dns01_txt_value("tok-wild.thumb"), dns01_txt_value("tok-apex.thumb")
    assert sorted(provider.values(fqdn)[0]) == sorted([wild, apex])

    solver.cleanup(f"*.{name}", "tok-wild")
    assert provider.values(fqdn)[0] == [apex]
    solver.cleanup(name, "tok-apex")
    assert provider.values(fqdn) == ([], None)


@pytest.mark.integration
def test_emulated_the_zone_is_found_from_the_record_name_and_the_closest_zone_wins(aws_env):
    parent = f"p{uuid.uuid4().hex[:8]}.example"
    client = Route53Provider().client()
    client.create_hosted_zone(Name=parent, CallerReference=uuid.uuid4().hex)
    child = client.create_hosted_zone(Name=f"sub.{parent}", CallerReference=uuid.uuid4().hex)
    provider = Route53Provider()
    assert provider.zone_for(f"_acme-challenge.www.sub.{parent}.") == child["HostedZone"][
        "Id"
    ].removeprefix("/hostedzone/")


@pytest.mark.integration
def test_emulated_a_name_in_no_hosted_zone_is_named(aws_env):
    with pytest.raises(SolverError, match=r"no public hosted zone contains _acme-challenge\.a\."):
        Route53Provider().set_txt("_acme-challenge.a.nowhere-at-all.invalid.", "v")


@pytest.mark.integration
def test_emulated_an_unknown_zone_id_gives_one_clear_error(aws_env):
    with pytest.raises(SolverError) as caught:
        Route53Provider("ZDOESNOTEXIST").set_txt("_acme-challenge.x.example.", "v")
    message = str(caught.value)
    assert "NoSuchHostedZone" in message and "hosted_zone_id" in message
    assert "\n" not in message


@pytest.mark.integration
def test_emulated_bad_credentials_give_one_clear_error(tmp_path, monkeypatch):
    # This emulator checks signatures against its own IAM users: these keys are unknown.
    proc, url = _start_moto(tmp_path, {"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAREALKEY")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        provider = Route53Provider("ZANY", endpoint_url=url)
        with pytest.raises(SolverError) as caught:
            provider.set_txt("_acme-challenge.x.example.", "v")
    finally:
        proc.terminate()
        proc.wait(10)
    message = str(caught.value)
    assert "InvalidClientTokenId" in message and "AWS_ACCESS_KEY_ID" in message
    assert "\n" not in message


def test_missing_credentials_are_named_before_any_request(monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(SolverError, match="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        Route53Provider("Z1").set_txt("_acme-challenge.x.example.", "v")


def test_the_cli_refuses_route53_without_credentials_before_contacting_the_ca(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "secure_etl.cli",
            "acme",
            "issue",
            "-d",
            "a.example",
            "--directory",
            "https://127.0.0.1:9/dir",
            "--dns-01",
            "route53",
            "--account-key",
            str(tmp_path / "account.key"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "secure-etl: dns-01 route53: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(and AWS_SESSION_TOKEN for temporary credentials) in the environment"
    )
    assert not (tmp_path / "account.key").exists()


@pytest.mark.integration
def test_emulated_the_config_builds_a_route53_solver_that_presents_and_cleans_up(zone, moto_url):
    from secure_etl.acme.challenges import Dns01
    from secure_etl.challenge_config import Dns01Route53Challenge
    from secure_etl.pki.solvers import build_solver

    name, zone_id = zone
    challenge = Dns01Route53Challenge(
        type="dns-01-route53", hosted_zone_id=zone_id, endpoint_url=moto_url, ttl=30
    )
    solver = build_solver(challenge)
    assert isinstance(solver, Dns01) and solver.wait is None  # INSYNC is the wait
    solver.present(name, "tok", "tok.thumb")
    assert solver.provider.values(f"_acme-challenge.{name}.") == (
        [dns01_txt_value("tok.thumb")],
        30,
    )
    solver.cleanup(name, "tok")
    assert solver.provider.values(f"_acme-challenge.{name}.") == ([], None)


class _StrictRoute53Mock:
    """Route 53's change-batch rules, which moto does not enforce: CREATE of an existing
    set and DELETE of a set that does not match exactly are refused (InvalidChangeBatch).
    ``intruder`` runs once, after our first read, as another writer would."""

    def __init__(self, intruder) -> None:
        self.sets: dict[str, tuple[int, list[str]]] = {}
        self.intruder, self.reads = intruder, 0

    def list_resource_record_sets(self, HostedZoneId, StartRecordName, **_):  # noqa: N803
        self.reads += 1
        found = self.sets.get(StartRecordName)
        if self.reads == 1:
            self.intruder(self.sets)
        if found is None:
            return {"ResourceRecordSets": []}
        ttl, values = found
        records = [{"Value": v} for v in values]
        return {
            "ResourceRecordSets": [
                {"Name": StartRecordName, "Type": "TXT", "TTL": ttl, "ResourceRecords": records}
            ]
        }

    def change_resource_record_sets(self, HostedZoneId, ChangeBatch):  # noqa: N803
        from botocore.exceptions import ClientError

        sets = dict(self.sets)
        for change in ChangeBatch["Changes"]:
            rrset = change["ResourceRecordSet"]
            mine = (rrset["TTL"], [r["Value"] for r in rrset["ResourceRecords"]])
            exists = sets.get(rrset["Name"])
            if (change["Action"] == "CREATE" and exists) or (
                change["Action"] == "DELETE" and exists != mine
            ):
                error = {"Code": "InvalidChangeBatch", "Message": "precondition failed"}
                raise ClientError({"Error": error}, "ChangeResourceRecordSets")
            if change["Action"] == "DELETE":
                del sets[rrset["Name"]]
            else:
                sets[rrset["Name"]] = mine
        self.sets = sets
        return {"ChangeInfo": {"Id": "/change/C1", "Status": "PENDING"}}

    def get_change(self, Id):  # noqa: N803
        return {"ChangeInfo": {"Id": Id, "Status": "INSYNC"}}


@pytest.mark.parametrize("before", [[], ['"first"']])
def test_mock_a_value_written_by_someone_else_between_read_and_write_is_kept(before):
    fqdn = "_acme-challenge.race.example."

    def intruder(sets):
        sets[fqdn] = (60, [*before, '"theirs"'])

    mock = _StrictRoute53Mock(intruder)
    if before:
        mock.sets[fqdn] = (60, list(before))
    provider = Route53Provider("ZRACE", poll_interval_s=0)
    provider._client = mock

    provider.set_txt(fqdn, "ours")

    assert sorted(mock.sets[fqdn][1]) == sorted([*before, '"theirs"', '"ours"'])
    assert mock.reads >= 2  # it read again after the stale change was refused


def test_mock_a_refused_change_that_is_not_a_race_is_reported_not_retried():
    mock = _StrictRoute53Mock(lambda sets: None)
    fqdn = "_acme-challenge.x.example."
    mock.sets[fqdn] = (60, ['"a"'])
    mock.list_resource_record_sets = lambda **kw: {"ResourceRecordSets": []}  # lies: empty
    provider = Route53Provider("ZX", poll_interval_s=0)
    provider._client = mock
    with pytest.raises(SolverError, match="InvalidChangeBatch: precondition failed"):
        provider.set_txt(fqdn, "b")
