"""The Dagster UI as a person sees it: a workflow materialized by `dd-assets materialize` (in
this process: cli.main), served by `dd-assets ui` (webserver + daemon), driven in a real headless
Chromium. The asset page must show the stage description, every row group as a materialized
partition, a partition's materialization metadata (rows, preview of the rows actually on disk),
and on its Checks tab the passing results that `dd-assets check` and the materialize runs
recorded (the row-group check per partition). One `dd-assets ui` serves both tests.

Screenshots go to $DD_ASSETS_ARTIFACTS/ui/ (default: test-artifacts/ui/ in the repo). Needs
Debian's chromium (`apt-get install -y --no-install-recommends chromium chromium-driver`) and the
`playwright` package from the dev extra; without them the test fails and says how to install."""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from dd_assets import cli
from dd_assets.config import load_workflow
from dd_assets.runners.checks import checks_for
from dd_assets.runners.plan import plan_workflow
from dd_assets.testing.workflows import (
    BIN,
    REPO,
    batch_files,
    isolated_env,
    people_config,
    serving,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.browser]

WORKFLOW = "uiwf"
STAGE = "people"
DESCRIPTION = "People sampled for the browser test."
ROW_GROUPS = 3
ROWS_PER_GROUP = 100
TIMEOUT_MS = 30_000

# Flags that work here as root, headless, on a closed network: no sandbox (root), no GPU, and no
# background traffic (component updates, sync, QUIC probes) that would only time out.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

INSTALL_HINT = (
    "install Debian's chromium with `apt-get install -y --no-install-recommends chromium"
    " chromium-driver` (as .ci/run does), or point $DD_ASSETS_CHROMIUM at a Chromium binary"
)


@pytest.fixture(scope="module")
def chromium() -> str:
    """Checked before the slow setup: a missing browser fails at once, saying how to install."""
    _playwright()
    path = os.environ.get("DD_ASSETS_CHROMIUM") or shutil.which("chromium")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"no Chromium found for the browser UI test: {INSTALL_HINT}", pytrace=False)
    return path


def _playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the browser UI test needs the `playwright` package: `.venv/bin/pip install -e"
            " '.[dev]'` (it drives the system Chromium; no `playwright install` needed)",
            pytrace=False,
        )
    return sync_playwright


def artifacts_dir() -> Path:
    root = os.environ.get("DD_ASSETS_ARTIFACTS")
    out = (Path(root) if root else REPO / "test-artifacts") / "ui"
    out.mkdir(parents=True, exist_ok=True)
    return out


class UI:
    def __init__(self, url: str, log: Path, data_root: Path, workflow: Path, report: Path):
        self.url = url
        self.log = log
        self.data_root = data_root
        self.workflow = workflow  # uiwf: the asset page test's
        self.report = report  # `dd-assets report` of shop: the profile test's

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]


