"""Pipeline assets raw/<p> -> hashed/<p> -> loaded/<p>, with lineage to the client certificate."""

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    AssetSpec,
    Backoff,
    FreshnessPolicy,
    HourlyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    ScheduleDefinition,
    asset,
    build_schedule_from_partitioned_job,
    define_asset_job,
    multi_asset,
    serialize_value,
)
from dagster import DefaultScheduleStatus as Status

from secure_etl.config import PipelineConfig, PlatformConfig
from secure_etl.defs.certificates import certificate_key
from secure_etl.defs.resources import bigquery_resource_key, resource_key
from secure_etl.etl import filters, quality, registry, storage
from secure_etl.etl.connector import ClientTls, Destination, Runtime
from secure_etl.etl.one_pass import run_one_pass
from secure_etl.etl.protect import ColumnCipher
from secure_etl.etl.retention import mark_loaded
from secure_etl.etl.transforms import (
    DropStep,
    EncryptStep,
    FilterStep,
    Lineage,
    MaskStep,
    Pseudonymiser,
    PseudonymiseStep,
    transform_partition,
)
from secure_etl.security.audit import AuditLog, file_digest, platform_audit_log, verify_log
from secure_etl.security.hmac_keys import load_hmac_key

LOADED_CHECKS = {
    "rows_reconcile": "raw rows = loaded + quarantined + filtered rows for the partition",
    "null_rate": "no column of the loaded partition exceeds the configured null rate",
    "unique_keys": "the key column has no duplicates in the loaded partition",
    "no_pii_leak": "no raw PII value appears in the hashed or loaded partition",
    "audit_chain": "the audit log's hash chain and signed checkpoints verify",
}


def stage_key(stage: str, pipeline: str) -> AssetKey:
    return AssetKey([stage, pipeline])


