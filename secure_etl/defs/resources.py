"""CertificateResource: what a consumer of a managed certificate needs to connect."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from dagster import AssetExecutionContext, ConfigurableResource, EnvVar, InitResourceContext

from secure_etl.config import PipelineConfig, PlatformConfig
from secure_etl.etl import demo_api, registry
from secure_etl.pki.renewal import certificate_files, certificate_store, trust_bundle

if TYPE_CHECKING:
    from google.cloud import bigquery


def resource_key(certificate: str) -> str:
    return "cert_" + certificate.replace("-", "_")


class CertificateResource(ConfigurableResource):
    """One managed certificate: stable paths to its current version and TLS contexts.

    The paths point through the store's ``current`` link, so every connection made after
    a renewal uses the new certificate without a restart. A step's copy (``version``
    set, see ``step_certificate``) points at the version that was current when the step
    began, so its certificate and key are one pair even if a renewal lands between
    reading the two.
    """

    name: str
    use: str
    directory: str
    ca_bundle: str
    version: str = ""

    @property
    def _files(self) -> Path:
        if self.version:
            pinned = Path(self.directory) / "versions" / self.version
            # Pruned already (``keep_versions: 1`` and a renewal since): the current one.
            if pinned.is_dir():
                return pinned
        return Path(self.directory) / "current"

    @property
    def fullchain_path(self) -> Path:
        return self._files / "fullchain.pem"

    @property
    def privkey_path(self) -> Path:
        return self._files / "privkey.pem"

    def subject(self) -> str:
        """The current certificate's subject (RFC 4514): who acts, in the audit log."""
        return self._leaf().subject.rfc4514_string()

    def serial(self) -> str:
        """The current certificate's serial number (hex): which credential it was."""
        return f"{self._leaf().serial_number:x}"

    def _leaf(self):
        from cryptography import x509

        return x509.load_pem_x509_certificate(self.fullchain_path.read_bytes())

    def ssl_context(self) -> ssl.SSLContext:
        """A verifying context presenting this certificate: as a client, or as a server
        that requires client certificates signed by ``ca_bundle`` (mutual TLS)."""
        if self.use == "client":
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_bundle)
        else:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.ca_bundle)
            context.verify_mode = ssl.CERT_REQUIRED
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.fullchain_path, self.privkey_path)
        return context

    def httpx_kwargs(self) -> dict:
        """Arguments for ``httpx.Client``: verify the server, present this certificate."""
        return {"verify": self.ssl_context()}

    def psycopg_kwargs(self) -> dict:
        """Connection arguments for psycopg: verify-full plus this client certificate."""
        return {
            "sslmode": "verify-full",
            "sslrootcert": self.ca_bundle,
            "sslcert": str(self.fullchain_path),
            "sslkey": str(self.privkey_path),
        }


@contextmanager
def step_certificate(
    platform: PlatformConfig, certificate: CertificateResource
) -> Iterator[CertificateResource]:
    """The certificate for one step, its current version as the step begins: with the
    local store, that version's own files (until renewals prune it: ``keep_versions``);
    with a shared store, 0600 copies of it in a temporary directory that is removed when
    the step ends. Either way a renewal during the step cannot pair one version's
    certificate with the next one's key (``current`` read once, not at each file)."""
    if platform.certificate_store.backend == "local":
        version = certificate_store(platform).current_version(certificate.name)
        if not version:  # nothing issued: its paths say so when the step opens them
            yield certificate
            return
        yield CertificateResource(
            name=certificate.name,
            use=certificate.use,
            directory=certificate.directory,
            ca_bundle=certificate.ca_bundle,
            version=version,
        )
        return
    with certificate_files(platform, certificate.name) as files:
        yield CertificateResource(
            name=certificate.name,
            use=certificate.use,
            directory=str(files.directory),
            # Looked up again: the roots are copied from the shared store into this
            # machine's state directory whenever it lacks them (a new or wiped worker).
            ca_bundle=str(trust_bundle(platform, certificate.name)),
        )


def certificate_resources(
    platform: PlatformConfig, names: Iterable[str] | None = None
) -> dict[str, CertificateResource]:
    """A CertificateResource for each of ``names`` (default: every certificate)."""
    store = certificate_store(platform)
    wanted = platform.certificates if names is None else names
    return {
        resource_key(name): CertificateResource(
            name=name,
            use=platform.certificates[name].use,
            directory=str(store.paths(name).directory),
            ca_bundle=str(trust_bundle(platform, name)),
        )
        for name in wanted
    }


def used_certificates(platform: PlatformConfig) -> list[str]:
    """The certificates something in the definitions reads as a resource: the pipelines'
    client certificates. Only these are registered: Dagster checks every registered
    resource against every definition, so one per certificate makes loading quadratic."""
    return sorted({pipeline.client_certificate for pipeline in platform.pipelines.values()})


def bigquery_resource_key(pipeline: str) -> str:
    return "bigquery_" + pipeline.replace("-", "_")


