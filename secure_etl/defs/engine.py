"""The executor of the pipeline jobs: Dagster's multiprocess one on the run's machine, or
Celery workers on other machines (``executor: {type: celery}``, see celery_app.py)."""

from __future__ import annotations

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor

from secure_etl.config import CeleryExecutor, Executor
from secure_etl.errors import UserError


def celery_settings(config: CeleryExecutor) -> dict:
    """Celery settings shared by the run that submits steps and the workers that run them.
    Tasks are acknowledged when they end: a step whose worker is killed goes back to the
    queue for another worker (at once with RabbitMQ; after ``redeliver_after_s`` with
    Redis, which cannot tell a dead worker from a slow one)."""
    return {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,  # a worker takes one step at a time
        "broker_transport_options": {"visibility_timeout": config.redeliver_after_s},
        "result_expires": 24 * 3600,
    }


def executor_for(config: Executor) -> ExecutorDefinition:
    """The executor of the jobs that do not choose their own (the pipelines'; the
    certificate jobs run in the run's process, renewals on the workers with Celery)."""
    if config.type == "celery":
        try:
            from dagster_celery import celery_executor
        except ImportError as missing:
            raise UserError(
                "executor: {type: celery} needs dagster-celery: pip install 'secure_etl[celery]'"
            ) from missing
        return celery_executor.configured(
            {
                "broker": {"env": config.broker_env},
                "backend": {"env": config.backend_env},
                "config_source": celery_settings(config),
            },
            name="celery",
        )
    if config.type == "in_process":
        return in_process_executor
    if config.max_concurrent is None:
        return multiprocess_executor
    return multiprocess_executor.configured(
        {"max_concurrent": config.max_concurrent}, name="multiprocess"
    )