def pipeline_assets(platform: PlatformConfig, name: str) -> list:
    p = platform.pipelines[name]
    state = platform.resolved_state_dir()
    partitions = (
        None if p.incremental else HourlyPartitionsDefinition(start_date=p.partitions.start)
    )
    cert_resource = resource_key(p.client_certificate)
    bq_resource = bigquery_resource_key(name) if _needs_bigquery(p) else None
    load_resources = {cert_resource, bq_resource} - {None}
    pii = _pii_columns(p)
    audit = platform_audit_log(platform)
    crypto = storage.raw_crypto(platform)
    # Extract and load talk to other systems: retried (3 times, 5 minutes apart, backing
    # off, unless the pipeline says otherwise).
    io_retry = RetryPolicy(
        max_retries=p.retry.max_retries, delay=p.retry.delay_s, backoff=Backoff.EXPONENTIAL
    )

    @asset(
        key=stage_key("raw", name),
        group_name=name,
        partitions_def=partitions,
        deps=[certificate_key(p.client_certificate)],
        retry_policy=io_retry,
        required_resource_keys={cert_resource},
        kinds={"parquet"},
        description=f"Rows extracted from the {p.source.type} source, as received (holds PII; "
        "owner-only files).",
    )
    def raw(context: AssetExecutionContext) -> MaterializeResult:
        certificate = getattr(context.resources, cert_resource)
        certificate.ssl_context()  # fails early, with the path, if the certificate is unusable
        path = storage.partition_file(state, "raw", name, _file_key(context))
        tls = _client_tls(certificate)
        extra = {}
        if p.incremental:
            cursor = p.source.incremental
            previous = _high_water(context, stage_key("raw", name))
            since = previous - dt.timedelta(seconds=cursor.lag_s) if previous else None
            context.log.info(
                f"extracting rows with {cursor.cursor_column} >= {since or 'the beginning'} "
                f"(high-water mark {previous or 'none'}, lag {cursor.lag_s:g} s)"
            )
            rows, size = storage.write_partition_chunks(
                path, registry.source(p.source, Runtime(tls=tls)).chunks_since(since), crypto
            )
            high = storage.column_max(path, cursor.cursor_column, crypto) or previous
            extra = {
                "extracted_since": since.isoformat() if since else "the beginning",
                HIGH_WATER: high.isoformat() if high else "",
            }
        else:
            chunks = registry.source(p.source, Runtime(tls=tls)).chunks(context.partition_key)
            rows, size = storage.write_partition_chunks(path, chunks, crypto)
        context.log.info(f"extracted {rows} rows from {p.source.type} into {path}")
        _audit_extract(audit, certificate, context, p, name, _file_key(context), path, rows)
        return MaterializeResult(
            metadata={
                "rows": rows,
                "bytes": size,
                "client_certificate": p.client_certificate,
                **extra,
            }
        )

    @asset(
        key=stage_key("hashed", name),
        group_name=name,
        partitions_def=partitions,
        deps=[raw],
        kinds={"parquet"},
        description="Valid rows with PII columns replaced by keyed HMAC-SHA256 and lineage "
        "columns added; invalid rows go to quarantine.",
    )
    def hashed(context: AssetExecutionContext) -> MaterializeResult:
        partition = _file_key(context)
        steps, key_ids = _pseudonymise_steps(platform, p)
        out = storage.partition_file(state, "hashed", name, partition)
        qpath = storage.partition_file(state, "quarantine", name, partition)
        result = transform_partition(
            storage.partition_file(state, "raw", name, partition),
            out,
            qpath,
            p.key_column,
            steps,
            Lineage(context.run.run_id, p.version, dt.datetime.now(dt.UTC)),
            crypto=crypto,
        )
        if result.quarantined:
            context.log.warning(
                f"quarantined {result.quarantined} rows (no or duplicate key) in {qpath}"
            )
        _audit_transform(audit, context, name, partition, state, key_ids)
        return MaterializeResult(
            metadata=_hashed_metadata(out, result.rows, result.quarantined, key_ids)
        )

    @asset(
        key=stage_key("loaded", name),
        group_name=name,
        partitions_def=partitions,
        deps=[hashed],
        retry_policy=io_retry,
        required_resource_keys=load_resources,
        kinds={p.destination.type},
        freshness_policy=_freshness(platform),
        check_specs=[
            AssetCheckSpec(check, asset=stage_key("loaded", name), description=text)
            for check, text in LOADED_CHECKS.items()
        ],
        description=f"The hashed partition in {p.destination.type} table "
        f"{p.destination.table}; re-running a partition replaces it.",
    )
    def loaded(context: AssetExecutionContext) -> MaterializeResult:
        files = _file_key(context)
        certificate = getattr(context.resources, cert_resource)
        clients = getattr(context.resources, bq_resource).get_client if bq_resource else None
        target = registry.destination(
            p.destination, Runtime(state, _client_tls(certificate), clients)
        )
        hashed_file = storage.partition_file(state, "hashed", name, files)
        if p.incremental:  # this run's rows carry its id in the partition column
            partition = context.run.run_id
            rows = target.merge(partition, hashed_file, p.key_column)
            context.log.info(f"merged {rows} rows by {p.key_column} into {target.description}")
        else:
            partition = files
            rows = target.load(partition, hashed_file)
            context.log.info(f"loaded {rows} rows into {target.description}")
        _audit_load(audit, certificate, context, name, partition, hashed_file, target, rows)
        return MaterializeResult(
            metadata={"rows": rows, "destination": target.description},
            check_results=_loaded_checks(
                state,
                name,
                p,
                target,
                files,
                partition,
                pii,
                audit,
                crypto,
                _run_texts(context, name),
            ),
        )

    return [raw, hashed, loaded]


