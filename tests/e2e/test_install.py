"""A normal (non-editable) install works from any folder: the wheel holds everything a command
needs, and nothing points back into the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from dd_assets.testing.workflows import REPO

pytestmark = [pytest.mark.slow]


def test_wheel_install_materializes_the_quickstart_from_another_folder(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # No pip of its own (ensurepip's install took seconds): this pip installs into it.
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    py = venv / "bin" / "python"
    # The package itself, built and installed as a wheel (not editable); its dependencies are
    # the ones this test runs with, found through a .pth line instead of a second download.
    pip = [sys.executable, "-m", "pip", "--python", str(py)]
    subprocess.run([*pip, "install", "--quiet", "--no-deps", str(REPO)], check=True, timeout=600)
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "zz_dd_assets_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DD_ASSETS_CONFIG")} | {
        "DAGSTER_HOME": str(elsewhere / "home"),
        "DD_ASSETS_ROOT": str(elsewhere / "data"),
    }
    where = subprocess.run(
        [str(py), "-c", "import dd_assets; print(dd_assets.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=elsewhere,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(site)), f"dd_assets came from {where}, not the installed wheel"

    out = subprocess.run(
        [
            str(venv / "bin" / "dd-assets"),
            "materialize",
            str(REPO / "examples" / "quickstart.yaml"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=elsewhere,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tickets: 8/8 row groups, 2000 records" in out.stdout
    assert "Traceback" not in out.stderr
