"""The checks of a loaded partition as plain functions. Each returns a ``CheckResult``
(passed, severity, a description with counts only, metadata as plain numbers); defs/
turns them into Dagster's ``AssetCheckResult``. No value of the data ever goes into a
result.

A new check of loaded/<p>: a function here returning a ``CheckResult``, its name and
text in ``check_names.LOADED_CHECKS`` (the check spec) and one line in ``loaded_checks``;
defs/pipelines.py passes every result on as it is. A statistic best gathered while the
rows stream through goes beside ``LengthTally`` in the step (``one_pass``,
``transforms``) and into the counts file the check reads."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa

from secure_etl.etl import pii_patterns, quality, storage
from secure_etl.security.audit import AuditLog
from secure_etl.security.audit_trail import verify_log

Severity = Literal["error", "warn"]
Chunks = Callable[[Sequence[str]], Iterable[pa.Table]]  # columns -> the partition's tables


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    description: str
    metadata: dict[str, int | float] = field(default_factory=dict)
    severity: Severity = "error"


@dataclass(frozen=True)
class StageFiles:
    """One partition's files: raw and quarantine (encrypted with ``crypto`` if set), hashed."""

    raw: Path | storage.StoredFile
    hashed: Path | storage.StoredFile
    quarantine: Path | storage.StoredFile
    crypto: storage.ParquetCrypto | None = None

    @classmethod
    def of(
        cls,
        state: Path | storage.Storage,
        pipeline: str,
        partition: str,
        crypto: storage.ParquetCrypto | None,
    ) -> StageFiles:
        """The files in ``state``, a ``Storage`` or a state directory (its local storage,
        where the files are plain paths)."""
        if isinstance(state, storage.Storage):
            files = [state.file(s, pipeline, partition) for s in ("raw", "hashed", "quarantine")]
            return cls(*files, crypto)

        def file(stage: str) -> Path:
            return storage.partition_file(state, stage, pipeline, partition)

        return cls(file("raw"), file("hashed"), file("quarantine"), crypto)


def rows_reconcile(files: StageFiles, loaded_rows: int) -> CheckResult:
    """Every raw row is loaded, quarantined or filtered out."""
    raw = storage.partition_rows(files.raw, files.crypto)
    quarantined = (
        storage.partition_rows(files.quarantine, files.crypto) if files.quarantine.exists() else 0
    )
    filtered = storage.read_counts(files.hashed).get("filtered", 0)
    reconciled = raw == loaded_rows + quarantined + filtered
    return CheckResult(
        "rows_reconcile",
        reconciled,
        f"raw {raw} {'=' if reconciled else '!='} loaded {loaded_rows} "
        f"+ quarantined {quarantined} + filtered {filtered}",
        {"raw": raw, "loaded": loaded_rows, "quarantined": quarantined, "filtered": filtered},
    )


def null_rate(stats: dict, limit: float, exempt: Iterable[str] = ()) -> CheckResult:
    """No column's share of nulls (from a destination's ``stats``) is above ``limit``;
    ``exempt`` columns (masked to null) are null by design."""
    skip = set(exempt)
    rates = {c: r for c, r in quality.null_rates(stats).items() if c not in skip}
    worst = max(rates, key=rates.get) if rates else ""
    return CheckResult(
        "null_rate",
        not worst or rates[worst] <= limit,
        f"highest null rate {rates.get(worst, 0):.4f} in {worst or '-'} (limit {limit})",
        {"max_null_rate": rates.get(worst, 0.0)},
    )


def unique_keys(stats: dict, key_column: str) -> CheckResult:
    """No two loaded rows of the partition share a key (from a destination's ``stats``)."""
    duplicates = stats["duplicate_keys"]
    return CheckResult(
        "unique_keys",
        duplicates == 0,
        f"{duplicates} rows repeat a {key_column} already in the partition",
        {"duplicate_rows": duplicates},
    )


