"""CertificateResource: what a consumer of a managed certificate needs to connect."""

from __future__ import annotations

import ssl
from pathlib import Path

from dagster import ConfigurableResource

from secure_etl.config import PlatformConfig
from secure_etl.pki.renewal import certificate_store, trust_bundle


def resource_key(certificate: str) -> str:
    return "cert_" + certificate.replace("-", "_")


class CertificateResource(ConfigurableResource):
    """One managed certificate: stable paths to its current version and TLS contexts.

    The paths point through the store's ``current`` link, so every connection made after
    a renewal uses the new certificate without a restart.
    """

    name: str
    use: str
    directory: str
    ca_bundle: str

    @property
    def fullchain_path(self) -> Path:
        return Path(self.directory) / "current" / "fullchain.pem"

    @property
    def privkey_path(self) -> Path:
        return Path(self.directory) / "current" / "privkey.pem"

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


def certificate_resources(platform: PlatformConfig) -> dict[str, CertificateResource]:
    store = certificate_store(platform)
    return {
        resource_key(name): CertificateResource(
            name=name,
            use=cert.use,
            directory=str(store.paths(name).directory),
            ca_bundle=str(trust_bundle(platform, name)),
        )
        for name, cert in platform.certificates.items()
    }
