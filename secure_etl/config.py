"""The platform config: one YAML file, typed and validated.

The file is chosen by ``SECURE_ETL_CONFIG``; without it the bundled offline demo is used.
Every error names the file, the key path and what was expected. Unknown keys are errors.
The ACME challenge models are dataclasses in ``challenge_config.py`` (no pydantic there, so
``secure-etl acme issue`` loads them alone); they are validated here like the models.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import functools
import os
import reprlib
import typing
from importlib import resources
from pathlib import Path
from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from secure_etl import filter_grammar, policy
from secure_etl.challenge_config import Challenge, LocalPath
from secure_etl.challenge_config import FromConfigDir as _FromConfigDir
from secure_etl.cron import check_cron
from secure_etl.demo.schema import KINDS as DEMO_KINDS
from secure_etl.demo.schema import PII_COLUMNS as DEMO_PII
from secure_etl.errors import UserError, escape_controls
from secure_etl.identifiers import is_dns_name, is_ip_address, proxy_url_problem, sql_name_pattern

CONFIG_ENV = "SECURE_ETL_CONFIG"
STATE_DIR_ENV = "SECURE_ETL_STATE_DIR"

KeyType = Literal["ec256", "ec384", "rsa2048", "rsa3072", "rsa4096"]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
KeyId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
SqlName = Annotated[str, Field(pattern=sql_name_pattern())]  # a schema, table or column
# The same rule at the database's own limit, for names that stay in that database.
MariaDBName = Annotated[str, Field(pattern=sql_name_pattern(64))]
BigQueryName = Annotated[str, Field(pattern=sql_name_pattern(1024))]

# A schedule: five cron fields or a macro, checked at load (not when Dagster builds it).
Cron = Annotated[str, AfterValidator(check_cron)]
MIN_PSEUDONYM_HEX = 32  # the truncation floor: 128 bits
# What a column holds (filter_grammar.KINDS), where a source's config can say.
ColumnKind = Literal["integer", "number", "string", "boolean", "timestamp", "date"]


def _names_to_mapping(value: object) -> object:
    """A list of column names is a mapping of the names to unknown kinds."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return dict.fromkeys(value)
    if isinstance(value, dict) or value is None:
        return value
    raise ValueError(
        f"expected a list of column names, or a mapping of names to their kinds "
        f"({', '.join(typing.get_args(ColumnKind))}), not {echo(value)}"
    )


# A source's columns named by the config: a list of names, or names with their kinds
# (a list is read as names of unknown kinds).
ColumnList = Annotated[dict[SqlName, ColumnKind | None], BeforeValidator(_names_to_mapping)]
# The lowest TLS version a connection accepts (None: the security policy's for its kind).
TlsVersion = Literal["1.2", "1.3"]
PolicyPoint = Literal[tuple(policy.POINTS)]  # type: ignore[valid-type]


def _exemption_list(value: object) -> object:
    """``[{point, reason}, ...]`` is the same as ``{point: reason, ...}``."""
    if not isinstance(value, list):
        return value
    out: dict = {}
    for item in value:
        if not isinstance(item, dict) or set(item) != {"point", "reason"}:
            raise ValueError(
                f"each exemption is {{point: <policy point>, reason: <why>}}, not {echo(item)}"
            )
        out[item["point"]] = item["reason"]
    return out


def _a_reason(value: object) -> object:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(
            "an exemption needs its reason: say why the point does not apply here "
            "(it is recorded and reported)"
        )
    return value


# Points of the security policy set aside here, each with the reason (recorded, reported).
Exemptions = Annotated[
    dict[PolicyPoint, Annotated[str, BeforeValidator(_a_reason)]],
    BeforeValidator(_exemption_list),
]


class ConfigError(UserError):
    """A platform config that cannot be used; the message names file and key."""

    def __init__(self, path: Path | str, key: str, message: str) -> None:
        self.path = str(path)
        self.key, self.message = escape_controls(key), escape_controls(message)
        where = f"{escape_controls(self.path)}: {self.key}" if key else escape_controls(self.path)
        super().__init__(f"{where}: {self.message}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True)


class InternalCAIssuer(_Strict):
    """A private CA the platform runs itself; its root is created on first use."""

    type: Literal["internal_ca"]
    common_name: str = "secure_etl internal root CA"
    key_type: KeyType = "ec256"
    ca_lifetime_days: int = Field(3650, ge=1)
    lifetime_days: int = Field(90, ge=1, le=3650)
    exemption: Exemptions = {}
    # Leaves of minutes (e.g. 6, or 1.5 for 90 seconds); when set, lifetime_days is unused.
    lifetime_minutes: float | None = Field(None, ge=1, le=1440)

    @model_validator(mode="after")
    def _one_lifetime(self) -> InternalCAIssuer:
        if self.lifetime_minutes is not None and "lifetime_days" in self.model_fields_set:
            raise ValueError("give lifetime_days or lifetime_minutes, not both")
        return self

    @property
    def lifetime(self) -> dt.timedelta:
        """How long a leaf lives."""
        if self.lifetime_minutes is not None:
            return dt.timedelta(minutes=self.lifetime_minutes)
        return dt.timedelta(days=self.lifetime_days)


# The name of an environment variable (the config names secrets, never holds them).
EnvVarName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class ProxyConfig(_Strict):
    """A forward proxy for outbound HTTPS, through HTTP CONNECT: TLS (and mutual TLS) stays
    end to end, the proxy sees the host and port only. ``url``: ``http://host:port`` (or
    ``https://`` with ``ca_bundle`` verifying the proxy); Basic auth from the environment."""

    url: str
    ca_bundle: LocalPath | None = None
    username_env: EnvVarName | None = None
    password_env: EnvVarName | None = None

    @field_validator("url")
    @classmethod
    def _proxy_address(cls, url: str) -> str:
        problem = proxy_url_problem(url)
        if problem:
            raise ValueError(problem)
        return url

    @model_validator(mode="after")
    def _consistent(self) -> ProxyConfig:
        if bool(self.username_env) != bool(self.password_env):
            raise ValueError("give username_env and password_env together")
        if self.ca_bundle and not self.url.lower().startswith("https://"):
            raise ValueError("ca_bundle verifies an https:// proxy; this one is http://")
        return self


class AcmeIssuer(_Strict):
    """Any RFC 8555 CA: Let's Encrypt, ZeroSSL, step-ca, Pebble..."""

    type: Literal["acme"]
    directory_url: str
    # Verifies the ACME server's own TLS certificate (default: the system trust store).
    server_ca_bundle: LocalPath | None = None
    # Roots the issued certificates must chain to (default: the system trust store).
    trust_bundle: LocalPath | None = None
    email: str | None = None
    # Names of the environment variables holding the EAB key id and HMAC key.
    eab_kid_env: str | None = None
    eab_hmac_env: str | None = None
    account_key_type: Literal["ec256", "ec384", "rsa2048", "rsa3072", "rsa4096"] = "ec256"
    challenge: Annotated[Challenge, Field(discriminator="type")]
    profile: str | None = None
    preferred_chain: str | None = None
    timeout_s: float = Field(300, gt=0)
    proxy: ProxyConfig | None = None  # every request to the CA goes through it
    min_tls: TlsVersion | None = None
    exemption: Exemptions = {}

    @field_validator("directory_url")
    @classmethod
    def _https_only(cls, url: str) -> str:
        # Plain http would carry the account, the CSR and the certificate in the clear.
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"{url!r} is not an https:// URL; ACME directories must use https")
        return url