def no_pii_leak(
    files: StageFiles,
    pii: Sequence[str],
    loaded: Chunks,
    texts: Mapping[str, Callable[[], Iterable[str]]] | None = None,
) -> CheckResult:
    """No raw value of a ``pii`` column appears in the hashed file, the loaded rows or
    the free ``texts`` (logs, metadata). The description counts per place, never values.

    The step that wrote the hashed file tallied the value lengths of every raw and hashed
    text column (``counts`` file): a hashed column none of whose lengths is that of a raw
    PII value holds none, and neither does its loaded copy, so only the other columns are
    read back, from the file and from the destination. Without a tally all are read."""
    raw_columns = set(storage.partition_schema(files.raw, files.crypto).names)
    present = [c for c in pii if c in raw_columns]
    columns = quality.text_columns(storage.partition_schema(files.hashed))
    tally = storage.read_counts(files.hashed).get("lengths", {})
    raw_lengths = None
    if tally and all(c in tally["raw"] for c in present):
        raw_lengths = {n for c in present for n in tally["raw"][c]}
        columns = [c for c in columns if raw_lengths & set(tally["hashed"].get(c, ()))]
    downstream: dict[str, quality.Tables] = {}
    if columns:
        downstream = {
            "hashed": lambda: storage.iter_partition(files.hashed, columns=columns),
            "loaded": lambda: loaded(columns),
        }
    leaks = quality.pii_leaks(
        lambda: storage.iter_partition(files.raw, columns=present, crypto=files.crypto),
        pii,
        downstream,
        texts,
        lengths=raw_lengths,
    )
    return CheckResult(
        "no_pii_leak",
        not leaks,
        "no raw PII value found downstream"
        if not leaks
        else "raw PII values found in " + ", ".join(f"{c} ({n})" for c, n in leaks.items()),
        {"leaked_values": sum(leaks.values())},
    )


def no_undeclared_pii(files: StageFiles, protected: Sequence[str]) -> CheckResult:
    """No loaded text column outside ``protected`` (declared PII and transformed columns)
    holds values that look like personal data, on a sample of the hashed partition."""
    skip = {*protected, *quality.GENERATED_COLUMNS}
    found = pii_patterns.personal_data_counts(storage.iter_partition(files.hashed), skip)
    return CheckResult(
        "no_undeclared_pii",
        not found,
        "no undeclared column looks like personal data"
        if not found
        else "values that look like personal data (e-mail, phone, card, IBAN) in undeclared "
        "columns: "
        + ", ".join(f"{c} ({n})" for c, n in sorted(found.items()))
        + "; declare them in pii: and transform them",
        {"suspect_values": sum(found.values()), "sampled_rows_max": pii_patterns.SAMPLE_ROWS},
    )


def audit_chain(audit: AuditLog) -> CheckResult:
    """The audit log's hash chain and signed checkpoints verify."""
    verdict = verify_log(audit)
    return CheckResult(
        "audit_chain",
        verdict.ok,
        f"{verdict.records} records, {verdict.checkpoints} signed checkpoints verify"
        if verdict.ok
        else verdict.problem,
        {"records": verdict.records, "checkpoints": verdict.checkpoints},
    )


def loaded_checks(
    files: StageFiles,
    stats: dict,
    loaded: Chunks,
    *,
    key_column: str,
    max_null_rate: float,
    nulled: Iterable[str],
    pii: Sequence[str],
    audit: AuditLog,
    texts: Mapping[str, Callable[[], Iterable[str]]] | None = None,
) -> list[CheckResult]:
    """Every check of LOADED_CHECKS for one load, in that order: ``stats`` and
    ``loaded`` are the destination's for the loaded partition."""
    return [
        rows_reconcile(files, stats["rows"]),
        null_rate(stats, max_null_rate, nulled),
        unique_keys(stats, key_column),
        no_pii_leak(files, pii, loaded, texts),
        no_undeclared_pii(files, pii),
        audit_chain(audit),
    ]
