"""Issue 18 item 8: `max_parallel_requests` holds per deployment, not per run. Four
`dd-assets materialize` processes at once, on one Dagster instance, against one mock endpoint
with `max_parallel_requests: 2`: the endpoint never sees more than 2 requests in flight."""

from __future__ import annotations

import subprocess
from pathlib import Path

import dagster as dg
import pytest

from dd_assets.testing.mock_openai import MockOpenAI
from dd_assets.testing.workflows import BIN, isolated_env, write_config

pytestmark = [pytest.mark.slow]

RUNS = 4
ROWS = 48  # 2.4 s of requests per run alone: longer than the runs' start-up skew under load


def _config(name: str, url: str) -> dict:
    return {
        "name": name,
        "models": {"gen": {"base_url": url, "model": "m", "max_parallel_requests": 2}},
        "run": {"partitions_per_run": 8, "row_groups_in_flight": 4},
        "stages": [
            {
                "name": "qa",
                "num_records": ROWS,
                "buffer_size": 12,
                "columns": [
                    {"name": "rid", "column_type": "sampler", "sampler_type": "uuid"},
                    {
                        "name": "answer",
                        "column_type": "llm-text",
                        "model_alias": "gen",
                        "prompt": f"[{name}] say something about {{{{ rid }}}}",
                    },
                ],
            }
        ],
    }


def most_at_once(bodies: list[dict], names: list[str]) -> int:
    """How many runs had requests both before and after one moment, in arrival order: at
    least that many were sending at the same time."""
    order = [next(n for n in names if f"[{n}]" in b["messages"][-1]["content"]) for b in bodies]
    spans = {n: (order.index(n), len(order) - 1 - order[::-1].index(n)) for n in names}
    return max(sum(a <= i <= b for a, b in spans.values()) for i in range(len(order)))


def test_four_cli_runs_never_exceed_max_parallel_requests_in_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = isolated_env(tmp_path)
    env.pop("DD_ASSETS_LLM_SLOTS", None)  # the default: lock files in DAGSTER_HOME
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    dg.DagsterInstance.get().dispose()  # created once, not raced by four first commands
    names = [f"wf{i}" for i in range(RUNS)]
    with MockOpenAI(latency_s=0.1) as mock:
        configs = [write_config(tmp_path / f"{n}.yaml", _config(n, mock.url)) for n in names]
        procs = [
            subprocess.Popen(
                [str(BIN / "dd-assets"), "materialize", str(c), "--no-progress"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for c in configs
        ]
        outs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0] * RUNS, [err for _, err in outs]
        assert mock.by_status == {200: RUNS * ROWS}
        # Each run alone would keep 2 in flight; so would each of the others at the same time.
        # (Without turns, the run that starts first keeps both slots until it ends, 2.4 s of
        # requests alone: the lock files let one run starve the others; llm/slots.py.)
        order = "".join(n[-1] for b in mock.bodies for n in names if f"[{n}]" in str(b))
        assert most_at_once(mock.bodies, names) >= 3, f"runs in arrival order: {order}"
        assert mock.peak_concurrency == 2
    slot_files = sorted(p.name for p in (Path(env["DAGSTER_HOME"]) / "llm-slots").iterdir())
    # The two slots of the one endpoint, and the mark runs hold while they wait for a turn.
    assert [f.split(".", 1)[1] for f in slot_files] == ["0.lock", "1.lock", "waiting"]
    assert len({f.split(".", 1)[0] for f in slot_files}) == 1
