"""Pipeline assets raw/<p> -> hashed/<p> -> loaded/<p>, with lineage to the client certificate."""

import contextlib
import datetime as dt
import gc
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
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
    TimeWindowPartitionsDefinition,
    build_schedule_from_partitioned_job,
    define_asset_job,
    multi_asset,
    serialize_value,
)
from dagster import DefaultScheduleStatus as Status

from secure_etl.config import Destination as DestinationConfig
from secure_etl.config import PipelineConfig, PlatformConfig
from secure_etl.defs.names import certificate_key, kind_tags, pipeline_job_name, stage_key
from secure_etl.defs.resources import PipelineResources, step_certificate
from secure_etl.etl import checks, filters, registry, storage
from secure_etl.etl.check_names import LOADED_CHECKS
from secure_etl.etl.checks import StageFiles
from secure_etl.etl.connector import Destination, Runtime
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
from secure_etl.security.audit import AuditLog
from secure_etl.security.audit_trail import platform_audit_log
from secure_etl.security.hmac_keys import load_hmac_key

SEVERITY = {"error": AssetCheckSeverity.ERROR, "warn": AssetCheckSeverity.WARN}


@dataclass(frozen=True)
class PipelineSpecs:
    """What raw/<p>, hashed/<p> and loaded/<p> are, whichever factory makes them."""

    raw: AssetSpec
    hashed: AssetSpec
    loaded: AssetSpec
    checks: list[AssetCheckSpec]


def pipeline_specs(platform: PlatformConfig, name: str) -> PipelineSpecs:
    """The pipeline's three assets and the checks of loaded/<p>, for either factory."""
    p = platform.pipelines[name]
    raw = AssetSpec(
        stage_key("raw", name),
        deps=[certificate_key(p.client_certificate)],
        group_name=name,
        kinds={"parquet"},
        description=f"Rows extracted from the {p.source.type} source, as received (holds PII; "
        "owner-only files).",
    )
    hashed = AssetSpec(
        stage_key("hashed", name),
        deps=[raw.key],
        group_name=name,
        kinds={"parquet"},
        description="Valid rows with PII columns replaced by keyed HMAC-SHA256 and lineage "
        "columns added; invalid rows go to quarantine.",
    )
    loaded = AssetSpec(
        stage_key("loaded", name),
        deps=[hashed.key],
        group_name=name,
        kinds={p.destination.type},
        freshness_policy=_freshness(platform),
        description=f"The hashed partition in {p.destination.type} table "
        f"{p.destination.table}; re-running a partition replaces it.",
    )
    checks = [
        AssetCheckSpec(check, asset=loaded.key, description=text)
        for check, text in LOADED_CHECKS.items()
    ]
    return PipelineSpecs(raw, hashed, loaded, checks)


def destination_pool(target: DestinationConfig) -> str:
    """The Dagster concurrency pool of the steps that load into ``target``'s database: the
    instance's ``concurrency: pools`` setting caps how many load into it at once, across
    runs and workers."""
    if target.type == "postgres":
        where = f"{target.host}:{target.port}/{target.dbname}"
    elif target.type == "bigquery":
        where = f"{target.project}.{target.dataset}"
    else:
        where = target.path
    return f"load/{target.type}/{where}"


def _io_retry(p: PipelineConfig) -> RetryPolicy:
    """Extract and load talk to other systems: retried (3 times, 5 minutes apart, backing
    off, unless the pipeline says otherwise)."""
    return RetryPolicy(
        max_retries=p.retry.max_retries, delay=p.retry.delay_s, backoff=Backoff.EXPONENTIAL
    )


def partitions_definition(p: PipelineConfig) -> TimeWindowPartitionsDefinition | None:
    """The pipeline's time partitions: hourly, or one per interval of its cron (None:
    incremental runs)."""
    if p.partitions.type == "incremental":
        return None
    if p.partitions.type == "cron":
        return TimeWindowPartitionsDefinition(
            cron_schedule=p.partitions.cron, start=p.partitions.start, fmt="%Y-%m-%d-%H:%M"
        )
    return HourlyPartitionsDefinition(start_date=p.partitions.start)


