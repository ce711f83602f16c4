"""Issuers, the certificate store, inspection and renewal policy. No Dagster."""