def one_pass_assets(platform: PlatformConfig, name: str) -> list:
    """raw/<p>, hashed/<p> and loaded/<p> made by one step that overlaps extraction,
    hashing and loading (``one_pass: true``): the same files, checks and lineage as the
    staged assets, but a failure anywhere retries the whole pass."""
    p = platform.pipelines[name]
    state = platform.resolved_state_dir()
    cert_resource = resource_key(p.client_certificate)
    bq_resource = bigquery_resource_key(name) if _needs_bigquery(p) else None
    pii = _pii_columns(p)
    audit = platform_audit_log(platform)
    crypto = storage.raw_crypto(platform)
    keys = {stage: stage_key(stage, name) for stage in ("raw", "hashed", "loaded")}

    @multi_asset(
        specs=[
            AssetSpec(
                keys["raw"],
                deps=[certificate_key(p.client_certificate)],
                group_name=name,
                kinds={"parquet"},
                description=f"Rows extracted from the {p.source.type} source, as received "
                "(holds PII; owner-only files).",
            ),
            AssetSpec(
                keys["hashed"],
                deps=[keys["raw"]],
                group_name=name,
                kinds={"parquet"},
                description="Valid rows with PII columns replaced by keyed HMAC-SHA256 and "
                "lineage columns added; invalid rows go to quarantine.",
            ),
            AssetSpec(
                keys["loaded"],
                deps=[keys["hashed"]],
                group_name=name,
                kinds={p.destination.type},
                freshness_policy=_freshness(platform),
                description=f"The hashed partition in {p.destination.type} table "
                f"{p.destination.table}; re-running a partition replaces it.",
            ),
        ],
        check_specs=[
            AssetCheckSpec(check, asset=keys["loaded"], description=text)
            for check, text in LOADED_CHECKS.items()
        ],
        name=f"{name.replace('-', '_')}_one_pass",
        partitions_def=HourlyPartitionsDefinition(start_date=p.partitions.start),
        retry_policy=RetryPolicy(
            max_retries=p.retry.max_retries, delay=p.retry.delay_s, backoff=Backoff.EXPONENTIAL
        ),
        required_resource_keys={cert_resource, bq_resource} - {None},
        can_subset=False,
    )
    def one_pass(context: AssetExecutionContext):
        partition = context.partition_key
        certificate = getattr(context.resources, cert_resource)
        certificate.ssl_context()  # fails early, with the path, if the certificate is unusable
        tls = _client_tls(certificate)
        clients = getattr(context.resources, bq_resource).get_client if bq_resource else None
        target = registry.destination(p.destination, Runtime(state, tls, clients))
        files = {s: storage.partition_file(state, s, name, partition) for s in storage.STAGES}
        steps, key_ids = _pseudonymise_steps(platform, p)
        result = run_one_pass(
            registry.source(p.source, Runtime(tls=tls)).chunks(partition),
            files["raw"],
            files["hashed"],
            files["quarantine"],
            p.key_column,
            steps,
            Lineage(context.run.run_id, p.version, dt.datetime.now(dt.UTC)),
            lambda batches, schema: target.load_batches(partition, batches, schema),
            crypto=crypto,
        )
        loaded = result.loaded
        _audit_extract(
            audit, certificate, context, p, name, partition, files["raw"], result.raw_rows
        )
        _audit_transform(audit, context, name, partition, state, key_ids)
        _audit_load(audit, certificate, context, name, partition, files["hashed"], target, loaded)
        context.log.info(
            f"one pass: extracted {result.raw_rows} rows from {p.source.type}, quarantined "
            f"{result.quarantined}, loaded {loaded} into {target.description}"
        )
        yield MaterializeResult(
            asset_key=keys["raw"],
            metadata={
                "rows": result.raw_rows,
                "bytes": result.raw_bytes,
                "client_certificate": p.client_certificate,
            },
        )
        yield MaterializeResult(
            asset_key=keys["hashed"],
            metadata=_hashed_metadata(files["hashed"], result.rows, result.quarantined, key_ids),
        )
        yield MaterializeResult(
            asset_key=keys["loaded"],
            metadata={"rows": loaded, "destination": target.description},
            check_results=_loaded_checks(
                state,
                name,
                p,
                target,
                partition,
                partition,
                pii,
                audit,
                crypto,
                _run_texts(context, name),
            ),
        )

    return [one_pass]


def _freshness(platform: PlatformConfig) -> FreshnessPolicy:
    """A loaded/ asset not updated within the limit shows as stale in the UI (and fails
    the health report's ``loaded_fresh`` check)."""
    limit = dt.timedelta(hours=platform.monitoring.loaded_max_lag_hours)
    return FreshnessPolicy.time_window(fail_window=limit, warn_window=limit / 2)


def _source_name(p: PipelineConfig) -> str:
    return registry.source(p.source).describe()


def _needs_bigquery(p: PipelineConfig) -> bool:
    return registry.destination(p.destination).needs_bigquery_client


def _audit_extract(audit, certificate, context, p, name, partition, raw, rows) -> None:
    audit.append(
        certificate.subject(),
        "extract",
        "/".join(stage_key("raw", name).path),
        partition,
        context.run.run_id,
        inputs={"source": _source_name(p)},
        outputs={"raw": file_digest(raw), "rows": str(rows)},
    )


def _audit_transform(audit, context, name: str, partition: str, state: Path, key_ids) -> None:
    files = {s: storage.partition_file(state, s, name, partition) for s in storage.STAGES}
    audit.append(
        "service:secure_etl",
        "transform",
        "/".join(stage_key("hashed", name).path),
        partition,
        context.run.run_id,
        inputs={"raw": file_digest(files["raw"])},
        outputs={
            stage: file_digest(path)
            for stage, path in files.items()
            if stage != "raw" and path.exists()
        },
        key_ids=list(key_ids),
    )


