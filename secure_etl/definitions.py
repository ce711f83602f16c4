"""The code location: everything is built from the platform config ($SECURE_ETL_CONFIG)."""

from secure_etl.config import load_config
from secure_etl.defs.build import build_definitions

defs = build_definitions(load_config())