Issuer = Annotated[InternalCAIssuer | AcmeIssuer, Field(discriminator="type")]


class RenewalPolicy(_Strict):
    """Renew when this share of the lifetime is left, or fewer than min_days_left days.
    A renewal the issuer could not serve just then (unreachable, a server error, the
    internal CA's key unreadable) is tried again in the same run up to ``retries`` times,
    waiting 1, 2, 3, 4 … times ``retry_delay_s`` (Dagster's linear backoff: no gap grows
    so long that a certificate of minutes expires inside it)."""

    fraction_left: float = Field(1 / 3, gt=0, lt=1)
    min_days_left: float | None = Field(None, ge=0)
    retries: int = Field(5, ge=0, le=20)
    retry_delay_s: float = Field(10, gt=0, le=3600)


class CommandDeploy(_Strict):
    """Run a program after a new certificate becomes current (an argv list, no shell)."""

    type: Literal["command"]
    argv: list[str] = Field(min_length=1)
    timeout_s: float = Field(60, gt=0)


class WebhookDeploy(_Strict):
    """POST a JSON notice to a URL read from an environment variable."""

    type: Literal["webhook"]
    url_env: str
    timeout_s: float = Field(10, gt=0)


class PostgresReloadDeploy(_Strict):
    """``SELECT pg_reload_conf()`` on a PostgreSQL we manage, over verify-full with a
    client certificate of ours; then waits until the server presents the new certificate."""

    type: Literal["postgres_reload"]
    host: str
    port: int = Field(5432, ge=1, le=65535)
    dbname: str = "postgres"
    user: str
    client_certificate: Name
    timeout_s: float = Field(10, gt=0)


DeployAction = Annotated[
    CommandDeploy | WebhookDeploy | PostgresReloadDeploy, Field(discriminator="type")
]


class Endpoint(_Strict):
    """A place that serves the certificate; a later check handshakes with it."""

    host: str
    port: int = Field(ge=1, le=65535)
    protocol: Literal["tls", "postgres"] = "tls"


class CertificateConfig(_Strict):
    issuer: Name
    use: Literal["server", "client"]
    identifiers: list[str] = Field(min_length=1)
    key_type: KeyType = "ec256"
    # A new private key at every renewal unless this is set (e.g. for key pinning).
    reuse_key: bool = False
    renewal: RenewalPolicy = RenewalPolicy()
    keep_versions: int = Field(5, ge=1)
    ca_bundle: LocalPath | None = None
    deploy: list[DeployAction] = []
    endpoints: list[Endpoint] = []
    exemption: Exemptions = {}

    @field_validator("identifiers")
    @classmethod
    def _identifiers_are_names_or_addresses(cls, values: list[str]) -> list[str]:
        for value in values:
            if not is_ip_address(value) and not is_dns_name(value):
                raise ValueError(f"{echo(value)} is neither a DNS name nor an IP address")
        return values


class _SourceConfig(_Strict):
    """What every source's config answers at load time, before any row is read."""

    def column_kinds(self) -> dict[str, ColumnKind | None] | None:
        """The columns its rows will have, each with its kind where the config knows it
        (None for the kind: not known; None for the whole: the columns are known only
        when the first batch arrives). Key, cursor and filter columns are checked
        against it when the config loads, and filter values against the kinds."""
        return None

    def known_columns(self) -> set[str] | None:
        """The columns its rows will have (None: known only when the first batch arrives)."""
        kinds = self.column_kinds()
        return None if kinds is None else set(kinds)

    def selected_columns(self) -> list[str] | None:
        """The columns to read, in order (None: all of them)."""
        columns = getattr(self, "columns", None)
        return list(columns) if columns else None

    def hourly_problem(self) -> str | None:
        """Why it cannot be read by hourly partitions (None: it can)."""
        return None

    def incremental_cursor(self) -> IncrementalCursor | None:
        """How it is read past a high-water mark (None: it is read by the hour only)."""
        return None

    def pii_columns(self) -> tuple[str, ...]:
        """The columns its schema marks as PII (besides those the pipeline declares)."""
        return ()


class DemoSource(_SourceConfig):
    """Synthetic customers with PII, generated deterministically per partition."""

    type: Literal["demo"]
    rows_per_partition: int = Field(1000, ge=1, le=10_000_000)
    seed: int = 0
    bad_row_rate: float = Field(0.005, ge=0, le=1)

    def column_kinds(self) -> dict[str, ColumnKind | None]:
        return dict(DEMO_KINDS)

    def pii_columns(self) -> tuple[str, ...]:
        return DEMO_PII


class _PostgresConnection(_Strict):
    """A PostgreSQL reached over TLS with the pipeline's client certificate."""

    host: str
    port: int = Field(5432, ge=1, le=65535)
    dbname: str
    user: str
    db_schema: SqlName = Field("public", alias="schema")
    table: SqlName
    # Roots that verify the server (default: those of the pipeline's client certificate).
    ca_bundle: LocalPath | None = None
    sslmode: Literal["verify-full", "verify-ca", "require", "disable"] = "verify-full"
    # Anything weaker than verify-full must be asked for by name.
    allow_insecure_sslmode: bool = False
    min_tls: TlsVersion | None = None

    @model_validator(mode="after")
    def _sslmode_is_safe(self) -> _PostgresConnection:
        if self.sslmode != "verify-full" and not self.allow_insecure_sslmode:
            raise ValueError(
                f"sslmode {self.sslmode!r} does not verify the server's name; use verify-full, "
                "or set allow_insecure_sslmode: true if you really mean it"
            )
        return self


class IncrementalCursor(_Strict):
    """Each run extracts the rows whose ``cursor_column`` (a timestamp, e.g. updated_at)
    is at or past the previous run's high-water mark minus ``lag_s`` seconds: rows that
    committed late with an earlier cursor value are still picked up, and the destination
    merges by the key, so reading a row twice does not duplicate it."""

    cursor_column: SqlName
    lag_s: float = Field(300, ge=0)


class PostgresSource(_PostgresConnection, _SourceConfig):
    """Rows of one table: with hourly partitions, those whose ``time_column`` falls in
    the partition's hour; with ``incremental``, those past the last high-water mark."""

    type: Literal["postgres"]
    time_column: SqlName | None = None
    incremental: IncrementalCursor | None = None
    columns: ColumnList | None = None
    # Rows per chunk (and per Parquet row group): small chunks keep memory low and cost
    # no speed (measured: 10,000 vs 100,000 rows, same throughput, 273 vs 500 MiB).
    chunk_rows: int = Field(10_000, ge=1)

    def column_kinds(self) -> dict[str, ColumnKind | None] | None:
        return _declared(self.columns)

    def hourly_problem(self) -> str | None:
        return (
            None
            if self.time_column
            else "a postgres source with hourly partitions needs a time_column"
        )

    def incremental_cursor(self) -> IncrementalCursor | None:
        return self.incremental


