"""secure_etl: secure ETL with automated certificate management, on Dagster."""
