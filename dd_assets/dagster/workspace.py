"""The workspace file `dd-assets ui` hands `dagster dev`: the code location under its pinned name
(names.LOCATION_NAME), as the repository's workspace.yaml declares it, so that runs the CLI
records as coming from that location are found (and re-executable) in either UI. `dagster dev -m`
cannot name a location, hence a file; it is written into DAGSTER_HOME, next to the instance."""

from __future__ import annotations

from pathlib import Path

import yaml

from dd_assets.dagster.names import CODE_LOCATION_ATTRIBUTE, CODE_LOCATION_MODULE, LOCATION_NAME
from dd_assets.store.atomic import atomic_write_bytes

WORKSPACE_FILE = "dd-assets-workspace.yaml"


def workspace() -> dict:
    return {
        "load_from": [
            {
                "python_module": {
                    "module_name": CODE_LOCATION_MODULE,
                    "attribute": CODE_LOCATION_ATTRIBUTE,
                    "location_name": LOCATION_NAME,
                }
            }
        ]
    }


def write_workspace(home: str | Path) -> Path:
    path = Path(home) / WORKSPACE_FILE
    text = "# Written by `dd-assets ui` for `dagster dev -w`.\n" + yaml.safe_dump(
        workspace(), sort_keys=False
    )
    if not path.is_file() or path.read_text() != text:
        atomic_write_bytes(path, text.encode())
    return path