class ApiKeyConfig(_Strict):
    """An API key sent with every request to the source's own origin (never to another,
    next links included): ``Authorization: Bearer <key>`` by default, or the key as the
    value of ``header``. The key is read from the environment variable ``env`` at run time."""

    env: EnvVarName
    header: str = Field("Authorization", pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")

    @field_validator("header")
    @classmethod
    def _not_a_transport_header(cls, header: str) -> str:
        if header.lower() in {"host", "content-length", "transfer-encoding", "connection"} or (
            header.lower().startswith("proxy-")
        ):
            raise ValueError(
                f"{header!r} cannot carry an API key: use Authorization (the default) or the "
                "header the API documents, such as X-Api-Key"
            )
        return header


class HttpsApiSource(_SourceConfig):
    """JSON pages from an HTTPS API over mutual TLS with the pipeline's client certificate.
    With ``start_param``/``end_param`` the partition's hour is sent as ISO-8601 bounds."""

    type: Literal["https_api"]
    url: str = Field(pattern=r"^https://")
    records_key: str = "data"
    next_key: str = "next"
    cursor_param: str | None = None
    params: dict[str, str] = {}
    start_param: str | None = None
    end_param: str | None = None
    ca_bundle: LocalPath | None = None
    timeout_s: float = Field(30, gt=0)
    max_retries: int = Field(5, ge=0)
    # Next links are followed only over https to the url's origin or one of these
    # (``https://host[:port]``): the client certificate is presented nowhere else.
    allowed_origins: list[Annotated[str, Field(pattern=r"^https://[^/?#@\s]+$")]] = []
    max_pages: int = Field(10_000, ge=1)
    max_response_bytes: int = Field(64 * 1024 * 1024, ge=1)
    deadline_s: float = Field(600, gt=0)  # the whole extraction of a partition
    api_key: ApiKeyConfig | None = None
    proxy: ProxyConfig | None = None
    min_tls: TlsVersion | None = None


class MariaDBSource(_SourceConfig):
    """Rows of one MariaDB/MySQL table whose ``time_column`` falls in the partition's hour,
    over TLS that verifies the server's certificate and name, authenticated by the
    pipeline's client certificate (an account ``REQUIRE X509`` / ``REQUIRE SUBJECT``)."""

    type: Literal["mariadb"]
    host: str
    port: int = Field(3306, ge=1, le=65535)
    database: MariaDBName
    user: str
    table: MariaDBName
    time_column: SqlName
    columns: ColumnList | None = None
    chunk_rows: int = Field(10_000, ge=1)
    # Roots that verify the server (default: those of the pipeline's client certificate).
    ca_bundle: str | None = None
    min_tls: TlsVersion | None = None

    def column_kinds(self) -> dict[str, ColumnKind | None] | None:
        return _declared(self.columns)


def _declared(columns: dict[str, ColumnKind | None] | None) -> dict | None:
    """The kinds of a ``columns`` key (None: every column of the table is read)."""
    return dict(columns) if columns else None


Source = Annotated[
    DemoSource | PostgresSource | HttpsApiSource | MariaDBSource, Field(discriminator="type")
]


class PseudonymiseTransform(_Strict):
    """Replace each value of the columns by its keyed HMAC-SHA256 (hex)."""

    type: Literal["pseudonymise"]
    columns: list[str] = Field(min_length=1)
    key: Name
    # Keep only the first ``truncate`` hex digits. The floor, 32 (128 bits), keeps the
    # odds that two values of a billion share a pseudonym below 1e-20.
    truncate: int | None = Field(None, ge=MIN_PSEUDONYM_HEX, le=64)


class EncryptTransform(_Strict):
    """Encrypt each value: AES-SIV when ``deterministic`` (equal values stay equal, so the
    column stays joinable), else AES-GCM with a random nonce. Self-describing values."""

    type: Literal["encrypt"]
    columns: list[str] = Field(min_length=1)
    key: Name
    deterministic: bool = False


class MaskTransform(_Strict):
    """For non-production targets: ``keep_last`` (``****`` and the last ``keep``
    characters), ``email_domain`` (``*@domain``) or ``null``."""

    type: Literal["mask"]
    columns: list[str] = Field(min_length=1)
    style: Literal["keep_last", "email_domain", "null"] = "keep_last"
    keep: int = Field(4, ge=0, le=64)


class DropTransform(_Strict):
    type: Literal["drop"]
    columns: list[str] = Field(min_length=1)


class FilterTransform(_Strict):
    """Keep the rows for which ``where`` holds: a condition tree (see filter_grammar.py)."""

    type: Literal["filter"]
    where: dict

    @field_validator("where")
    @classmethod
    def _is_a_condition(cls, value: dict) -> dict:
        try:
            filter_grammar.parse(value)
        except filter_grammar.FilterError as err:
            raise ValueError(str(err)) from None
        return value


Transform = Annotated[
    PseudonymiseTransform | EncryptTransform | MaskTransform | DropTransform | FilterTransform,
    Field(discriminator="type"),
]


class DuckDBDestination(_Strict):
    type: Literal["duckdb"]
    merges_by_key: ClassVar[bool] = True  # takes incremental runs
    path: str = "warehouse.duckdb"
    table: SqlName

    def target(self) -> str:
        """Where the rows land, for telling whether two pipelines share a table."""
        return f"duckdb:{os.path.normpath(self.path)}:{self.table}"


class PostgresDestination(_PostgresConnection):
    """A table in which each partition is replaced in one transaction."""

    type: Literal["postgres"]
    merges_by_key: ClassVar[bool] = True

    def target(self) -> str:
        return f"postgres://{self.host}:{self.port}/{self.dbname}:{self.db_schema}.{self.table}"


class BigQueryDestination(_Strict):
    """A BigQuery table partitioned by hour on ``_partition_start``; one load job per
    partition replaces exactly that partition. Credentials: the base64 service-account
    JSON in the environment variable ``credentials_env`` (dagster-gcp's gcp_credentials),
    else Application Default Credentials. ``api_endpoint`` points the client elsewhere
    (an emulator or a test server); ``anonymous`` sends no credentials (only for those)."""

    type: Literal["bigquery"]
    merges_by_key: ClassVar[bool] = False  # one load job replaces a partition
    project: str = Field(pattern=r"^[a-z][a-z0-9-]{4,61}[a-z0-9]$")
    dataset: BigQueryName
    table: BigQueryName
    location: str | None = None
    credentials_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    api_endpoint: str | None = Field(None, pattern=r"^https?://")
    anonymous: bool = False
    timeout_s: float = Field(600, gt=0)

    def target(self) -> str:
        return f"bigquery:{self.api_endpoint or ''}:{self.project}.{self.dataset}.{self.table}"

    @model_validator(mode="after")
    def _anonymous_only_elsewhere(self) -> BigQueryDestination:
        if self.anonymous and not self.api_endpoint:
            raise ValueError("anonymous: true is only for an api_endpoint (emulator or test)")
        if self.anonymous and self.credentials_env:
            raise ValueError("anonymous: true and credentials_env exclude each other")
        return self


Destination = Annotated[
    DuckDBDestination | PostgresDestination | BigQueryDestination, Field(discriminator="type")
]


def _merging_destinations() -> str:
    """The destination types that take incremental runs (merge by key), e.g. for an error."""
    models = typing.get_args(typing.get_args(Destination)[0])
    kinds = [typing.get_args(m.model_fields["type"].annotation)[0] for m in models]
    return " or ".join(k for k, m in zip(kinds, models, strict=True) if m.merges_by_key)


class HourlyPartitions(_Strict):
    """One partition per UTC hour from ``start``; the schedule runs each hour's partition
    ``schedule_minute`` minutes after the hour ends."""

    type: Literal["hourly"] = "hourly"
    start: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}-\d{2}:\d{2}$")
    schedule_minute: int = Field(15, ge=0, le=59)