def _audit_load(audit, certificate, context, name, partition, hashed, target, rows) -> None:
    mark_loaded(hashed, target.description, rows, dt.datetime.now(dt.UTC))  # for retention
    audit.append(
        certificate.subject(),
        "load",
        "/".join(stage_key("loaded", name).path),
        partition,
        context.run.run_id,
        inputs={"hashed": file_digest(hashed)},
        outputs={"destination": target.description, "rows": str(rows)},
    )
    audit.checkpoint()  # every load ends with a signed head


def _pseudonymise_steps(platform: PlatformConfig, p: PipelineConfig):
    """The pipeline's transforms as steps, with their keys, and the key ids to show."""
    state = platform.resolved_state_dir()
    steps, key_ids = [], []
    for transform in p.transforms:
        if transform.type == "filter":
            steps.append(FilterStep(filters.parse(transform.where)))
        elif transform.type == "mask":
            steps.append(MaskStep(transform.columns, transform.style, transform.keep))
        elif transform.type == "drop":
            steps.append(DropStep(transform.columns))
        else:
            key = load_hmac_key(transform.key, platform.keys[transform.key], state)
            if transform.type == "pseudonymise":
                pseudonymiser = Pseudonymiser(key.secret)
                steps.append(
                    PseudonymiseStep(
                        transform.columns, pseudonymiser, key.key_id, transform.truncate
                    )
                )
            else:
                cipher = ColumnCipher(key.secret, key.key_id, transform.deterministic)
                steps.append(EncryptStep(transform.columns, cipher))
            key_ids.append(f"{key.key_id} ({key.fingerprint})")
    return steps, key_ids


def _hashed_metadata(path: Path, rows: int, quarantined: int, key_ids: list[str]) -> dict:
    preview = next(storage.iter_partition(path, batch_rows=5), None)
    return {
        "rows": rows,
        "quarantined_rows": quarantined,
        "filtered_rows": storage.read_counts(path).get("filtered", 0),
        "key_ids": ", ".join(key_ids) or "none",
        # Hashed data only: PII columns are pseudonyms here.
        "preview": MetadataValue.md(
            preview.to_pandas().to_markdown(index=False) if preview is not None else ""
        ),
    }


def _loaded_checks(
    state: Path,
    name: str,
    p: PipelineConfig,
    target: Destination,
    files: str,
    partition: str,
    pii: list[str],
    audit: AuditLog,
    crypto: storage.ParquetCrypto | None,
    event_log: Callable[[], Iterator[str]],
) -> list[AssetCheckResult]:
    """The checks of one load: ``files`` names the stage files, ``partition`` the rows
    in the destination (the hour, or an incremental run's id)."""
    raw = storage.partition_file(state, "raw", name, files)
    hashed = storage.partition_file(state, "hashed", name, files)
    qfile = storage.partition_file(state, "quarantine", name, files)
    raw_rows = storage.partition_rows(raw, crypto)
    raw_columns = set(storage.partition_schema(raw, crypto).names)
    quarantined = storage.partition_rows(qfile, crypto) if qfile.exists() else 0
    stats = target.stats(partition, p.key_column)
    loaded_rows = stats["rows"]

    filtered = storage.read_counts(hashed).get("filtered", 0)
    reconciled = raw_rows == loaded_rows + quarantined + filtered
    verdict = verify_log(audit)
    # Columns masked to null are null by design.
    nulled = {c for t in p.transforms if t.type == "mask" and t.style == "null" for c in t.columns}
    rates = {c: r for c, r in quality.null_rates(stats).items() if c not in nulled}
    worst = max(rates, key=rates.get) if rates else ""
    duplicates = stats["duplicate_keys"]
    loaded_columns = list(storage.partition_schema(hashed).names)
    leaks = quality.pii_leaks(
        lambda: storage.iter_partition(
            raw, columns=[c for c in pii if c in raw_columns], crypto=crypto
        ),
        pii,
        {
            "hashed": lambda: storage.iter_partition(hashed),
            "loaded": lambda: target.chunks(partition, loaded_columns),
        },
        {"event_log": event_log},
    )
    return [
        AssetCheckResult(
            check_name="rows_reconcile",
            passed=reconciled,
            description=f"raw {raw_rows} {'=' if reconciled else '!='} loaded {loaded_rows} "
            f"+ quarantined {quarantined} + filtered {filtered}",
            metadata={
                "raw": raw_rows,
                "loaded": loaded_rows,
                "quarantined": quarantined,
                "filtered": filtered,
            },
        ),
        AssetCheckResult(
            check_name="null_rate",
            passed=not worst or rates[worst] <= p.quality.max_null_rate,
            description=f"highest null rate {rates.get(worst, 0):.4f} in {worst or '-'} "
            f"(limit {p.quality.max_null_rate})",
            metadata={"max_null_rate": rates.get(worst, 0.0)},
        ),
        AssetCheckResult(
            check_name="unique_keys",
            passed=duplicates == 0,
            description=f"{duplicates} rows repeat a {p.key_column} already in the partition",
            metadata={"duplicate_rows": duplicates},
        ),
        AssetCheckResult(
            check_name="no_pii_leak",
            passed=not leaks,
            # Counts per column only: never the values themselves.
            description="no raw PII value found downstream"
            if not leaks
            else "raw PII values found in " + ", ".join(f"{c} ({n})" for c, n in leaks.items()),
            metadata={"leaked_values": sum(leaks.values())},
        ),
        AssetCheckResult(
            check_name="audit_chain",
            passed=verdict.ok,
            description=f"{verdict.records} records, {verdict.checkpoints} signed checkpoints "
            "verify"
            if verdict.ok
            else verdict.problem,
            metadata={"records": verdict.records, "checkpoints": verdict.checkpoints},
        ),
    ]


