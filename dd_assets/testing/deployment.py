"""A Dagster deployment on one machine for tests and benchmarks of scale-out: a PostgreSQL
instance (the shipped queued-runs template), a separate `dagster-webserver` and
`dagster-daemon`, run workers launched by the daemon, the LLM request cache and request slots
in the instance's database, and backfills driven through the GraphQL API as the UI does."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from dd_assets.testing.mock_openai import MockOpenAI
from dd_assets.testing.postgres import PgServer
from dd_assets.testing.workflows import (
    BIN,
    FAST_DAEMON,
    REPO,
    free_port,
    pids_naming,
    write_config,
)

LAUNCH = """
mutation($p: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $p) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}"""

STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status }
  }
}"""

TERMINATE = """
mutation($id: String!) {
  terminateRun(runId: $id, terminatePolicy: MARK_AS_CANCELED_IMMEDIATELY) { __typename }
}"""


def two_stage_workflow(
    name: str,
    url: str,
    *,
    rows: int,
    buffer: int,
    per_run: int,
    parallel: int,
    in_flight: int = 2,
) -> dict[str, Any]:
    """`qa` (a uuid and an LLM answer about it), then `notes` seeded row group by row group."""
    return {
        "name": name,
        "models": {"gen": {"base_url": url, "model": "m", "max_parallel_requests": parallel}},
        "run": {"partitions_per_run": per_run, "row_groups_in_flight": in_flight},
        "stages": [
            {
                "name": "qa",
                "num_records": rows,
                "buffer_size": buffer,
                "columns": [
                    {"name": "rid", "column_type": "sampler", "sampler_type": "uuid"},
                    {
                        "name": "answer",
                        "column_type": "llm-text",
                        "model_alias": "gen",
                        "prompt": f"[{name}] about {{{{ rid }}}}",
                    },
                ],
            },
            {
                "name": "notes",
                "num_records": rows,
                "buffer_size": buffer,
                "seed": {"stage": "qa", "mode": "row_group"},
                "columns": [{"name": "note", "column_type": "expression", "expr": "{{ answer }}!"}],
            },
        ],
    }


