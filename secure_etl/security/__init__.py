"""Secret files, keys and keyed hashing. No Dagster."""