INCREMENTAL_FILES = "incremental"  # stage files of an incremental pipeline: the last run's
HIGH_WATER = "cursor_high_water"


def _file_key(context: AssetExecutionContext) -> str:
    return context.partition_key if context.has_partition_key else INCREMENTAL_FILES


def _high_water(context: AssetExecutionContext, key: AssetKey) -> dt.datetime | None:
    """The incremental state kept with the asset: the high-water mark its last
    materialization recorded."""
    event = context.instance.get_latest_materialization_event(key)
    materialization = event.asset_materialization if event else None
    entry = materialization.metadata.get(HIGH_WATER) if materialization else None
    return dt.datetime.fromisoformat(entry.value) if entry and entry.value else None


def _run_texts(context: AssetExecutionContext, name: str) -> Callable[[], Iterator[str]]:
    """Every string in the event log (log messages, metadata, errors) of this run and of
    the runs that made this partition's raw and hashed files."""

    def texts() -> Iterator[str]:
        runs = {context.run.run_id}
        partition = [context.partition_key] if context.has_partition_key else None
        for stage in ("raw", "hashed"):
            found = context.instance.fetch_materializations(
                AssetRecordsFilter(asset_key=stage_key(stage, name), asset_partitions=partition),
                limit=1,
            ).records
            runs.update(record.run_id for record in found)
        for run_id in sorted(runs):
            for entry in context.instance.all_logs(run_id):
                yield from _strings(json.loads(serialize_value(entry)))

    return texts


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _pii_columns(p: PipelineConfig) -> list[str]:
    """The columns the pipeline protects (pseudonymise, encrypt, mask, drop); for the
    source, also the PII it is known to hold (the demo's)."""
    columns = [c for t in p.transforms if t.type != "filter" for c in t.columns]
    columns += [c for c in registry.source(p.source).pii_columns if c not in columns]
    return columns


def _client_tls(certificate) -> ClientTls:
    return ClientTls(
        str(certificate.fullchain_path), str(certificate.privkey_path), certificate.ca_bundle
    )


def pipeline_job_name(pipeline: str) -> str:
    return f"{pipeline.replace('-', '_')}_etl"


def pipeline_job_and_schedule(platform: PlatformConfig, name: str, assets: list):
    p = platform.pipelines[name]
    job = define_asset_job(
        pipeline_job_name(name),
        selection=AssetSelection.assets(*assets),
        description=f"Extract, pseudonymise and load "
        f"{'what is new' if p.incremental else 'one partition'} of pipeline {name!r}.",
    )
    if p.incremental:
        schedule = ScheduleDefinition(
            job=job, cron_schedule=p.partitions.schedule, default_status=Status.RUNNING
        )
    else:
        schedule = build_schedule_from_partitioned_job(
            job, minute_of_hour=p.partitions.schedule_minute, default_status=Status.RUNNING
        )
    return job, schedule
