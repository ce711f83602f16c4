"""The BigQuery resource of a pipeline that loads into BigQuery (its own module: dagster-gcp
and the BigQuery client are imported only when a pipeline needs them)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager

from dagster_gcp import BigQueryResource
from google.cloud import bigquery


class WarehouseBigQueryResource(BigQueryResource):
    """dagster-gcp's BigQueryResource, plus an endpoint override (an emulator or a test
    server) and, only with it, anonymous access. Without them it is BigQueryResource."""

    api_endpoint: str | None = None
    anonymous: bool = False

    def get_object_to_set_on_execution_context(self) -> WarehouseBigQueryResource:
        # Assets ask for clients themselves (``get_client``), one per load or read.
        return self

    @contextmanager
    def get_client(self) -> Iterator[bigquery.Client]:
        if not self.api_endpoint:
            with super().get_client() as client:
                yield client
            return
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials

        credentials = AnonymousCredentials() if self.anonymous else None
        if self.gcp_credentials:
            from google.oauth2 import service_account

            info = json.loads(base64.b64decode(self.gcp_credentials))
            credentials = service_account.Credentials.from_service_account_info(info)
        client = bigquery.Client(
            project=self.project,
            location=self.location,
            credentials=credentials,
            client_options=ClientOptions(api_endpoint=self.api_endpoint),
        )
        try:
            yield client
        finally:
            client.close()
