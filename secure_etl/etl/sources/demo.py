"""A synthetic customer dataset with PII, generated deterministically per partition.

The same (seed, partition) always gives the same rows, so runs, tests and benchmarks
can be compared. A share of rows is deliberately bad (no customer id) so the quarantine
path is exercised by the demo itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator

import numpy as np
import pandas as pd

from secure_etl.config import DemoSource
from secure_etl.demo.schema import PII_COLUMNS, SCHEMA
from secure_etl.etl.connector import Chunk, Runtime, partition_start

FIRST = [
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Ken",
    "Radia",
    "Tim",
    "Margaret",
    "John",
    "Lynn",
    "Dennis",
    "Shafi",
    "Whitfield",
    "Hedy",
    "Leslie",
]
LAST = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Thompson",
    "Perlman",
    "Berners-Lee",
    "Hamilton",
    "McCarthy",
    "Conway",
    "Ritchie",
    "Goldwasser",
    "Diffie",
    "Lamarr",
    "Lamport",
]
DOMAINS = ["example.com", "example.org", "example.net", "mail.example"]
COUNTRIES = ["DE", "FR", "NL", "GB", "US", "CA", "SE", "ES", "IT", "PL"]
ID_SPACE_PER_PARTITION = 10_000_000


def generate_partition(
    partition_key: str, rows: int, seed: int = 0, bad_row_rate: float = 0.0
) -> pd.DataFrame:
    start = partition_start(partition_key)
    digest = hashlib.sha256(f"{seed}/{partition_key}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    hour_index = int(start.timestamp()) // 3600
    ids = pd.array(
        hour_index * ID_SPACE_PER_PARTITION + np.arange(rows, dtype=np.int64), dtype="Int64"
    )
    first = np.array(FIRST)[rng.integers(0, len(FIRST), rows)]
    last = np.array(LAST)[rng.integers(0, len(LAST), rows)]
    serial = rng.integers(0, 1_000_000, rows)
    domain = np.array(DOMAINS)[rng.integers(0, len(DOMAINS), rows)]
    local = np.char.lower(np.char.add(np.char.add(first, "."), last))
    email = [f"{a}{b}@{c}" for a, b, c in zip(local, serial, domain, strict=True)]
    phone = [f"+49 30 {n:07d}" for n in rng.integers(0, 10_000_000, rows)]
    offsets = rng.integers(0, 3600 * 1_000_000, rows)
    frame = pd.DataFrame(
        {
            "customer_id": ids,
            "full_name": np.char.add(np.char.add(first, " "), last),
            "email": email,
            "phone": phone,
            "country": np.array(COUNTRIES)[rng.integers(0, len(COUNTRIES), rows)],
            "signup_at": pd.Timestamp(start) + pd.to_timedelta(offsets, unit="us"),
            "amount_eur": np.round(rng.gamma(2.0, 40.0, rows), 2),
        }
    ).astype(SCHEMA)
    bad = rng.random(rows) < bad_row_rate
    frame.loc[bad, "customer_id"] = pd.NA
    return frame


class DemoReader:
    """The demo source: generated in the process, no connection to verify."""

    pii_columns = PII_COLUMNS

    def __init__(self, config: DemoSource, runtime: Runtime | None = None) -> None:
        self.config = config

    def describe(self) -> str:
        return f"demo(seed={self.config.seed})"

    def known_columns(self) -> set[str]:
        return self.config.known_columns()

    def chunks(self, partition: str) -> Iterator[Chunk]:
        c = self.config
        yield generate_partition(partition, c.rows_per_partition, c.seed, c.bad_row_rate)

    def chunks_since(self, since: dt.datetime | None) -> Iterator[Chunk]:
        raise ValueError(f"{self.describe()}: the source is not incremental")