class CronPartitions(_Strict):
    """One partition per interval of the ``cron`` schedule (UTC) from ``start``, e.g.
    ``* * * * *`` for a partition a minute; the schedule runs each one when it ends."""

    type: Literal["cron"]
    cron: Cron
    start: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}-\d{2}:\d{2}$")


class IncrementalRuns(_Strict):
    """No time partitions: each run (on the ``schedule`` cron) extracts what is new since
    the last one, as the source's ``incremental`` says, and merges it by the key."""

    type: Literal["incremental"]
    schedule: Cron = "*/15 * * * *"


def _kind(default: str):
    """A union's discriminator whose ``type`` may be left out (then ``default``); an
    unknown type is returned as it is, so the error lists the known ones."""

    def kind(value: object) -> str:
        if isinstance(value, dict):
            return str(value.get("type", default))
        return getattr(value, "type", default)

    return kind


Partitions = Annotated[
    Annotated[HourlyPartitions, Tag("hourly")]
    | Annotated[CronPartitions, Tag("cron")]
    | Annotated[IncrementalRuns, Tag("incremental")],
    Discriminator(_kind("hourly")),
]


class RetryConfig(_Strict):
    """Extract and load are retried: max_retries times, delay_s apart, doubling."""

    max_retries: int = Field(3, ge=0, le=20)
    delay_s: float = Field(300, ge=0)


class Retention(_Strict):
    """Raw and quarantined partitions go ``raw_grace_hours`` after their partition was
    loaded; hashed partitions ``hashed_days`` after it (never, if unset)."""

    raw_grace_hours: float = Field(24, ge=0)
    hashed_days: float | None = Field(None, gt=0)


class Quality(_Strict):
    max_null_rate: float = Field(0.0, ge=0, le=1)


class PipelineConfig(_Strict):
    version: str = "1"
    source: Source
    client_certificate: Name
    key_column: str
    # Columns holding personal data (besides those the source's schema marks): each must
    # be pseudonymised, encrypted, masked or dropped (security_policy.pii_transformed).
    pii: list[SqlName] = []
    transforms: list[Transform] = []
    destination: Destination
    partitions: Partitions
    quality: Quality = Quality()
    retry: RetryConfig = RetryConfig()
    retention: Retention = Retention()
    # Extract, pseudonymise and load in one step, overlapped (faster for big partitions;
    # a failure retries the whole pass). Hourly partitions only.
    one_pass: bool = False
    exemption: Exemptions = {}

    def declared_pii(self) -> list[str]:
        """The PII columns: those declared by ``pii``, then those the source marks."""
        return list(dict.fromkeys([*self.pii, *self.source.pii_columns()]))

    @model_validator(mode="after")
    def _transforms_fit_the_columns(self) -> PipelineConfig:
        taken: dict[str, str] = {}
        for i, transform in enumerate(self.transforms):
            if transform.type == "filter":
                continue
            for column in transform.columns:
                if column in taken:
                    raise ValueError(
                        f"transforms[{i}]: column {column!r} already takes {taken[column]}; "
                        "a column takes one transform"
                    )
                taken[column] = transform.type
            if transform.type == "drop" and self.key_column in transform.columns:
                raise _KeyedError(
                    ("transforms", i, "columns"),
                    f"drops the key_column {self.key_column!r}, which the destination "
                    "needs; drop other columns or choose another key_column",
                )
        return self

    @model_validator(mode="after")
    def _columns_fit_the_source(self) -> PipelineConfig:
        kinds = self.source.column_kinds()
        if kinds is None:
            return self  # the columns are checked when the first batch arrives
        has = f"the source has {', '.join(sorted(kinds))}"
        for column in self.pii:
            if column not in kinds:
                raise _KeyedError(
                    ("pii",),
                    f"unknown column {echo(column)} ({has})"
                    + _did_you_mean(column, list(kinds), fallback=""),
                )
        if self.key_column not in kinds:
            raise _KeyedError(
                ("key_column",),
                f"unknown column {echo(self.key_column)} ({has})"
                + _did_you_mean(self.key_column, list(kinds), fallback=""),
            )
        for i, transform in enumerate(self.transforms):
            if transform.type != "filter":
                unknown = sorted(set(transform.columns) - set(kinds))
                if unknown:
                    raise _KeyedError(
                        ("transforms", i, "columns"),
                        f"transforms[{i}] ({transform.type}): unknown column "
                        f"{', '.join(unknown)} ({has})",
                    )
                continue
            for where, leaf in filter_grammar.leaves(filter_grammar.parse(transform.where)):
                loc = ("transforms", i, *where.split("."))
                if leaf.column not in kinds:
                    raise _KeyedError(
                        loc,
                        f"transforms[{i}] (filter): unknown column {leaf.column} ({has})"
                        + _did_you_mean(leaf.column, list(kinds), fallback=""),
                    )
                kind = kinds[leaf.column]
                values = (leaf.value,) if hasattr(leaf, "value") else getattr(leaf, "values", ())
                for value in values if kind else ():
                    problem = filter_grammar.value_problem(leaf.column, kind, value)
                    if problem:
                        raise _KeyedError(loc, problem)
        cursor = getattr(self.source, "incremental", None)
        if cursor is not None:
            loc = ("source", "incremental", "cursor_column")
            if cursor.cursor_column not in kinds:
                raise _KeyedError(
                    loc,
                    f"{cursor.cursor_column!r} is not among the source's columns "
                    f"({', '.join(sorted(kinds))}); add it to columns: the high-water mark "
                    "is read from it",
                )
            _is_a_time(loc, cursor.cursor_column, kinds[cursor.cursor_column])
        time_column = getattr(self.source, "time_column", None)
        if time_column in kinds:  # a column not read may still be the one filtered on
            _is_a_time(("source", "time_column"), time_column, kinds[time_column])
        return self

    @model_validator(mode="after")
    def _partitions_fit_the_source(self) -> PipelineConfig:
        if self.one_pass and self.incremental:
            raise ValueError("one_pass: true takes time partitions (hourly or cron)")
        incremental = self.source.incremental_cursor()
        if self.partitions.type == "incremental" and incremental is None:
            raise ValueError(
                f"partitions of type incremental need a source with `incremental: "
                f"{{cursor_column: ...}}` (a {self.source.type} source has none)"
            )
        if not self.incremental and incremental is not None:
            raise ValueError("a source with `incremental` needs `partitions: {type: incremental}`")
        if self.partitions.type == "incremental" and not self.destination.merges_by_key:
            raise ValueError(
                f"a {self.destination.type} destination takes hourly partitions (one load "
                f"job replaces a partition); incremental merges go to {_merging_destinations()}"
            )
        problem = None if self.incremental else self.source.hourly_problem()
        if problem:
            raise ValueError(problem)
        return self

    @property
    def incremental(self) -> bool:
        return self.partitions.type == "incremental"


