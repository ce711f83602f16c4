"""dns-01 through Amazon Route 53: TXT records changed with boto3 (the ``route53`` extra).

boto3 is imported when the provider is first used, so the platform runs without it.
Credentials come from the environment only (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, optional ``AWS_SESSION_TOKEN``); no profile or metadata
lookup. A Route 53 record set holds every value of one name, so values are merged:
each change deletes the exact set it read and creates the new one in one batch, which
Route 53 refuses if someone changed the set in between (then we read again).
"""

from __future__ import annotations

import os
import threading
import time

from secure_etl.acme.challenges import SolverError

ENDPOINT_ENV = "AWS_ENDPOINT_URL_ROUTE53"
_CONFLICT_RETRIES = 5
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def txt_quote(value: str) -> str:
    """A TXT value as Route 53 wants it: in double quotes, with ``"`` and ``\\`` escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def txt_unquote(quoted: str) -> str:
    """The value of one Route 53 TXT record (its strings joined, escapes undone)."""
    out, escaped, inside = [], False, False
    for char in quoted:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            inside = not inside
        elif inside:
            out.append(char)
    return "".join(out)


def missing_environment() -> str | None:
    """Why Route 53 cannot be used here (boto3 or credentials missing), or None."""
    try:
        import boto3  # noqa: F401
    except ImportError:
        return "dns-01 route53 needs boto3: pip install 'secure_etl[route53]'"
    if not (os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")):
        return (
            "dns-01 route53: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(and AWS_SESSION_TOKEN for temporary credentials) in the environment"
        )
    return None


def _lock_for(fqdn: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(fqdn, threading.Lock())


class Route53Provider:
    """Adds and removes one TXT value at a time in a Route 53 hosted zone (``zone_id``
    given, or found from the record's name), waiting until the change is INSYNC."""

    def __init__(
        self,
        zone_id: str | None = None,
        *,
        region: str = "us-east-1",
        ttl: int = 60,
        endpoint_url: str | None = None,
        timeout_s: float = 300.0,
        poll_interval_s: float = 5.0,
    ) -> None:
        self.zone_id = zone_id.removeprefix("/hostedzone/") if zone_id else None
        self.region, self.ttl = region, ttl
        self.endpoint_url = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
        self.timeout_s, self.poll_interval_s = timeout_s, poll_interval_s
        self._client = None
        self._zones: dict[str, str] = {}

    # -- boto3, credentials and errors ---------------------------------------------

    def client(self):
        """The boto3 Route 53 client, built on first use from the environment."""
        if self._client is not None:
            return self._client
        problem = missing_environment()
        if problem:
            raise SolverError(problem)
        import boto3
        from botocore.config import Config

        key_id, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
        session = boto3.session.Session(
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            aws_session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
            region_name=self.region,
        )
        config = Config(
            connect_timeout=10, read_timeout=30, retries={"max_attempts": 4, "mode": "standard"}
        )
        self._client = session.client("route53", endpoint_url=self.endpoint_url, config=config)
        return self._client

    def _call(self, what: str, operation: str, **params) -> dict:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client(), operation)(**params)
        except ClientError as err:
            code, message = _error_of(err.response)
            hint = {
                "InvalidClientTokenId": "check AWS_ACCESS_KEY_ID",
                "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY",
                "AccessDenied": "the credentials lack route53 permissions",
                "NoSuchHostedZone": "check hosted_zone_id (or leave it out to look it up)",
            }.get(code)
            raise _Route53Error(
                code, f"dns-01 route53 {what}: {code}: {message}" + (f" ({hint})" if hint else "")
            ) from None
        except BotoCoreError as err:
            raise SolverError(f"dns-01 route53 {what}: {err}") from None

    # -- zones and record sets ------------------------------------------------------

    def zone_for(self, fqdn: str) -> str:
        """The configured zone id, else the public hosted zone closest to ``fqdn``."""
        if self.zone_id:
            return self.zone_id
        labels = fqdn.rstrip(".").lower().split(".")
        for start in range(len(labels) - 1):
            name = ".".join(labels[start:]) + "."
            if name in self._zones:
                return self._zones[name]
            listed = self._call(
                f"finding the zone of {fqdn}", "list_hosted_zones_by_name", DNSName=name
            )
            for zone in listed.get("HostedZones", []):
                private = zone.get("Config", {}).get("PrivateZone", False)
                if zone["Name"].lower() == name and not private:
                    self._zones[name] = zone["Id"].removeprefix("/hostedzone/")
                    return self._zones[name]
        raise SolverError(
            f"dns-01 route53: no public hosted zone contains {fqdn} "
            "(create it, or set hosted_zone_id)"
        )

    def values(self, fqdn: str) -> tuple[list[str], int | None]:
        """The TXT values at ``fqdn`` (unquoted) and the record set's TTL (None: no set)."""
        name = fqdn if fqdn.endswith(".") else fqdn + "."
        listed = self._call(
            f"reading TXT {name}",
            "list_resource_record_sets",
            HostedZoneId=self.zone_for(name),
            StartRecordName=name,
            StartRecordType="TXT",
            MaxItems="1",
        )
        for rrset in listed.get("ResourceRecordSets", []):
            if rrset["Name"].lower() == name.lower() and rrset["Type"] == "TXT":
                records = [txt_unquote(r["Value"]) for r in rrset.get("ResourceRecords", [])]
                return records, rrset.get("TTL")
        return [], None

    def _replace(self, fqdn: str, change) -> None:
        """Read the set, apply ``change`` to its values, swap it in; retry on a race."""
        name = fqdn if fqdn.endswith(".") else fqdn + "."
        zone = self.zone_for(name)
        with _lock_for(name):
            for _ in range(_CONFLICT_RETRIES):
                current, ttl = self.values(name)
                wanted = change(list(current))
                if wanted == current:
                    return
                batch = []
                if current:
                    batch.append(("DELETE", self._rrset(name, current, ttl)))
                if wanted:
                    batch.append(("CREATE", self._rrset(name, wanted, self.ttl)))
                try:
                    answer = self._call(
                        f"changing TXT {name} in zone {zone}",
                        "change_resource_record_sets",
                        HostedZoneId=zone,
                        ChangeBatch={
                            "Comment": "secure_etl dns-01",
                            "Changes": [
                                {"Action": action, "ResourceRecordSet": rrset}
                                for action, rrset in batch
                            ],
                        },
                    )
                except _Route53Error as err:
                    # A DELETE that no longer matches: retry if the set changed under us.
                    if err.code in ("InvalidChangeBatch", "InvalidInput"):
                        if self.values(name) != (current, ttl):
                            continue
                    raise
                self.wait_insync(answer["ChangeInfo"]["Id"], name)
                return
        raise SolverError(f"dns-01 route53: TXT {name} kept changing while we updated it")

    @staticmethod
    def _rrset(name: str, values: list[str], ttl: int | None) -> dict:
        return {
            "Name": name,
            "Type": "TXT",
            "TTL": ttl if ttl is not None else 60,
            "ResourceRecords": [{"Value": txt_quote(v)} for v in values],
        }

    def wait_insync(self, change_id: str, name: str = "") -> float:
        """Block until Route 53 reports the change INSYNC; returns the seconds it took."""
        started = time.monotonic()
        while True:
            info = self._call(f"waiting for change {change_id}", "get_change", Id=change_id)
            if info["ChangeInfo"]["Status"] == "INSYNC":
                return time.monotonic() - started
            if time.monotonic() - started > self.timeout_s:
                raise SolverError(
                    f"dns-01 route53: change {change_id} to TXT {name} not INSYNC within "
                    f"{self.timeout_s:.0f} s"
                )
            time.sleep(self.poll_interval_s)

    # -- DnsProvider ----------------------------------------------------------------

    def set_txt(self, fqdn: str, value: str) -> None:
        self._replace(fqdn, lambda values: values if value in values else [*values, value])

    def clear_txt(self, fqdn: str, value: str) -> None:
        self._replace(fqdn, lambda values: [v for v in values if v != value])


def _error_of(response: dict) -> tuple[str, str]:
    """Code and message of an AWS error (the REST-XML form, or the Query form)."""
    error = response.get("Error") or {}
    if not error.get("Code"):
        error = (response.get("Errors") or {}).get("Error") or error
    return error.get("Code") or "?", error.get("Message") or ""


class _Route53Error(SolverError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
