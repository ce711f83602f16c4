"""Transform throughput per column kind, ours against a naive per-value loop, one core.

    .venv/bin/python benchmarks/transform_throughput.py [--values 1000000]

Kinds: HMAC-SHA256 (pseudonymise), AES-SIV (deterministic encryption), AES-GCM
(randomized encryption), mask (keep the last 4). "ours" is the code the pipelines run
on an Arrow column; "naive" is the per-value style it replaces (a new HMAC or cipher
object per value, Python string slicing). Then the whole transform of a partition
(quarantine, pseudonymise 3 PII columns, lineage columns, Parquet in and out) in
microseconds per PII value. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV  # noqa: E402

from secure_etl.etl import storage  # noqa: E402
from secure_etl.etl.hmac_column import hmac_column  # noqa: E402
from secure_etl.etl.hmac_values import key_pads  # noqa: E402
from secure_etl.etl.protect import ColumnCipher, mask_column  # noqa: E402
from secure_etl.etl.sources.demo import generate_partition  # noqa: E402
from secure_etl.etl.transforms import (  # noqa: E402
    Lineage,
    Pseudonymiser,
    PseudonymiseStep,
    transform_partition,
)

KEY = bytes(range(32))


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def naive_hmac(values: list[str]) -> list[str]:
    return [hmac.new(KEY, v.encode(), hashlib.sha256).hexdigest() for v in values]


def naive_siv(values: list[str]) -> list[bytes]:
    return [AESSIV(KEY * 2).encrypt(v.encode(), [b"c"]) for v in values]


def naive_gcm(values: list[str]) -> list[bytes]:
    out = []
    for v in values:
        nonce = os.urandom(12)
        out.append(nonce + AESGCM(KEY).encrypt(nonce, v.encode(), b"c"))
    return out


def naive_mask(values: list[str]) -> list[str]:
    return ["****" + v[-4:] if len(v) > 4 else "****" for v in values]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=1_000_000)
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the target says

    values = [f"user{i}@mail{i % 9973}.example.com" for i in range(args.values)]
    column = pa.array(values, pa.string())
    pads = key_pads(KEY)
    kinds = {
        "hmac": (lambda: hmac_column(pads, column), lambda: naive_hmac(values)),
        "aes_siv": (
            lambda: ColumnCipher(KEY, "k", True).column(column, "c"),
            lambda: naive_siv(values),
        ),
        "aes_gcm": (
            lambda: ColumnCipher(KEY, "k", False).column(column, "c"),
            lambda: naive_gcm(values),
        ),
        "mask": (lambda: mask_column(column, "keep_last", 4), lambda: naive_mask(values)),
    }
    figures: dict[str, float | int] = {"values": args.values}
    print(f"{args.values} values, one core")
    print(f"{'kind':<10}{'ours values/s':>16}{'naive values/s':>16}{'ratio':>8}")
    for kind, (ours, naive) in kinds.items():
        ours_rate = args.values / _timed(ours)
        naive_rate = args.values / _timed(naive)
        figures[f"{kind}_values_per_s"] = round(ours_rate)
        figures[f"{kind}_naive_values_per_s"] = round(naive_rate)
        figures[f"{kind}_ratio_vs_naive"] = round(ours_rate / naive_rate, 2)
        print(f"{kind:<10}{ours_rate:>16,.0f}{naive_rate:>16,.0f}{ours_rate / naive_rate:>8.2f}")

    rows = args.values // 3
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.parquet"
        storage.write_partition(raw, generate_partition("2026-03-01-10:00", rows, seed=1))
        step = PseudonymiseStep(["full_name", "email", "phone"], Pseudonymiser(KEY), "k")
        lineage = Lineage("bench", "1", dt.datetime.now(dt.UTC))
        seconds = _timed(
            lambda: transform_partition(
                raw,
                Path(tmp) / "h.parquet",
                Path(tmp) / "q.parquet",
                "customer_id",
                [step],
                lineage,
                workers=1,
            )
        )
    per_value = seconds / (rows * 3) * 1e6
    figures["transform_rows"] = rows
    figures["transform_us_per_pii_value"] = round(per_value, 3)
    print(f"whole transform, {rows} rows x 3 PII columns: {per_value:.3f} us per PII value")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