class KeySource(_Strict):
    """Where a secret is: the environment variable ``env`` when set, else the key ``file``
    (relative to state_dir, mode 0600)."""

    env: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _has_a_source(self) -> KeySource:
        if not self.env and not self.file:
            raise ValueError("give env, file, or both")
        return self


class HmacKeyConfig(KeySource):
    """A key for pseudonyms or column encryption.

    ``id`` is the key id written beside every value it produces (default: the key's
    name). To rotate, give the new secret a new ``id`` and move the old one under
    ``previous``: new data gets the new id, and values written under an old id stay
    verifiable (pseudonyms) or readable (encrypted columns) with ``secure-etl keys``.
    With ``create: true`` a missing file is generated (32 random bytes, mode 0600);
    that is meant for the offline demo only.
    """

    create: bool = False
    id: KeyId | None = None
    previous: dict[KeyId, KeySource] = {}

    @model_validator(mode="after")
    def _current_id_is_not_retired(self) -> HmacKeyConfig:
        if self.id is not None and self.id in self.previous:
            raise ValueError(f"key id {self.id!r} is both current and under previous")
        return self


class SharedPostgres(_Strict):
    """A PostgreSQL that holds state every worker shares, reached over verify-full TLS
    with a client certificate. The certificate, its key (0600) and the roots are files
    the deployment provides on each worker (e.g. a mounted secret): they are how a
    worker proves itself before it can read anything the platform keeps."""

    host: str
    port: int = Field(5432, ge=1, le=65535)
    dbname: str
    user: str
    db_schema: SqlName = Field("public", alias="schema")
    table: SqlName
    client_certificate: LocalPath
    client_key: LocalPath
    ca_bundle: LocalPath
    connect_timeout_s: int = Field(10, ge=1)


class AuditPostgres(SharedPostgres):
    table: SqlName = "audit_log"
    # Signed checkpoints, which every writer must see (a copy also goes to checkpoint_dir).
    checkpoint_table: SqlName = "audit_checkpoints"


class CertificateStorePostgres(SharedPostgres):
    table: SqlName = "certificate_versions"  # every kept version, keys encrypted
    current_table: SqlName = "certificate_current"  # which version is current


def _backend_and_section(backend: str, postgres: object) -> None:
    """``backend: postgres`` comes with its ``postgres:`` section, and only it does."""
    if backend == "postgres" and postgres is None:
        raise ValueError("backend postgres needs a postgres: section (host, dbname, ...)")
    if backend != "postgres" and postgres is not None:
        raise ValueError("a postgres: section needs backend: postgres")


class CertificateStoreConfig(_Strict):
    """Where certificates and their keys are kept: ``local`` (the default) under
    state_dir/certs; ``postgres`` in two tables every worker shares, each private key
    encrypted under a fresh data key that the KMS (``kms:``) wraps."""

    backend: Literal["local", "postgres"] = "local"
    postgres: CertificateStorePostgres | None = None

    @model_validator(mode="after")
    def _backend_has_its_settings(self) -> CertificateStoreConfig:
        _backend_and_section(self.backend, self.postgres)
        return self


class AuditConfig(_Strict):
    """The audit log and its signed checkpoints; relative paths are under state_dir.
    Put ``checkpoint_dir`` on other storage than the log: a checkpoint is only evidence
    if whoever can rewrite the log cannot rewrite it too.

    ``backend: postgres`` keeps the records in a PostgreSQL table (``postgres:``) that
    writers on many machines append to as one chain, and the checkpoints in a second
    table; ``path`` is then unused and ``checkpoint_dir`` receives each writer's copies."""

    backend: Literal["file", "postgres"] = "file"
    postgres: AuditPostgres | None = None
    path: str = "audit/audit.log"
    checkpoint_dir: str = "audit-checkpoints"
    signing_key: str = "audit/checkpoint.key"
    checkpoint_every: int = Field(100, ge=1)
    # The key the verifier trusts: ``ed25519:<64 hex>`` (``audit verify`` prints it) or a
    # PEM path kept where whoever can write the log cannot. Never the one beside the key.
    public_key: LocalPath | None = Field(None, pattern=r"^(ed25519:[0-9a-f]{64}|[^:]+)$")

    @model_validator(mode="after")
    def _backend_has_its_settings(self) -> AuditConfig:
        _backend_and_section(self.backend, self.postgres)
        return self


class LocalKms(_Strict):
    """The master key that wraps the data keys of encrypted files: a 0600 file (relative
    to state_dir), created on first use."""

    type: Literal["local_file"] = "local_file"
    path: str = "keys/kms-master.key"


