"""`./.env`, read the way Dagster's own tools read it, so that `dd-assets`, `dd-assets ui` and a
bare `dagster dev` started in one folder see one environment: one DAGSTER_HOME (one instance, one
run history), one DD_ASSETS_ROOT, the same API keys.

Dagster's rule (`dagster dev`, `dagster-webserver`, `dagster-daemon`, `dg dev`): the `.env` of the
working directory is parsed by python-dotenv with `${VAR}` interpolation, and its values win over
exported ones. We apply it for the duration of a command and restore the environment after, so a
command called in-process (tests) leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from dotenv import dotenv_values

from dd_assets.cli.render import err_console
from dd_assets.errors import ConfigError

ENV_FILE = ".env"


@contextlib.contextmanager
def project_env() -> Iterator[None]:
    path = Path(ENV_FILE)
    if not path.is_file():
        yield
        return
    saved = dict(os.environ)
    # `${PWD}` in .env means this folder; a parent that is not a shell may pass a stale PWD.
    os.environ["PWD"] = os.getcwd()
    values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    home = values.get("DAGSTER_HOME")
    if home is not None and not Path(home).is_absolute():
        os.environ.clear()
        os.environ.update(saved)
        raise ConfigError(
            f"{path.resolve()} sets DAGSTER_HOME to {home!r}, a relative path, which Dagster's"
            " tools refuse; write `DAGSTER_HOME=${PWD}/.dagster_home`"
        )
    exported = saved.get("DAGSTER_HOME")
    if home and exported and Path(exported).resolve() != Path(home).resolve():
        err_console.print(
            f"note: DAGSTER_HOME={home} from ./{ENV_FILE} replaces the exported"
            f" DAGSTER_HOME={exported}, as it does for `dagster dev` in this folder",
            markup=False,
            highlight=False,
        )
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
