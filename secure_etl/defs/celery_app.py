"""The Celery app that runs secure_etl's steps (``executor: {type: celery}``).

On each worker machine, with that machine's own platform config, state directory and
Dagster instance (``DAGSTER_HOME``) in the environment::

    celery -A secure_etl.defs.celery_app worker -Q dagster --concurrency 1

The broker's and result backend's URLs are read from the variables the config's
``executor`` names. Importing this module builds the app: only workers import it.
"""

from __future__ import annotations

import os

from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from secure_etl.config import CONFIG_ENV, load_config
from secure_etl.defs.engine import celery_settings
from secure_etl.errors import UserError


def _url(variable: str) -> str:
    url = os.environ.get(variable, "").strip()
    if not url:
        raise UserError(f"a secure_etl Celery worker needs the broker's URL in ${variable}")
    return url


_config = load_config().executor
if _config.type != "celery":
    raise UserError(f"a Celery worker needs `executor: {{type: celery}}` in ${CONFIG_ENV}'s file")

app = make_app(
    {
        "broker": _url(_config.broker_env),
        "backend": _url(_config.backend_env),
        "config_source": celery_settings(_config),
    }
)
execute_plan = create_task(app)