class VaultTransitKms(_Strict):
    """HashiCorp Vault's (or OpenBao's) transit engine wraps the data keys: the master key
    never leaves the server, and rotating it there keeps old files readable."""

    type: Literal["vault_transit"]
    address: str = Field(pattern=r"^https://")
    key: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # the transit key's name
    mount: str = Field("transit", pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
    token_env: str = "VAULT_TOKEN"  # noqa: S105 - the name of the variable holding it
    namespace: str | None = None  # Vault Enterprise / OpenBao namespaces
    ca_bundle: LocalPath | None = None  # verifies Vault's certificate (default: system roots)
    timeout_s: float = Field(10, gt=0)


Kms = Annotated[
    Annotated[LocalKms, Tag("local_file")] | Annotated[VaultTransitKms, Tag("vault_transit")],
    Discriminator(_kind("local_file")),
]


class SlackChannel(_Strict):
    """A Slack incoming webhook; its URL (a secret) is in the environment variable."""

    type: Literal["slack"]
    url_env: str
    ca_bundle: LocalPath | None = None
    timeout_s: float = Field(10, gt=0)
    proxy: ProxyConfig | None = None  # then the URL must be https
    min_tls: TlsVersion | None = None
    exemption: Exemptions = {}


class WebhookChannel(_Strict):
    """Any HTTP(S) receiver of a JSON POST; the URL is in the environment variable."""

    type: Literal["webhook"]
    url_env: str
    ca_bundle: LocalPath | None = None
    timeout_s: float = Field(10, gt=0)
    proxy: ProxyConfig | None = None  # then the URL must be https
    min_tls: TlsVersion | None = None
    exemption: Exemptions = {}


class EmailChannel(_Strict):
    """Mail over SMTP. ``tls``: ``starttls`` (default), ``implicit`` (SMTPS) or ``none``
    (only for a relay on the same host)."""

    type: Literal["email"]
    host: str
    port: int = Field(587, ge=1, le=65535)
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    sender: str
    recipients: list[str] = Field(min_length=1)
    username_env: str | None = None
    password_env: str | None = None
    ca_bundle: LocalPath | None = None
    timeout_s: float = Field(30, gt=0)
    min_tls: TlsVersion | None = None
    exemption: Exemptions = {}

    @model_validator(mode="before")
    @classmethod
    def _no_proxy(cls, data: object) -> object:
        if isinstance(data, dict) and "proxy" in data:
            raise ValueError(
                "proxy: email goes over SMTP, which an HTTP CONNECT proxy does not carry; "
                "send through an SMTP relay you can reach, or use a webhook channel"
            )
        return data

    @model_validator(mode="after")
    def _login_needs_both(self) -> EmailChannel:
        if bool(self.username_env) != bool(self.password_env):
            raise ValueError("give username_env and password_env together")
        return self


AlertChannel = Annotated[SlackChannel | WebhookChannel | EmailChannel, Field(discriminator="type")]


class AlertsConfig(_Strict):
    """Notifications for failed and recovered asset checks and failed runs."""

    channels: list[AlertChannel] = []
    min_severity: Literal["WARN", "ERROR"] = "WARN"  # WARN: every failure; ERROR: the worst
    attempts: int = Field(3, ge=1, le=10)
    backoff_s: float = Field(2.0, ge=0)
    interval_s: int = Field(30, ge=5)  # how often the sensor looks
    # The web UI's address as people reach it: messages then link to the run.
    dagster_url: str | None = Field(None, pattern=r"^https?://")


class MonitoringConfig(_Strict):
    """The health report: ``prometheus_textfile`` (relative to state_dir) is written for
    node_exporter's textfile collector; the freshness limits mark stalled work."""

    prometheus_textfile: str = "metrics/secure_etl.prom"
    schedule: Cron = "*/10 * * * *"
    loaded_max_lag_hours: float = Field(3, gt=0)  # a loaded/ asset older than this is stale
    certificate_checks_max_age_hours: float = Field(2, gt=0)  # last certificate check


class DemoApiConfig(_Strict):
    """The offline demo's HTTPS API (``secure_etl/etl/demo_api.py``): synthetic customers
    as JSON pages on ``https://127.0.0.1:<port>/customers``, served with ``certificate``
    (a server certificate) to clients whose certificate chains to its roots. Point an
    ``https_api`` source's ``url`` and the certificate's ``endpoints`` at that port.
    ``secure-etl demo`` runs it for the whole demo; under ``dagster dev`` the steps that
    need it (extracting from it, the certificate's checks) run it while they last."""

    certificate: Name
    port: int = Field(18443, ge=1, le=65535)
    rows_per_partition: int = Field(1000, ge=1, le=1_000_000)
    seed: int = 0
    bad_row_rate: float = Field(0.005, ge=0, le=1)
    page_size: int = Field(250, ge=1, le=10_000)


class StorageConfig(_Strict):
    """Where raw, hashed and quarantined partitions are kept: ``url`` left out, under
    state_dir/data as always; a local path (relative to state_dir); or
    ``s3://bucket/prefix`` / ``gs://bucket/prefix``. Credentials, region and endpoint
    come from the environment (AWS_*, Google's application default credentials), never
    from the URL."""

    url: str | None = None

    @field_validator("url")
    @classmethod
    def _no_secrets_in_url(cls, url: str | None) -> str | None:
        if url is None:
            return url
        if not url.strip():
            raise ValueError("empty: leave the key out for state_dir/data")
        scheme, sep, _ = url.partition("://")
        if not sep:
            return url  # a local path
        if scheme not in ("s3", "gs"):
            raise ValueError(f"unknown scheme {echo(scheme)} (one of: s3, gs; or a local path)")
        parts = urlsplit(url)
        if "@" in parts.netloc or parts.password is not None:
            # Not echoed: it holds a secret.
            raise ValueError(
                "credentials in the URL are refused: give them in the environment "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS)"
            )
        if parts.query or parts.fragment or "?" in url or "#" in url:
            raise ValueError(
                "options in the URL are refused (they may hold credentials): region and "
                "endpoint come from the environment (AWS_REGION, AWS_ENDPOINT_URL)"
            )
        if not parts.netloc or ":" in parts.netloc:
            raise ValueError(f"give {scheme}://<bucket>/<prefix> (got {echo(url)})")
        return url