@dataclass
class Deployment:
    port: int
    home: Path
    root: str  # the data root: a local folder, or s3://bucket/prefix
    configs: Path
    mock: MockOpenAI
    pg: PgServer
    log: Path

    def gql(self, query: str, variables: dict) -> dict:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/graphql",
            data=json.dumps({"query": query, "variables": variables}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            body = json.loads(resp.read())
        assert "errors" not in body, body
        return body["data"]

    def backfill(self, wf: str, keys: list[str], tags: dict[str, str] | None = None) -> str:
        params: dict[str, Any] = {
            "assetSelection": [{"path": [wf, "qa"]}, {"path": [wf, "notes"]}],
            "partitionNames": keys,
        }
        if tags:
            params["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        launched = self.gql(LAUNCH, {"p": params})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        return launched["backfillId"]

    def status(self, backfill_id: str) -> str:
        return self.gql(STATUS, {"id": backfill_id})["partitionBackfillOrError"]["status"]

    def wait(self, backfill_id: str, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while (status := self.status(backfill_id)) == "REQUESTED":
            assert time.monotonic() < deadline, f"backfill {status} after {timeout} s"
            time.sleep(0.5)
        return status

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.get()

    def runs(self, backfill_id: str) -> list[dg.DagsterRun]:
        with self.instance() as inst:
            return list(
                inst.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
            )


def _start(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(*procs: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM to every process group at once (each takes seconds to shut down: one after the
    other, the waits added up), then wait for each, SIGKILL after 30 s."""
    started = [p for p in procs if p is not None]
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


# Runs launched with this tag run one at a time (a tag concurrency limit of the coordinator):
# the same deployment then measures one worker against four.
ONE_AT_A_TIME = {"dd-assets/lane": "one"}


@contextlib.contextmanager
def running_deployment(
    tmp: Path,
    postgres: PgServer,
    workflows: dict[str, dict[str, Any]],
    mock: MockOpenAI,
    *,
    root: str | None = None,
    store_env: dict[str, str] | None = None,
) -> Iterator[Deployment]:
    """Write the workflows (a folder: one code location), the instance (4 runs at once) and
    the environment; start the webserver and the daemon; stop both afterwards. The data root is
    `root` (e.g. `s3://bucket/prefix`, whose endpoint and credentials come in `store_env`, as an
    operator puts them in the run workers' environment), else a folder under `tmp`."""
    home, configs = tmp / "dagster_home", tmp / "workflows"
    if root is None:
        root = str(tmp / "dd-data")
        Path(root).mkdir(parents=True)
    for d in (home, configs):
        d.mkdir(parents=True)
    # The shipped template, as an operator copies it, with a faster dequeue for the test.
    instance_yaml = yaml.safe_load((REPO / "resources/dagster/queued-runs.yaml").read_text())
    assert instance_yaml["run_coordinator"]["config"]["max_concurrent_runs"] == 4
    instance_yaml["run_coordinator"]["config"]["dequeue_interval_seconds"] = 1
    instance_yaml["run_coordinator"]["config"]["tag_concurrency_limits"] = [
        {"key": k, "value": v, "limit": 1} for k, v in ONE_AT_A_TIME.items()
    ]
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
    env = dict(os.environ)
    env.update(postgres.template_env())
    env.update(store_env or {})
    env.update(
        DAGSTER_HOME=str(home),
        DD_ASSETS_ROOT=root,
        DD_ASSETS_CONFIG=str(configs),
        DD_ASSETS_LLM_CACHE="postgres",  # answers shared by every run worker
        PYTHONUNBUFFERED="1",
    )
    env.pop("DD_ASSETS_LLM_SLOTS", None)  # default on a PostgreSQL instance: advisory locks
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    web = daemon = None
    try:
        for name, config in workflows.items():
            write_config(configs / f"{name}.yaml", config)
        dg.DagsterInstance.get().dispose()  # tables created once, before the servers race
        port = free_port()
        log = tmp / "dagster.log"
        # The repository's workspace.yaml, in a folder without the repository's ./.env (whose
        # DAGSTER_HOME Dagster's tools would take over the exported one).
        shutil.copy(REPO / "workspace.yaml", tmp / "workspace.yaml")
        web = _start(
            [
                str(BIN / "dagster-webserver"),
                *("-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)),
            ],
            env,
            log,
            tmp,
        )
        daemon = _start(
            [str(BIN / "python"), "-c", FAST_DAEMON, "run", "-w", "workspace.yaml"], env, log, tmp
        )
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                assert web.poll() is None and daemon.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "webserver did not start in 180 s"
                time.sleep(0.5)
        yield Deployment(port, home, root, configs, mock, postgres, log)
    finally:
        _stop(daemon, web)
        # Code servers the daemon or webserver started can outlive them (their own sessions);
        # each names this instance's folder on its command line.
        for pid in pids_naming(str(home)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_pids(run_id: str) -> list[int]:
    """The run's processes: its run worker and all its descendants. The run worker's command line
    need not name the run (the code server starts it), but the `tail -F` processes that capture
    its compute logs do (their files are under the run id): the worker is their parent. A process
    that names the run itself counts too."""
    parent: dict[int, int] = {}
    named: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        parent[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        if run_id.encode() in cmdline:
            named.append(-pid if cmdline.startswith(b"tail\0") else pid)
    found = {parent[-pid] if pid < 0 else pid for pid in named}
    while True:
        more = {pid for pid, ppid in parent.items() if ppid in found} - found
        if not more:
            return sorted(found)
        found |= more


def most_in_flight(runs: list[dg.DagsterRun], inst: dg.DagsterInstance) -> int:
    """Most runs in flight at one moment, from the instance's start and end times."""
    spans = []
    for r in runs:
        rec = inst.get_run_record_by_id(r.run_id)
        assert rec is not None and rec.start_time is not None
        spans.append((rec.start_time, rec.end_time or time.time()))
    return max(sum(a <= t < b for a, b in spans) for t, _ in spans)
