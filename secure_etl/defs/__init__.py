"""The Dagster layer: turns the plain pki/etl/security code into assets, checks and sensors."""
