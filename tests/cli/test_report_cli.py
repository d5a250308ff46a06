"""`dd-assets report`: one self-contained HTML file, tables in the terminal, JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dd_assets.cli.main import main
from dd_assets.config import load_workflow
from dd_assets.runners.materialize import materialize
from dd_assets.runners.plan import plan_workflow
from dd_assets.store.partition_store import PartitionStore
from dd_assets.testing.workflows import people_config, write_config

pytestmark = pytest.mark.slow  # faker-backed person sampler: seconds per setup


@pytest.fixture
def workflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "dd-data"
    monkeypatch.setenv("DD_ASSETS_ROOT", str(root))
    cfg = people_config(num_records=400, buffer_size=100)
    cfg["stages"][0]["drift"] = {"share_tolerance": 0.05}
    path = write_config(tmp_path / "wf.yaml", cfg)
    plan = plan_workflow(load_workflow(path))["people"]
    materialize(plan, PartitionStore(root), range(3))  # 3 of 4 row groups
    return path


def test_html_report_is_one_offline_file(workflow: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report.html"
    assert main(["report", str(workflow), "-o", str(out)]) == 0
    assert "wrote the profile of 1 stage(s)" in capsys.readouterr().out
    page = out.read_text()
    # every column has its chart, inline; nothing is fetched from anywhere
    assert page.count("<svg") >= 5
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page
    data = json.loads(re.search(r"id='profile-data'>(.*?)</script>", page, re.S)[1])
    assert data[0]["num_records"] == 300 and data[0]["percent_complete"] == 75.0
    assert "city" in {c["column_name"] for c in data[0]["column_statistics"]}


def test_text_and_json_formats(workflow: Path, capsys) -> None:
    assert main(["report", str(workflow), "--format", "text"]) == 0
    text = capsys.readouterr().out
    assert "wf/people" in text and "percent_complete" in text and "75.0%" in text
    assert "Lyon" in text and "(cfg 33%)" in text
    assert main(["report", str(workflow), "--format", "json", "--stage", "people"]) == 0
    (prof,) = json.loads(capsys.readouterr().out)
    assert prof["row_groups_done"] == 3 and prof["row_groups_total"] == 4


def test_unknown_stage_is_one_error_line(workflow: Path, capsys) -> None:
    assert main(["report", str(workflow), "--stage", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no stage 'nope'") and err.count("\n") == 1
