"""Sources, transforms and destinations on pandas / pyarrow. No Dagster."""
