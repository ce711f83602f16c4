"""The ACME challenge dataclasses inside a platform config: validated, anchored and
reported like the config's own models."""

from __future__ import annotations

import copy

import pytest

from secure_etl.challenge_config import Dns01Route53Challenge, Http01WebrootChallenge
from secure_etl.config import ConfigError, load_config
from secure_etl_tests.conftest import BASE_CONFIG


def _with_challenge(challenge: dict) -> dict:
    data = copy.deepcopy(BASE_CONFIG)
    data["issuers"]["pebble"] = {
        "type": "acme",
        "directory_url": "https://ca.example/dir",
        "challenge": challenge,
    }
    return data


def test_a_relative_webroot_is_anchored_at_the_config_files_directory(write_config, tmp_path):
    config = load_config(write_config(_with_challenge({"type": "http-01-webroot", "path": "www"})))
    challenge = config.issuers["pebble"].challenge
    assert challenge == Http01WebrootChallenge(type="http-01-webroot", path=str(tmp_path / "www"))


@pytest.mark.parametrize(
    ("challenge", "key", "message"),
    [
        ({"type": "http-01", "prot": 81}, "challenge.prot", "unknown key"),
        ({"type": "http-01", "port": 0}, "challenge.port", "greater than or equal to 1"),
        ({"type": "http-01-webroot"}, "challenge.path", "required key is missing"),
        ({"type": "dns-01-exec", "argv": []}, "challenge.argv", "at least 1 item"),
        ({"type": "nope"}, "challenge.type", "unknown type 'nope'"),
        (
            {"type": "dns-01-route53", "endpoint_url": "ftp://x"},
            "challenge",
            "not an http:// or https:// URL",
        ),
    ],
)
def test_a_bad_challenge_is_one_line_naming_its_key(write_config, challenge, key, message):
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(_with_challenge(challenge)))
    assert raised.value.key == f"issuers.pebble.{key}"
    assert message in raised.value.message


def test_the_dataclasses_stay_frozen_and_check_the_route53_endpoint_themselves():
    challenge = Dns01Route53Challenge(type="dns-01-route53", endpoint_url="http://127.0.0.1:1")
    with pytest.raises(AttributeError):
        challenge.region = "eu-west-1"  # type: ignore[misc]
    with pytest.raises(ValueError, match="not an http"):
        Dns01Route53Challenge(type="dns-01-route53", endpoint_url="ftp://x")