def _source_runtime(tls, partitions: TimeWindowPartitionsDefinition | None) -> Runtime:
    """What the source is given: the certificate and the partitions' own windows."""
    if partitions is None:
        return Runtime(tls=tls)

    def window(key: str) -> tuple[dt.datetime, dt.datetime]:
        span = partitions.time_window_for_partition_key(key)
        return span.start.astimezone(dt.UTC), span.end.astimezone(dt.UTC)

    return Runtime(tls=tls, partition_window=window)


@contextlib.contextmanager
def _data_step() -> Iterator[None]:
    """A step that moves a partition's rows: the objects that exist when it starts
    (Dagster's and the code location's, several hundred thousand in a run worker) are left
    out of the cyclic garbage collector's passes until it ends. Each full pass walked all
    of them while the rows' batches were made and freed (0.2 s a million-row
    materialization against 0.06 s in the bare pass, benchmarks/etl_throughput.py).
    Nothing is lost: they are reference-counted as before, and handed back to the
    collector (its oldest generation) when the step ends, whether it fails or not."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def pipeline_assets(platform: PlatformConfig, name: str) -> list:
    """raw/<p>, hashed/<p> and loaded/<p> as three steps (extract and load retried)."""
    p = platform.pipelines[name]
    state = platform.resolved_state_dir()
    store = storage.storage_for(platform)
    partitions = partitions_definition(p)
    specs = pipeline_specs(platform, name)
    resources = PipelineResources.of(name, p, platform)
    pii = _pii_columns(p)
    audit = platform_audit_log(platform)
    crypto = storage.raw_crypto(platform)

    @multi_asset(
        specs=[specs.raw],
        name=specs.raw.key.to_python_identifier(),
        partitions_def=partitions,
        retry_policy=_io_retry(p),
        required_resource_keys=resources.extract_keys,
    )
    def raw(context: AssetExecutionContext) -> MaterializeResult:
        with (
            _data_step(),
            step_certificate(platform, resources.certificate(context)) as certificate,
        ):
            certificate.ssl_context()  # fails early, with the path, if the certificate is unusable
            path = store.file("raw", name, _file_key(context))
            tls = certificate  # connections present it and verify servers with its roots
            extra = {}
            if p.incremental:
                cursor = p.source.incremental_cursor()
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
                source = registry.source(p.source, _source_runtime(tls, partitions))
                chunks = source.chunks(context.partition_key)
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

    @multi_asset(
        specs=[specs.hashed],
        name=specs.hashed.key.to_python_identifier(),
        partitions_def=partitions,
    )
    def hashed(context: AssetExecutionContext) -> MaterializeResult:
        with _data_step():
            partition = _file_key(context)
            steps, key_ids = _pseudonymise_steps(platform, p)
            out = store.file("hashed", name, partition)
            qpath = store.file("quarantine", name, partition)
            result = transform_partition(
                store.file("raw", name, partition),
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
            _audit_transform(audit, context, name, partition, store, key_ids)
            return MaterializeResult(
                metadata=_hashed_metadata(out, result.rows, result.quarantined, key_ids)
            )

    @multi_asset(
        specs=[specs.loaded],
        check_specs=specs.checks,
        name=specs.loaded.key.to_python_identifier(),
        partitions_def=partitions,
        retry_policy=_io_retry(p),
        required_resource_keys=resources.keys,
        pool=destination_pool(p.destination),
    )
    def loaded(context: AssetExecutionContext) -> MaterializeResult:
        files = _file_key(context)
        with (
            _data_step(),
            step_certificate(platform, resources.certificate(context)) as certificate,
        ):
            clients = resources.bigquery_clients(context)
            target = registry.destination(p.destination, Runtime(state, certificate, clients))
            hashed_file = store.file("hashed", name, files)
            if p.incremental:  # this run's rows carry its id in the partition column
                partition = context.run.run_id
                with storage.local_copy(hashed_file) as local:
                    rows = target.merge(partition, local, p.key_column)
                context.log.info(f"merged {rows} rows by {p.key_column} into {target.description}")
            else:
                partition = files
                rows = _load(target, partition, hashed_file)
                context.log.info(f"loaded {rows} rows into {target.description}")
            _mark_for_retention(hashed_file, target, rows)
            _audit_load(audit, certificate, context, name, partition, hashed_file, target, rows)
            return MaterializeResult(
                metadata={"rows": rows, "destination": target.description},
                check_results=_check_results(
                    StageFiles.of(store, name, files, crypto),
                    p,
                    target,
                    partition,
                    pii,
                    audit,
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
    store = storage.storage_for(platform)
    specs = pipeline_specs(platform, name)
    resources = PipelineResources.of(name, p, platform)
    pii = _pii_columns(p)
    audit = platform_audit_log(platform)
    crypto = storage.raw_crypto(platform)
    partitions = partitions_definition(p)

    @multi_asset(
        specs=[specs.raw, specs.hashed, specs.loaded],
        check_specs=specs.checks,
        name=f"{name.replace('-', '_')}_one_pass",
        partitions_def=partitions,
        retry_policy=_io_retry(p),
        required_resource_keys=resources.keys,
        can_subset=False,
        pool=destination_pool(p.destination),
    )
    def one_pass(context: AssetExecutionContext):
        partition = context.partition_key
        with (
            _data_step(),
            step_certificate(platform, resources.certificate(context)) as certificate,
        ):
            certificate.ssl_context()  # fails early, with the path, if the certificate is unusable
            tls = certificate  # connections present it and verify servers with its roots
            clients = resources.bigquery_clients(context)
            target = registry.destination(p.destination, Runtime(state, tls, clients))
            files = StageFiles.of(store, name, partition, crypto)
            steps, key_ids = _pseudonymise_steps(platform, p)
            result = run_one_pass(
                registry.source(p.source, _source_runtime(tls, partitions)).chunks(partition),
                files.raw,
                files.hashed,
                files.quarantine,
                p.key_column,
                steps,
                Lineage(context.run.run_id, p.version, dt.datetime.now(dt.UTC)),
                lambda batches, schema: target.load_batches(partition, batches, schema),
                crypto=crypto,
            )
            loaded = result.loaded
            _mark_for_retention(files.hashed, target, loaded)
            _audit_extract(
                audit, certificate, context, p, name, partition, files.raw, result.raw_rows
            )
            _audit_transform(audit, context, name, partition, store, key_ids)
            _audit_load(audit, certificate, context, name, partition, files.hashed, target, loaded)
            context.log.info(
                f"one pass: extracted {result.raw_rows} rows from {p.source.type}, quarantined "
                f"{result.quarantined}, loaded {loaded} into {target.description}"
            )
            yield MaterializeResult(
                asset_key=specs.raw.key,
                metadata={
                    "rows": result.raw_rows,
                    "bytes": result.raw_bytes,
                    "client_certificate": p.client_certificate,
                },
            )
            yield MaterializeResult(
                asset_key=specs.hashed.key,
                metadata=_hashed_metadata(files.hashed, result.rows, result.quarantined, key_ids),
            )
            yield MaterializeResult(
                asset_key=specs.loaded.key,
                metadata={"rows": loaded, "destination": target.description},
                check_results=_check_results(
                    files, p, target, partition, pii, audit, _run_texts(context, name)
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


def _audit_extract(audit, certificate, context, p, name, partition, raw, rows) -> None:
    audit.append(
        certificate.subject(),
        "extract",
        "/".join(stage_key("raw", name).path),
        partition,
        context.run.run_id,
        inputs={"source": _source_name(p), "client_certificate": certificate.serial()},
        outputs={"raw": storage.as_file(raw).digest(), "rows": str(rows)},
    )


def _audit_transform(
    audit, context, name: str, partition: str, store: storage.Storage, key_ids
) -> None:
    files = {s: store.file(s, name, partition) for s in storage.STAGES}
    audit.append(
        "service:secure_etl",
        "transform",
        "/".join(stage_key("hashed", name).path),
        partition,
        context.run.run_id,
        inputs={"raw": files["raw"].digest()},
        outputs={
            stage: path.digest()
            for stage, path in files.items()
            if stage != "raw" and path.exists()
        },
        key_ids=list(key_ids),
    )


def _load(target: Destination, partition: str, hashed: storage.StoredFile) -> int:
    """Load a hashed file: a local one by its path (a destination may read it itself),
    one in a bucket streamed batch by batch."""
    if hashed.local_path is not None:
        return target.load(partition, hashed.local_path)
    return target.load_batches(
        partition, storage.iter_partition(hashed), storage.partition_schema(hashed)
    )


def _mark_for_retention(hashed: storage.StoredFile, target: Destination, rows: int) -> None:
    """Record the successful load beside the hashed file: the retention job deletes the
    partition's raw and quarantined files once this is older than the grace period."""
    mark_loaded(hashed, target.description, rows, dt.datetime.now(dt.UTC))