class CeleryExecutor(_Strict):
    """The pipeline jobs' steps run on Celery workers (``dagster-celery``, the ``celery``
    extra) reached through a broker such as Redis or RabbitMQ; the certificate jobs keep
    running in the run's own process. The broker's and the result backend's URLs come
    from the environment (they may hold a password), never from this file. Workers share
    only network services: see the README's scaling section."""

    type: Literal["celery"]
    broker_env: str = Field("SECURE_ETL_CELERY_BROKER", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    backend_env: str = Field("SECURE_ETL_CELERY_BACKEND", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # A step is acknowledged when it ends, not when a worker takes it: a step whose
    # worker died goes back to the queue, and a Redis broker hands it to another worker
    # after this long. Make it longer than the slowest step, or a slow step runs twice.
    redeliver_after_s: float = Field(3600, ge=5)


class MultiprocessExecutor(_Strict):
    """Dagster's default: each step in a subprocess of the run, on the run's machine."""

    type: Literal["multiprocess"] = "multiprocess"
    max_concurrent: int | None = Field(None, ge=1)


class InProcessExecutor(_Strict):
    """Every step in the run's own process, one after another: no subprocess loading the
    code location again for each step (seconds a run saves; what a pipeline with a
    partition a minute wants), no steps in parallel within a run."""

    type: Literal["in_process"]


Executor = Annotated[
    Annotated[MultiprocessExecutor, Tag("multiprocess")]
    | Annotated[InProcessExecutor, Tag("in_process")]
    | Annotated[CeleryExecutor, Tag("celery")],
    Discriminator(_kind("multiprocess")),
]


class MinTls(_Strict):
    """The lowest TLS version per kind of connection. 1.3 is the default: every
    connector sets it (Python's ``ssl`` for HTTPS, MariaDB, SMTP and ACME; libpq's
    ``ssl_min_protocol_version`` for PostgreSQL). A connection's own ``min_tls`` may
    only raise it, unless its ``exemption`` says why not."""

    sources: TlsVersion = "1.3"
    destinations: TlsVersion = "1.3"
    alerts: TlsVersion = "1.3"
    acme: TlsVersion = "1.3"


class SecurityPolicy(_Strict):
    """The security policy (``secure_etl/policy.py`` checks it at every load; README,
    Security policy). The defaults are the policy; a config that breaks a point is
    refused unless the pipeline, certificate, issuer or channel carries an
    ``exemption: {point: reason}`` (platform-wide points: this section's own)."""

    min_tls: MinTls = MinTls()
    mtls_sources: bool = True
    min_rsa_bits: int = Field(2048, ge=2048)  # pki/inspect.py refuses less in any case
    min_ec_bits: Literal[256, 384] = 256
    at_rest: Literal["AES-256-GCM"] = "AES-256-GCM"  # what encrypted Parquet uses
    encrypt_raw: bool = True
    kms_types: list[Literal["local_file", "vault_transit"]] = Field(
        ["local_file", "vault_transit"], min_length=1
    )
    max_raw_grace_hours: float = Field(24, ge=0)
    audit_trail: bool = True
    pii_transformed: bool = True
    api_key_sources: bool = False
    proxy_outbound: bool = False
    exemption: Exemptions = {}


# load_config(..., refuse_policy_violations=False) passes this as validation context.
_REPORT_POLICY = "report_policy_violations"


class PlatformConfig(_Strict):
    state_dir: LocalPath = ".secure_etl"
    certificate_check_schedule: Cron = "*/30 * * * *"
    # Checks more often than cron can say (certificates of a few minutes): a sensor
    # evaluates them this many seconds apart, in its tick, instead of the schedule's runs.
    certificate_check_interval_s: int | None = Field(None, ge=5, le=3600)
    # How often the renewal sensor looks at new check evaluations (seconds).
    renewal_sensor_interval_s: int = Field(30, ge=1, le=3600)
    issuers: dict[Name, Issuer]
    certificates: dict[Name, CertificateConfig] = {}
    keys: dict[Name, HmacKeyConfig] = {}
    pipelines: dict[Name, PipelineConfig] = {}
    audit: AuditConfig = AuditConfig()
    certificate_store: CertificateStoreConfig = CertificateStoreConfig()
    retention_schedule: Cron = "35 * * * *"
    kms: Kms = LocalKms()
    # Raw and quarantined partitions (they hold PII) as encrypted Parquet.
    encrypt_raw: bool = True
    alerts: AlertsConfig = AlertsConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    demo_api: DemoApiConfig | None = None
    executor: Executor = MultiprocessExecutor()
    storage: StorageConfig = StorageConfig()
    security_policy: SecurityPolicy = SecurityPolicy()

    @model_validator(mode="after")
    def _references_resolve(self) -> PlatformConfig:
        clients = [n for n, c in self.certificates.items() if c.use == "client"]
        if self.demo_api is not None:
            served = self.demo_api.certificate
            servers = [n for n, c in self.certificates.items() if c.use == "server"]
            if served not in servers:
                raise _RefError(
                    ("demo_api", "certificate"), served, servers, what="server certificate"
                )
        for name, cert in self.certificates.items():
            if cert.issuer not in self.issuers:
                raise _RefError(("certificates", name, "issuer"), cert.issuer, self.issuers)
            for i, action in enumerate(cert.deploy):
                ref = getattr(action, "client_certificate", None)
                if ref is not None and ref not in clients:
                    raise _RefError(
                        ("certificates", name, "deploy", i, "client_certificate"),
                        ref,
                        clients,
                        what="client certificate",
                    )
        for name, pipeline in self.pipelines.items():
            cert = pipeline.client_certificate
            if cert not in self.certificates:
                raise _RefError(("pipelines", name, "client_certificate"), cert, self.certificates)
            if self.certificates[cert].use != "client":
                raise _RefError(
                    ("pipelines", name, "client_certificate"),
                    cert,
                    [n for n, c in self.certificates.items() if c.use == "client"],
                    what="client certificate",
                )
            for i, transform in enumerate(pipeline.transforms):
                if getattr(transform, "key", None) is not None and transform.key not in self.keys:
                    raise _RefError(
                        ("pipelines", name, "transforms", i, "key"), transform.key, self.keys
                    )
        return self

    @model_validator(mode="after")
    def _one_pipeline_per_table(self) -> PlatformConfig:
        # Each load replaces its partition's rows: a second pipeline on the same table
        # would delete the first one's rows while both report them loaded.
        writers: dict[str, str] = {}
        for name, pipeline in self.pipelines.items():
            target = pipeline.destination.target()
            if target in writers:
                raise _KeyedError(
                    ("pipelines", name, "destination"),
                    f"pipeline {writers[target]!r} already writes this table ({target}); "
                    "give each pipeline its own table",
                )
            writers[target] = name
        return self

    @model_validator(mode="after")
    def _keeps_the_policy(self, info: ValidationInfo) -> PlatformConfig:
        # Also gives each connection without a min_tls the policy's (its connector reads it).
        report = policy.evaluate(self)
        if report.violations and not (info.context or {}).get(_REPORT_POLICY):
            first = report.violations[0]
            raise _KeyedError(first.loc, first.line())
        return self

    def policy_report(self) -> policy.PolicyReport:
        """Each point of the security policy: where it holds, exemptions, violations."""
        return policy.evaluate(self)

    def resolved_state_dir(self) -> Path:
        """``SECURE_ETL_STATE_DIR`` if set, else ``state_dir`` (relative to the cwd)."""
        return _resolved(str(os.environ.get(STATE_DIR_ENV) or self.state_dir), os.getcwd())


@functools.lru_cache(maxsize=64)
def _resolved(path: str, cwd: str) -> Path:
    # Resolving stats every component of the path: a renewal of a thousand certificates
    # asks for the state directory tens of thousands of times.
    return (Path(cwd) / path).resolve()


class _KeyedError(ValueError):
    """A config error found across keys; carries the key path it belongs to, relative
    to the model whose validator raised it."""

    def __init__(self, loc: tuple, message: str) -> None:
        self.loc = loc
        super().__init__(message)


class _RefError(_KeyedError):
    """A name that points at nothing."""

    def __init__(self, loc: tuple, value: str, known, what: str = "") -> None:
        kind = what or loc[-1].replace("_", " ")
        choices = ", ".join(sorted(known)) or "none defined"
        super().__init__(loc, f"unknown {kind} {echo(value)} (defined: {choices})")


def default_config_path() -> Path:
    """The bundled offline demo config."""
    return Path(str(resources.files("secure_etl.demo").joinpath("platform.yaml")))


def config_path_from_env() -> Path:
    value = os.environ.get(CONFIG_ENV)
    return Path(value) if value else default_config_path()


# What a config may ask of the YAML composer: real configs are far below these bounds.
MAX_ALIASES = 100
MAX_NODES = 100_000  # counting every node an alias stands for, as often as it is used
MAX_DEPTH = 50
_ECHO = reprlib.Repr()  # keyword arguments only from Python 3.12
_ECHO.maxlevel, _ECHO.maxdict, _ECHO.maxlist, _ECHO.maxtuple = 2, 4, 4, 4
_ECHO.maxstring = _ECHO.maxother = 60


def echo(value: object, limit: int = 80) -> str:
    """A short repr of a config value for an error: bounded work, at most ``limit`` chars."""
    text = _ECHO.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# libyaml's parser when PyYAML has it (a config of a thousand certificates parses in a
# tenth of the time), under the Python composer that bounds what the document builds.
try:
    from yaml.cyaml import CParser as _Parser

    _PARSING: tuple[type, ...] = (_Parser,)
except ImportError:  # PyYAML built without libyaml
    _PARSING = (yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser)


class _BoundedLoader(
    yaml.composer.Composer, *_PARSING, yaml.constructor.SafeConstructor, yaml.resolver.Resolver
):
    """A safe loader (``yaml.SafeLoader``'s constructor and resolver) that refuses
    documents too deep or too large once aliases are expanded (a "billion laughs" file is
    a few lines that stand for 10^9 nodes), before anything is built from them; the
    composer's recursion never reaches Python's limit."""

    def __init__(self, stream: str) -> None:
        if len(_PARSING) == 1:
            _PARSING[0].__init__(self, stream)
        else:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._aliases = self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it stands for, expanded

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                self._refuse(event, f"more than {MAX_ALIASES} aliases (*name); use fewer")
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            self._refuse(event, f"nested more than {MAX_DEPTH} levels deep; flatten it")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        children = node.value if isinstance(node.value, list) else []
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in children for part in pair]
        size = 1 + sum(self._sizes.get(id(child), 1) for child in children)
        if size > MAX_NODES:
            self._refuse(
                event,
                f"stands for more than {MAX_NODES} values once aliases expand; use fewer aliases",
            )
        self._sizes[id(node)] = size
        return node

    @staticmethod
    def _refuse(event, problem: str):
        raise yaml.composer.ComposerError(None, None, problem, event.start_mark)


def _load_yaml(text: str) -> object:
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        if getattr(err, "problem", None) == "exceeded maximum nesting depth":  # libyaml's
            problem = f"nested more than {MAX_DEPTH} levels deep; flatten it"
            raise yaml.composer.ComposerError(None, None, problem, err.problem_mark) from None
        raise
    finally:
        loader.dispose()


def load_config(
    path: Path | str | None = None, *, refuse_policy_violations: bool = True
) -> PlatformConfig:
    """Load and validate a platform config; ``None`` means ``$SECURE_ETL_CONFIG`` or the
    demo. A config that breaks the security policy is refused, unless asked not to
    (``secure-etl policy check`` reports every violation)."""
    path = Path(path) if path is not None else config_path_from_env()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(path, "", f"cannot read the config file: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "the config file is not UTF-8 text") from None
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(path, "", f"{line}{problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(path, "", "expected a mapping at the top level")
    try:
        context = None if refuse_policy_violations else {_REPORT_POLICY: True}
        config = PlatformConfig.model_validate(data, context=context)
    except ValidationError as err:
        raise _first_error(path, data, err) from None
    except _KeyedError as err:
        raise ConfigError(path, _key_path(err.loc), str(err)) from None
    if path.resolve() != default_config_path().resolve():
        # The bundled demo keeps its state in the working directory, as the README says.
        _anchor_paths(config, path.resolve().parent)
    return config


def _anchor_paths(model: object, base: Path) -> None:
    """Make every relative ``LocalPath`` in ``model`` (and the models and challenge
    dataclasses in it) absolute against ``base``."""
    for name, marks in _fields(model):
        value = getattr(model, name)
        if _is_model(value):
            _anchor_paths(value, base)
        elif isinstance(value, dict | list):
            for item in value.values() if isinstance(value, dict) else value:
                if _is_model(item):
                    _anchor_paths(item, base)
        elif (
            isinstance(value, str)
            and any(isinstance(mark, _FromConfigDir) for mark in marks)
            and not value.startswith("ed25519:")
            and not os.path.isabs(value)
        ):
            object.__setattr__(model, name, str(base / value))  # frozen models


def _is_model(value: object) -> bool:
    return isinstance(value, BaseModel) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    )


def _fields(model: object) -> list[tuple[str, list]]:
    """Each field's name and the metadata of its annotation (``LocalPath | None`` too)."""
    if isinstance(model, BaseModel):
        return [(n, _marks(f.annotation, f.metadata)) for n, f in type(model).model_fields.items()]
    return [(f.name, _marks(f.type, ())) for f in dataclasses.fields(model)]


def _marks(annotation: object, metadata) -> list:
    marks = [*metadata, *getattr(annotation, "__metadata__", ())]
    for member in typing.get_args(annotation):  # LocalPath | None
        marks += getattr(member, "__metadata__", ())
    return marks


# An unknown key: in a model, and in a challenge dataclass.
_UNKNOWN_KEY = {"extra_forbidden", "unexpected_keyword_argument"}


def _first_error(path: Path, data: object, err: ValidationError) -> ConfigError:
    errors = err.errors(include_url=False)
    # A misspelt key shows as an unknown key plus a missing one: name the one the user
    # wrote, with the closest valid key, rather than the one they never wrote.
    unknown = [e for e in errors if e["type"] in _UNKNOWN_KEY]
    detail = unknown[0] if unknown else errors[0]
    ctx_error = (detail.get("ctx") or {}).get("error")
    if isinstance(ctx_error, _KeyedError):
        # Its key path is relative to the model that raised it.
        loc = [*_without_union_tags(data, detail["loc"]), *ctx_error.loc]
        return ConfigError(path, _key_path(loc), str(ctx_error))
    loc = _without_union_tags(data, detail["loc"])
    if loc[-1:] == ["[key]"]:  # a mapping's key: named by the mapping and the value
        loc = loc[:-2]
    kind = detail["type"]
    if kind in _UNKNOWN_KEY:
        missing = [
            e["loc"][-1]
            for e in errors
            if e["type"] == "missing" and _without_union_tags(data, e["loc"])[:-1] == loc[:-1]
        ]
        message = "unknown key" + _did_you_mean(str(loc[-1]), missing)
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "union_tag_invalid":
        expected = detail["ctx"]["expected_tags"].replace("'", "")
        message = f"unknown type {echo(detail['ctx']['tag'])} (one of: {expected})"
        loc = [*loc, "type"]
    else:
        message = detail["msg"].removeprefix("Value error, ")
        if kind not in {"value_error", "assertion_error"} and "input" in detail:
            message += f" (got {echo(detail['input'])})"
    return ConfigError(path, _key_path(loc), message)


def _did_you_mean(
    key: str, missing: list, fallback: str = " (check its spelling and place)"
) -> str:
    close = difflib.get_close_matches(key, [str(m) for m in missing], n=1, cutoff=0.5)
    if close:
        return f"; did you mean `{close[0]}`?"
    return fallback


def _is_a_time(loc: tuple, column: str, kind: str | None) -> None:
    """Refuse a time or cursor column whose known kind is not a timestamp or a date."""
    if kind is not None and kind not in ("timestamp", "date"):
        article = "an" if kind[0] in "aeiou" else "a"
        raise _KeyedError(
            loc, f"{column} is {article} {kind} column; this must be a timestamp or date column"
        )


def _without_union_tags(data: object, loc: tuple) -> list:
    """Drop the ``type`` tags pydantic puts into locations inside discriminated unions."""
    out, node = [], data
    for i, part in enumerate(loc):
        # A tag is a step that is not in the data; only the last step may be (a missing
        # key), unless it is the node's own type (an error of the whole tagged model).
        if (
            isinstance(node, dict)
            and part not in node
            and (i < len(loc) - 1 or node.get("type") == part)
        ):
            continue
        out.append(part)
        try:
            node = node[part]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            node = None
    return out


def _key_path(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