@pytest.fixture(scope="module")
def ui(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:
    """One `dd-assets ui` for both tests (starting it is most of each test's time), on a folder
    of two workflows (one code location): uiwf materialized and checked, shop materialized and
    reported, each by the `dd-assets` command a user runs. (After `chromium`: a missing browser
    fails before the slow setup.)"""
    tmp = tmp_path_factory.mktemp("ui")
    configs = tmp / "workflows"
    configs.mkdir()
    config = people_config(
        name=WORKFLOW, num_records=ROW_GROUPS * ROWS_PER_GROUP, buffer_size=ROWS_PER_GROUP
    )
    config["stages"][0]["description"] = DESCRIPTION
    workflow = write_config(configs / "uiwf.yaml", config)
    shop = write_config(configs / "shop.yaml", PROFILE_CONFIG)
    env = isolated_env(tmp, configs)
    report = tmp / "report.html"
    with pytest.MonkeyPatch.context() as mp:
        for k in ("DAGSTER_HOME", "DD_ASSETS_ROOT", "DD_ASSETS_CONFIG"):
            mp.setenv(k, env[k])
        mp.chdir(tmp)
        _dd_assets(["materialize", str(workflow), "--no-progress"])
        # Asset check results recorded in the instance, for the asset's Checks tab.
        _dd_assets(["check", str(workflow)])
        _dd_assets(["materialize", str(shop), "--no-progress"])
        _dd_assets(["report", str(shop), "-o", str(report)])

    # `dd-assets ui FOLDER`: one code location of both workflows.
    with serving([str(BIN / "dd-assets"), "ui", str(configs)], env, tmp) as (port, log_path):
        yield UI(
            f"http://127.0.0.1:{port}", log_path, Path(env["DD_ASSETS_ROOT"]), workflow, report
        )


def _screenshot(page: Any, name: str) -> Path:
    path = artifacts_dir() / name
    page.screenshot(path=str(path), full_page=True)
    assert path.is_file() and path.stat().st_size > 20_000, f"{path}: screenshot too small"
    return path


def test_asset_page_shows_partitions_metadata_and_checks(
    chromium: str, tmp_path: Path, ui: UI
) -> None:
    sync_playwright = _playwright()
    # What the preview must show: the first row of row group 00001 as it is on disk.
    files = {k: p for k, p in batch_files(ui.data_root).items() if k.startswith(f"{WORKFLOW}/")}
    assert len(files) == ROW_GROUPS, files
    batch1 = next(p for k, p in files.items() if k.endswith("batch_00001.parquet"))
    first_line = pq.read_table(batch1, columns=["line"]).column("line")[0].as_py()
    plan = plan_workflow(load_workflow(ui.workflow))[STAGE]
    # The whole-stage checks (`dd-assets check` ran them), the row-group check (each
    # partition's, recorded as it landed) and materializations_current (every materialize run).
    check_names = sorted(
        [*(c.name for c in checks_for(plan)), "row_group_valid", "materializations_current"]
    )
    assert "row_groups_complete" in check_names, check_names

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh profile every run
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        # The "Join the Dagster community" dialog on localhost would cover the page.
        context.add_init_script("localStorage.setItem('communityNux', JSON.stringify('1'))")
        context.set_default_timeout(TIMEOUT_MS)
        page = context.pages[0] if context.pages else context.new_page()
        try:
            page.goto(f"{ui.url}/assets/{WORKFLOW}/{STAGE}")
            # Overview: the description from the config, the stage's shape, the latest partition.
            page.get_by_text(DESCRIPTION).wait_for()
            page.get_by_text(f"{ROW_GROUPS * ROWS_PER_GROUP} records in row groups of").wait_for()
            page.get_by_text("Latest materialization").first.wait_for()
            _screenshot(page, "asset-overview.png")

            # Partitions tab: every row group materialized, none missing.
            page.get_by_role("tab", name="Partitions").click()
            page.get_by_text(f"Materialized ({ROW_GROUPS})").wait_for()
            page.get_by_text("Missing (0)").wait_for()
            page.get_by_text("Failed (0)").wait_for()
            for rg in range(ROW_GROUPS):
                page.get_by_text(f"{rg:05d}", exact=True).first.wait_for()

            # One partition's materialization: its metadata, with rows and the preview.
            page.get_by_text("00001", exact=True).first.click()
            page.wait_for_url(re.compile(r"[?&]partition=00001\b"))
            metadata = page.locator("table").filter(has_text="planned_rows")
            metadata.locator("tr").filter(has_text="preview").get_by_text(first_line).wait_for()
            table_rows = metadata.locator("tr").evaluate_all(
                "trs => trs.map(tr => Array.from(tr.cells, c => c.innerText.trim()))"
            )
            md = {cells[0]: cells[1] for cells in table_rows if len(cells) >= 2}
            assert md["rows"] == str(ROWS_PER_GROUP), md
            assert md["planned_rows"] == str(ROWS_PER_GROUP), md
            assert md["dropped_rows"] == "0", md
            assert md["reused"] == "false", md
            assert md["path"].replace("\n", "").endswith("batch_00001.parquet"), md
            # The preview is markdown rendered as a table: header and rows of this row group.
            assert "person_id" in md["preview"] and first_line in md["preview"], md
            _screenshot(page, "asset-partition-00001.png")

            # Checks tab: every check is listed with its passing result.
            page.get_by_role("tab", name="Checks").click()
            page.get_by_text(f"Checks ({len(check_names)})", exact=True).wait_for()
            for name in check_names:
                page.get_by_text(name, exact=True).first.wait_for()
            succeeded = page.get_by_text("Succeeded", exact=True)
            succeeded.nth(len(check_names) - 1).wait_for()
            assert succeeded.count() == len(check_names)
            page.get_by_text("row_groups_complete", exact=True).first.click()
            page.get_by_text("Latest execution").wait_for()
            page.get_by_text("Passed", exact=True).first.wait_for()
            _screenshot(page, "asset-checks.png")
            # The row-group check is partitioned: its latest execution names its partition.
            page.get_by_text("row_group_valid", exact=True).first.click()
            page.get_by_text("Latest execution").wait_for()
            page.get_by_text(re.compile(rf"^0000[0-{ROW_GROUPS - 1}]$")).first.wait_for()
            page.get_by_role("tab", name="Partitions").last.click()
            page.get_by_text("Loading partitions").wait_for(state="hidden")
            page.get_by_text(f"Passed ({ROW_GROUPS})").wait_for()  # every partition checked
            _screenshot(page, "asset-check-row-group.png")
        except Exception as exc:
            page.screenshot(path=str(artifacts_dir() / "failure.png"), full_page=True)
            raise AssertionError(
                f"UI check failed at {page.url}: {exc}\nscreenshot: {artifacts_dir()}/failure.png"
                f"\ndagster log tail:\n{ui.log_tail()}"
            ) from exc
        finally:
            context.close()


# ---- the profile: `dd-assets report`'s file and the stage asset's page ---------------------------
# The report file opened from disk must draw every column's chart with no console error and
# fetch nothing; the asset page must show the stage profile on the newest materialization.

PROFILE_CONFIG = {
    "name": "shop",
    "stages": [
        {
            "name": "orders",
            "num_records": 3000,
            "buffer_size": 1000,
            "drift": {"share_tolerance": 0.05},
            "columns": [
                {
                    "name": "topic",
                    "column_type": "sampler",
                    "sampler_type": "category",
                    "params": {"values": ["math", "art", "law"], "weights": [0.5, 0.3, 0.2]},
                },
                {
                    "name": "amount",
                    "column_type": "sampler",
                    "sampler_type": "gaussian",
                    "params": {"mean": 50, "stddev": 12},
                },
                {
                    "name": "items",
                    "column_type": "sampler",
                    "sampler_type": "poisson",
                    "params": {"mean": 3},
                },
                {
                    "name": "placed",
                    "column_type": "sampler",
                    "sampler_type": "datetime",
                    "params": {"start": "2024-01-01", "end": "2024-02-01"},
                },
                {
                    "name": "note",
                    "column_type": "expression",
                    "expr": "{{ items }} {{ topic }} book(s), {{ amount | round(2) }} EUR",
                },
            ],
        }
    ],
}
PROFILE_COLUMNS = ["topic", "amount", "items", "placed", "note"]


def _browser(pw: Any, executable: str, tmp_path: Path) -> Any:
    context = pw.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path=executable,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 1000},
    )
    context.add_init_script("localStorage.setItem('communityNux', JSON.stringify('1'))")
    context.set_default_timeout(TIMEOUT_MS)
    return context