def bigquery_resources(platform: PlatformConfig) -> dict[str, ConfigurableResource]:
    """One per pipeline that loads into BigQuery; the credentials stay an EnvVar, read
    when the resource is used, never written into the definitions. dagster-gcp (with the
    BigQuery client and pandas, about a second of every process's start) is imported
    only when some pipeline loads into BigQuery."""
    resources: dict[str, ConfigurableResource] = {}
    for name, pipeline in platform.pipelines.items():
        destination = pipeline.destination
        if not registry.destination(destination).needs_bigquery_client:
            continue
        from secure_etl.defs.bigquery import WarehouseBigQueryResource

        resources[bigquery_resource_key(name)] = WarehouseBigQueryResource(
            project=destination.project,
            location=destination.location,
            gcp_credentials=EnvVar(destination.credentials_env)
            if destination.credentials_env
            else None,
            api_endpoint=destination.api_endpoint,
            anonymous=destination.anonymous,
        )
    return resources


DEMO_API_KEY = "demo_api"


class DemoApiResource(ConfigurableResource):
    """The offline demo's HTTPS API (``demo_api`` in the config), running while a step
    that needs it lasts: extracting from it, or checking what its certificate's endpoint
    serves. In ``secure-etl demo`` the command's own server is used; under ``dagster dev``
    each such step starts one on the configured port (or uses the one already there)."""

    port: int
    certificate_dir: str
    ca_bundle: str
    rows_per_partition: int
    seed: int
    bad_row_rate: float
    page_size: int

    def settings(self) -> demo_api.DemoApiSettings:
        return demo_api.DemoApiSettings(
            port=self.port,
            certificate_dir=Path(self.certificate_dir),
            ca_bundle=Path(self.ca_bundle),
            rows_per_partition=self.rows_per_partition,
            seed=self.seed,
            bad_row_rate=self.bad_row_rate,
            page_size=self.page_size,
        )

    @contextmanager
    def yield_for_execution(self, context: InitResourceContext) -> Iterator[DemoApiResource]:
        with demo_api.serving(self.settings(), log=context.log.info):
            yield self


def demo_api_settings(platform: PlatformConfig) -> demo_api.DemoApiSettings:
    """The demo API's settings from the config (which must have ``demo_api``)."""
    return demo_api_resources(platform)[DEMO_API_KEY].settings()


def demo_api_resources(platform: PlatformConfig) -> dict[str, DemoApiResource]:
    api = platform.demo_api
    if api is None:
        return {}
    return {
        DEMO_API_KEY: DemoApiResource(
            port=api.port,
            certificate_dir=str(certificate_store(platform).paths(api.certificate).directory),
            ca_bundle=str(trust_bundle(platform, api.certificate)),
            rows_per_partition=api.rows_per_partition,
            seed=api.seed,
            bad_row_rate=api.bad_row_rate,
            page_size=api.page_size,
        )
    }


def reads_demo_api(platform: PlatformConfig, pipeline: PipelineConfig) -> bool:
    """Whether the pipeline's source is the demo API (an https_api url on its origin)."""
    api = platform.demo_api
    url = getattr(pipeline.source, "url", None)
    if api is None or pipeline.source.type != "https_api" or url is None:
        return False
    parts = urlsplit(url)
    return parts.hostname == demo_api.HOST and parts.port == api.port


R = TypeVar("R")


def _resource(context: AssetExecutionContext, key: str, kind: type[R]) -> R:
    """The one lookup of a resource by its (config-derived) key, checked for its type."""
    found = getattr(context.resources, key)
    if not isinstance(found, kind):
        raise TypeError(f"resource {key!r} is a {type(found).__name__}, not a {kind.__name__}")
    return found


@dataclass(frozen=True)
class PipelineResources:
    """The resources one pipeline's assets use: its client certificate, for a BigQuery
    destination its BigQuery resource, and for the demo API as source that API. Their
    keys come from the config, so the assets declare them (``keys``, ``extract_keys``)
    and read them here, typed."""

    certificate_key: str
    bigquery_key: str | None = None
    demo_api_key: str | None = None  # not read: requiring it runs the API for the step

    @classmethod
    def of(
        cls, name: str, pipeline: PipelineConfig, platform: PlatformConfig | None = None
    ) -> PipelineResources:
        needs = registry.destination(pipeline.destination).needs_bigquery_client
        demo = platform is not None and reads_demo_api(platform, pipeline)
        return cls(
            resource_key(pipeline.client_certificate),
            bigquery_resource_key(name) if needs else None,
            DEMO_API_KEY if demo else None,
        )

    @property
    def extract_keys(self) -> set[str]:
        """What the extraction needs: the certificate, and the demo API if it reads it."""
        return {self.certificate_key} | ({self.demo_api_key} if self.demo_api_key else set())

    @property
    def keys(self) -> set[str]:
        return self.extract_keys | ({self.bigquery_key} if self.bigquery_key else set())

    def certificate(self, context: AssetExecutionContext) -> CertificateResource:
        return _resource(context, self.certificate_key, CertificateResource)

    def bigquery_clients(
        self, context: AssetExecutionContext
    ) -> Callable[[], AbstractContextManager[bigquery.Client]] | None:
        """What a BigQuery destination opens its clients with (None: not BigQuery)."""
        if self.bigquery_key is None:
            return None
        from secure_etl.defs.bigquery import WarehouseBigQueryResource

        return _resource(context, self.bigquery_key, WarehouseBigQueryResource).get_client
