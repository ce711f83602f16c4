"""RFC 8555 ACME client (httpx + cryptography). Knows nothing of Dagster or the config."""