def _dd_assets(args: list[str]) -> None:
    """A `dd-assets` command in this process (cli.main, what the command runs): the webserver
    reads what it wrote; a process of its own would add its start-up and nothing else."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(args)
    assert code == 0, out.getvalue() + err.getvalue()


def test_report_file_and_asset_page_show_the_profile(chromium: str, tmp_path: Path, ui: UI) -> None:
    sync_playwright = _playwright()
    report = ui.report

    with sync_playwright() as pw:
        context = _browser(pw, chromium, tmp_path)
        page = context.pages[0] if context.pages else context.new_page()
        errors: list[str] = []
        requests: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        try:
            page.goto(report.as_uri())
            page.get_by_text("Stage orders").wait_for()
            for col in PROFILE_COLUMNS:
                chart = page.locator(f".col[data-column='{col}'] svg.pygal-chart")
                assert chart.count() == 1, col
                box = chart.bounding_box()
                assert box and box["width"] > 200 and box["height"] > 100, (col, box)
                # drawn: bars (rect/path elements of the plot), not an empty frame
                assert chart.locator(".plot .rect, .plot .histbar rect, .plot rect").count() >= 3, (
                    col
                )
            page.get_by_text("no drift (topic (shares ±0.05))").wait_for()
            _screenshot(page, "report.png")
            assert errors == [], errors
            assert all(u.startswith("file:") or u.startswith("data:") for u in requests), requests

            # The Dagster UI: the newest materialization carries the stage's profile.
            page.goto(f"{ui.url}/assets/shop/orders")
            page.get_by_text("Latest materialization").first.wait_for()
            metadata = page.locator("table").filter(has_text="profile/percent_complete")
            metadata.first.wait_for()
            rows = metadata.first.locator("tr").evaluate_all(
                "trs => trs.map(tr => Array.from(tr.cells, c => c.innerText.trim()))"
            )
            md = {cells[0]: cells[-1] for cells in rows if len(cells) >= 2}
            assert md["profile/records"] == "3000", md
            assert md["profile/percent_complete"] == "100", md
            assert md["profile/drift_findings"] == "0", md
            # the column table renders inline, one row per column
            columns = page.locator("table").filter(has_text="sampler/category").last
            for col in PROFILE_COLUMNS:
                columns.get_by_text(col, exact=True).first.wait_for()
            _screenshot(page, "ui-asset-profile.png")
        finally:
            context.close()
