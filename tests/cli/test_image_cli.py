"""Image columns through the commands a user runs (Dagster runs on a real instance, the mock
provider over real HTTP): materialize writes the images beside their row groups, a missing
image file is missing data to `status` and `check` (which names the file), materialize makes
it again from the request cache, and `export` carries the images. One test of five commands
(about 5 s each on two busy cores: each materialize and check is a Dagster run): the passing
check and the runners' side are in tests/llm/test_image_columns.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dd_assets import cli
from dd_assets.testing.workflows import batch_files, stage_table, write_config

pytestmark = [pytest.mark.slow]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_images_through_materialize_status_check_export(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dd_assets.testing.mock_openai import MockOpenAI

    with MockOpenAI() as mock:
        model = {"base_url": mock.url, "model": "gpt-image-1", "max_retries": 1}
        cfg = write_config(
            tmp_path / "wf.yaml",
            {
                "name": "pics",
                "models": {"painter": model},
                "stages": [
                    {
                        "name": "art",
                        "num_records": 4,
                        "buffer_size": 2,
                        "columns": [
                            {"name": "rid", "column_type": "sampler", "sampler_type": "uuid"},
                            {
                                "name": "pic",
                                "column_type": "image",
                                "model_alias": "painter",
                                "prompt": "A photo of {{ rid }}",
                            },
                        ],
                    }
                ],
            },
        )
        code, out, err = _run(capsys, "materialize", str(cfg), "--no-progress")
        assert code == 0, err
        assert mock.requests == 4
        (stage_dir,) = {Path(p).parents[1] for p in batch_files(data_root).values()}
        rows = stage_table(data_root, "art").to_pylist()
        assert all((stage_dir / r["pic"][0]).is_file() for r in rows)

        lost = stage_dir / rows[3]["pic"][0]
        lost.unlink()
        code, out, _ = _run(capsys, "status", str(cfg))
        assert code == 0 and "1/2" in out, out
        code, out, err = _run(capsys, "check", str(cfg))
        assert code == 1 and "art/image_files_present" in err
        assert lost.name in out + err

        code, _, err = _run(capsys, "materialize", str(cfg), "--no-progress")
        assert code == 0, err
        assert mock.requests == 4 and lost.is_file()  # from the request cache

    out_file = tmp_path / "export" / "art.jsonl"
    code, _, err = _run(capsys, "export", str(cfg), "--stage", "art", "-o", str(out_file))
    assert code == 0, err
    for line in out_file.read_text().splitlines():
        (rel,) = json.loads(line)["pic"]
        assert (out_file.parent / rel).read_bytes() == (stage_dir / rel).read_bytes()