def _audit_load(audit, certificate, context, name, partition, hashed, target, rows) -> None:
    audit.append(
        certificate.subject(),
        "load",
        "/".join(stage_key("loaded", name).path),
        partition,
        context.run.run_id,
        inputs={
            "hashed": storage.as_file(hashed).digest(),
            "client_certificate": certificate.serial(),
        },
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


def _hashed_metadata(
    path: storage.StoredFile, rows: int, quarantined: int, key_ids: list[str]
) -> dict:
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


def _check_results(
    files: StageFiles,
    p: PipelineConfig,
    target: Destination,
    partition: str,
    pii: list[str],
    audit: AuditLog,
    event_log: Callable[[], Iterator[str]],
) -> list[AssetCheckResult]:
    """The checks of one load, as Dagster results: ``files`` are the stage files,
    ``partition`` the rows in the destination (the hour, or an incremental run's id)."""
    nulled = [c for t in p.transforms if t.type == "mask" and t.style == "null" for c in t.columns]
    results = checks.loaded_checks(
        files,
        target.stats(partition, p.key_column),
        lambda columns: target.chunks(partition, columns),
        key_column=p.key_column,
        max_null_rate=p.quality.max_null_rate,
        nulled=nulled,
        pii=pii,
        audit=audit,
        texts={"event_log": event_log},
    )
    return [
        AssetCheckResult(
            check_name=r.name,
            passed=r.passed,
            description=r.description,
            metadata=r.metadata,
            severity=SEVERITY[r.severity],
        )
        for r in results
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
    """The columns the pipeline protects (pseudonymise, encrypt, mask, drop), then the
    PII it declares or its source's schema marks."""
    columns = [c for t in p.transforms if t.type != "filter" for c in t.columns]
    columns += [c for c in p.declared_pii() if c not in columns]
    return columns


def pipeline_job_and_schedule(platform: PlatformConfig, name: str, assets: list):
    p = platform.pipelines[name]
    job = define_asset_job(
        pipeline_job_name(name),
        selection=AssetSelection.assets(*assets),
        tags=kind_tags("pipeline"),
        description=f"Extract, pseudonymise and load "
        f"{'what is new' if p.incremental else 'one partition'} of pipeline {name!r}.",
    )
    if p.incremental:
        schedule = ScheduleDefinition(
            job=job, cron_schedule=p.partitions.schedule, default_status=Status.RUNNING
        )
    elif p.partitions.type == "cron":  # each partition as soon as it ends
        schedule = build_schedule_from_partitioned_job(job, default_status=Status.RUNNING)
    else:
        schedule = build_schedule_from_partitioned_job(
            job, minute_of_hour=p.partitions.schedule_minute, default_status=Status.RUNNING
        )
    return job, schedule
