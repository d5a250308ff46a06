"""Image columns (DataDesigner's `image`, generation_type image) over real HTTP against the mock:
both ways a model is asked (/images/generations, chat completion with images), faults retried,
the images written as files beside their row group, missing files seen by status and the check
and made again from the cache, exports carrying them; and multi_modal_context's data_type null
(DataDesigner's auto-detection) for base64, URLs, files and values it cannot classify."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from dd_assets.config.loader import parse_workflow
from dd_assets.engine.expressions import CellError
from dd_assets.engine.images import detected_image_url
from dd_assets.llm import client as llm_client
from dd_assets.runners.checks import run_checks
from dd_assets.runners.export import export_stage
from dd_assets.runners.materialize import materialize_wave
from dd_assets.runners.plan import plan_workflow
from dd_assets.runners.status import workflow_status
from dd_assets.store.partition_store import PartitionStore
from dd_assets.testing.mock_openai import MockOpenAI, mock_png

PNG = mock_png("m", "p")
PNG64 = base64.b64encode(PNG).decode()


@pytest.fixture
def mock() -> Iterator[MockOpenAI]:
    with MockOpenAI(seed=5) as server:
        yield server


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm_client, "BACKOFF_BASE_S", 0.001)
    monkeypatch.setattr(llm_client, "BACKOFF_CAP_S", 0.005)


def _workflow(url: str) -> dict[str, Any]:
    model = {"base_url": url, "max_parallel_requests": 3, "max_retries": 3, "timeout_s": 10}
    context = [{"column_name": "pic", "data_type": None}]
    return {
        "name": "imgs",
        "models": {
            "text": {**model, "model": "m-text"},
            # a diffusion model name: /images/generations, as DataDesigner asks it
            "draw": {**model, "model": "gpt-image-1"},
            # any other name: a chat completion whose answer carries the image
            "chatdraw": {**model, "model": "mock/image-model"},
        },
        "stages": [
            {
                "name": "s",
                "num_records": 6,
                "buffer_size": 3,
                "columns": [
                    {"name": "rid", "column_type": "sampler", "sampler_type": "uuid", "params": {}},
                    {
                        "name": "pic",
                        "column_type": "image",
                        "model_alias": "draw",
                        "prompt": "A photo of {{ rid }}",
                    },
                    # in the stage, pic holds base64: detected as such
                    {
                        "name": "pic2",
                        "column_type": "image",
                        "model_alias": "chatdraw",
                        "prompt": "Redraw {{ rid }}",
                        "multi_modal_context": context,
                    },
                ],
            },
            {
                "name": "t",
                "num_records": 6,
                "buffer_size": 3,
                "seed": {"stage": "s", "mode": "row_group"},
                # downstream, pic holds file paths: detected, read, sent as base64
                "columns": [
                    {
                        "name": "caption",
                        "column_type": "llm-text",
                        "model_alias": "text",
                        "prompt": "Describe",
                        "multi_modal_context": context,
                    },
                ],
            },
        ],
    }


def _run(cfg: dict[str, Any], root: Path) -> None:
    plans = plan_workflow(parse_workflow(cfg))
    materialize_wave([plans["s"], plans["t"]], PartitionStore(root), range(2), in_flight=2)


def test_image_columns_end_to_end(mock: MockOpenAI, tmp_path: Path) -> None:
    cfg = _workflow(mock.url)
    root = tmp_path / "dd-data"
    mock.queue_faults(503, "malformed")  # transient: retried like any LLM call
    _run(cfg, root)
    plans = plan_workflow(parse_workflow(cfg))
    store = PartitionStore(root)
    s = plans["s"]
    stage_dir = store.stage_dir(s.ref)

    drawn = [b for b in mock.bodies if b.get("model") == "gpt-image-1"]
    assert drawn and all(set(b) == {"model", "prompt"} for b in drawn)
    chat_drawn = [b for b in mock.bodies if b.get("model") == "mock/image-model"]
    assert len(chat_drawn) == 6
    for b in chat_drawn:  # pic's base64, detected, goes first as a data URI
        first = b["messages"][0]["content"][0]
        assert first["image_url"]["url"].startswith("data:image/png;base64,")

    rows = store.dataset(s.ref).to_table().to_pylist()
    assert len(rows) == 6
    for r in rows:
        (path,) = r["pic"]
        assert path.startswith("images/pic/0000") and path.endswith(".png")
        assert (stage_dir / path).read_bytes() == mock_png("gpt-image-1", f"A photo of {r['rid']}")
        assert (stage_dir / r["pic2"][0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    footer = pq.ParquetFile(store.batch_path(s.ref, 0)).schema_arrow.metadata
    assert json.loads(footer[b"dd_assets.images"]) == {"pic": 3, "pic2": 3}

    # downstream: the paths were read from s's folder and sent as the images themselves
    captions = [b for b in mock.bodies if b.get("model") == "m-text"]
    assert len(captions) == 6
    sent = {c["messages"][0]["content"][0]["image_url"]["url"] for c in captions}
    assert sent == {f"data:image/png;base64,{base64.b64encode((stage_dir / r['pic'][0]).read_bytes()).decode()}" for r in rows}  # fmt: skip

    checks = run_checks(s, store, ["image_files_present"])
    assert [c.passed for c in checks] == [True]

    # An image file gone: the row group is missing data for status, the check names the file,
    # and materialize makes it again, every answer from the request cache.
    lost = stage_dir / rows[4]["pic"][0]
    lost.unlink()
    (failed,) = run_checks(s, store, ["image_files_present"])
    assert not failed.passed and str(lost) in failed.description
    store.completed(s.ref)  # a scan: the footer index now stands for the folder
    for columns in (True, False):  # the index's columns know nothing of image files
        status = {st.stage: st for st in workflow_status(plans, PartitionStore(root), columns)}
        assert status["s"].missing == [1] and status["s"].done == 1
    before = mock.requests
    _run(cfg, root)
    assert mock.requests == before
    assert lost.exists()
    assert [c.passed for c in run_checks(s, store, ["image_files_present"])] == [True]
    assert store.dataset(s.ref).to_table().to_pylist() == rows

    # export carries the images beside the file, under the paths its cells hold
    out = tmp_path / "out" / "s.jsonl"
    export_stage(s, store, "jsonl", out)
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(exported) == 6
    for r in exported:
        assert (out.parent / r["pic"][0]).read_bytes() == (stage_dir / r["pic"][0]).read_bytes()


def test_a_refused_image_request_drops_its_row(mock: MockOpenAI, tmp_path: Path) -> None:
    cfg = _workflow(mock.url)
    cfg["stages"] = cfg["stages"][:1]
    cfg["stages"][0]["columns"] = cfg["stages"][0]["columns"][:2]
    cfg["run"] = {"max_drop_rate": 1.0}
    mock.queue_faults(422)
    plan = plan_workflow(parse_workflow(cfg))["s"]
    store = PartitionStore(tmp_path / "d")
    materialize_wave([plan], store, range(2))
    rows = store.dataset(plan.ref).to_table()
    assert rows.num_rows == 5  # the refused row is dropped, the others drawn


def test_data_type_null_detects_like_datadesigner(tmp_path: Path) -> None:
    url = "https://example.com/cat.PNG?x=1"
    assert detected_image_url("c", url, None) == url
    assert detected_image_url("c", PNG64, None) == f"data:image/png;base64,{PNG64}"
    uri = f"data:image/png;base64,{PNG64}"
    assert detected_image_url("c", uri, None) == uri
    files = {"imgs/a.png": PNG}
    assert detected_image_url("c", "imgs/a.png", files.get) == uri
    with pytest.raises(CellError, match=r"column 'c' \(data_type: null\) cannot classify"):
        detected_image_url("c", "imgs/missing.png", files.get)  # no such file, not base64
    with pytest.raises(CellError, match=r"cannot classify 'https://example\.com/page'"):
        detected_image_url("c", "https://example.com/page", None)  # a URL but not of an image
    with pytest.raises(CellError, match="not a png, jpeg, gif or webp image"):
        detected_image_url("c", base64.b64encode(b"hello world").decode(), None)
    with pytest.raises(CellError, match="unsupported image media type 'image/tiff'"):
        detected_image_url("c", f"data:image/tiff;base64,{PNG64}", None)
