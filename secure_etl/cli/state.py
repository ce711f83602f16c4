"""What the commands that read the platform's state check first: where the state is
(a command that finds none says where it looked) and the Dagster home they read."""

from __future__ import annotations

import os
from pathlib import Path

from secure_etl.errors import UserError


def no_state_note(platform, config: Path | None) -> str | None:
    """One line saying where the state was looked for, when there is none at all
    (None: the state directory is there)."""
    from secure_etl.config import STATE_DIR_ENV, config_path_from_env

    state = platform.resolved_state_dir()
    if state.is_dir():
        return None
    if os.environ.get(STATE_DIR_ENV):
        source = f"${STATE_DIR_ENV}"
    else:
        source = f"state_dir of {config or config_path_from_env()}"
    what = "does not exist" if not state.exists() else "is not a directory"
    return (
        f"note: no state found: {state} ({source}) {what}; nothing has been issued or "
        "run with this config here yet"
    )


def check_dagster_home(settings: bool = True) -> None:
    """Refuse an unusable ``$DAGSTER_HOME`` (one line) before a command opens it:
    Dagster itself answers with a traceback. Unset or empty: nothing to check. With
    ``settings``, Dagster also judges its ``dagster.yaml`` (the instance is opened once
    and closed: only for commands that load Dagster anyway)."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return
    where = f"DAGSTER_HOME={home}"
    path = Path(home)
    if not path.is_absolute():
        raise UserError(f"{where}: not an absolute path; give the Dagster home's full path")
    if not path.exists():
        raise UserError(f"{where}: does not exist; create the directory or unset DAGSTER_HOME")
    if not path.is_dir():
        raise UserError(f"{where}: not a directory; point it at the Dagster home directory")
    yml = path / "dagster.yaml"
    if not yml.exists():
        return  # Dagster's defaults, stored under the home
    try:
        text = yml.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"{yml}: cannot read it: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise UserError(f"{yml}: not UTF-8 text; it must be Dagster's YAML settings") from None
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise UserError(f"{yml}: {line}{problem}") from None
    if data is not None and not isinstance(data, dict):
        raise UserError(f"{yml}: expected a mapping of Dagster settings at the top level")
    if settings:
        from secure_etl.defs.health import open_instance  # Dagster judges its settings

        open_instance(home).dispose()
