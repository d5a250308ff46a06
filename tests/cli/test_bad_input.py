"""Bad input as the command line meets it: one `error:` line and exit 1 (2 for usage, 130 / 143
for Ctrl-C / SIGTERM), no traceback, nothing hanging, nothing half-written. One test per case
of issue 15; the mutated-config fuzz is test_bad_input_fuzz.py."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dd_assets import cli
from dd_assets.config import load_workflow
from dd_assets.errors import GenerationError, StoreError
from dd_assets.runners.export import export_stage
from dd_assets.runners.finalize import finalize_stage
from dd_assets.runners.materialize import materialize, refuse_unexpected_columns
from dd_assets.runners.plan import plan_workflow
from dd_assets.store.atomic import TEMP_MARK, _host
from dd_assets.store.partition_store import CorruptStageError, PartitionStore
from dd_assets.testing.workflows import (
    BIN,
    batch_files,
    deadline,
    flip_data_page_byte,
    isolated_env,
    people_config,
    snapshot,
    write_config,
)

DD = str(BIN / "dd-assets")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The one `error:` line of a failed command (continuation lines are indented)."""
    lines = [line for line in err.splitlines() if line and not line.startswith("  ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _seeded(tmp_path: Path, seed: str, **stage: Any) -> Path:
    cfg = {
        "name": "wf",
        "stages": [
            {
                "name": "s",
                "num_records": 20,
                "buffer_size": 10,
                "seed": {"path": seed},
                "columns": [{"name": "c", "column_type": "expression", "expr": "{{ a }}"}],
                **stage,
            }
        ],
    }
    return write_config(tmp_path / "wf.yaml", cfg)


# ---- seed files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink to /dev/zero"])
def test_a_seed_that_is_not_a_regular_file_fails_at_once(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """A FIFO seed hung validate and materialize; a `.csv` symlink to /dev/zero never ended."""
    seed = tmp_path / "seed.csv"
    if kind == "fifo":
        os.mkfifo(seed)
    elif kind == "directory":
        seed.mkdir()
    else:
        seed.symlink_to("/dev/zero")
    cfg = _seeded(tmp_path, "seed.csv")
    label = {"fifo": "a FIFO (named pipe)", "directory": "a directory"}.get(
        kind, "a character device"
    )
    for command in (["validate"], ["materialize", "--no-progress"]):
        with deadline(30):
            code, _, err = run(capsys, command[0], str(cfg), *command[1:])
        assert code == 1
        line = one_error_line(err)
        assert f"seed file {seed}" in line and f"is {label}; a seed must be a regular" in line
    assert files_under(data_root) == []


def test_a_rename_onto_a_seed_file_column_fails_validate_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It used to validate, then write a row group with two columns named b (a raw ArrowInvalid
    naming no row group), which a rerun reused and an export silently cut to one."""
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), tmp_path / "seed.parquet")
    cfg = _seeded(
        tmp_path,
        "seed.parquet",
        post_batch=[{"processor_type": "rename", "mapping": {"c": "b"}}],
    )
    code, _, err = run(capsys, "validate", str(cfg))
    assert code == 1
    one_error_line(err)
    line = next(n for n, text in enumerate(cfg.read_text().splitlines(), 1) if "mapping" in text)
    assert (
        f"wf.yaml:{line}: stages[0].post_batch[0].mapping: renaming would give two columns the"
        " name 'b' (from 'b' and 'c')"
    ) in err


def test_a_finalize_step_on_an_unknown_column_fails_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dedupe on an unknown column validated, then failed after the whole generation and
    left the stage sealed."""
    cfg = people_config(num_records=20, buffer_size=10)
    cfg["stages"][0]["finalize"] = [
        {"processor_type": "filter", "expr": "{{ scroe > 3 }}"},
        {"processor_type": "dedupe", "columns": ["city", "nope"]},
    ]
    path = write_config(tmp_path / "wf.yaml", cfg)
    code, _, err = run(capsys, "validate", str(path))
    assert code == 1
    one_error_line(err)
    assert "stages[0].finalize[0].expr: unknown column 'scroe'" in err
    assert "stages[0].finalize[1].columns: dedupe on unknown column 'nope'" in err


# ---- row groups that must never be committed ---------------------------------------------------


def test_a_row_group_with_duplicate_or_unexpected_columns_is_never_committed(
    tmp_path: Path,
) -> None:
    plan = plan_workflow(load_workflow(write_config(tmp_path / "wf.yaml", people_config())))[
        "people"
    ]
    good = materialize(plan, PartitionStore(tmp_path / "a"), [0])[0]
    table = pq.read_table(good.info.path)
    twice = pa.Table.from_arrays([*table.columns, table["city"]], [*table.column_names, "city"])
    with pytest.raises(GenerationError, match=r"stage 'people', row group 00003: .* named 'city'"):
        refuse_unexpected_columns(plan, 3, twice, None)
    extra = table.append_column("stray", pa.array([1] * table.num_rows))
    with pytest.raises(GenerationError, match=r"row group 00003: .*columns \[.*'stray'\]"):
        refuse_unexpected_columns(plan, 3, extra, None)

    store = PartitionStore(tmp_path / "b")
    with pytest.raises(StoreError, match=r"stage 'people', row group 00003: .*nothing was written"):
        store.write_row_group(plan.ref, 3, twice)
    assert not store.root.exists()

    # A file with two columns of one name already on disk (an older version wrote it) is
    # refused by the store, never reused by a rerun or exported with a column missing.
    store = PartitionStore(tmp_path / "a")
    path = store.batch_path(plan.ref, 0)
    pq.write_table(twice.replace_schema_metadata(pq.read_schema(path).metadata), path)
    with pytest.raises(CorruptStageError, match=r"batch_00000\.parquet.*duplicate column"):
        store.completed(plan.ref)


def test_a_run_that_fails_before_its_first_commit_leaves_no_trace(tmp_path: Path) -> None:
    """stage.json and the stage's folders are created by the first commit, not before."""
    cfg = people_config(num_records=20, buffer_size=10)
    cfg["stages"][0]["columns"].append(
        {"name": "boom", "column_type": "expression", "expr": "{{ 'x' * 300000000 }}"}
    )
    plan = plan_workflow(load_workflow(write_config(tmp_path / "wf.yaml", cfg)))["people"]
    root = tmp_path / "dd-data"
    for mode in ("if_possible", "always", "never"):
        with pytest.raises(GenerationError, match="template output limit"):
            materialize(plan, PartitionStore(root), [0, 1], resume=mode)  # type: ignore[arg-type]
        assert not root.exists(), mode


# ---- page checksums ------------------------------------------------------------------------------


def _materialized(tmp_path: Path, **stage: Any) -> tuple[Any, PartitionStore]:
    cfg = people_config(num_records=30, buffer_size=10)
    cfg["stages"][0].update(stage)
    tmp_path.mkdir(exist_ok=True)
    plan = plan_workflow(load_workflow(write_config(tmp_path / "wf.yaml", cfg)))["people"]
    store = PartitionStore(tmp_path / "dd-data")
    materialize(plan, store, range(3))
    return plan, store


def test_every_parquet_file_is_written_with_page_checksums(tmp_path: Path) -> None:
    plan, store = _materialized(
        tmp_path, finalize=[{"processor_type": "dedupe", "columns": ["person_id"]}]
    )
    final = finalize_stage(plan, store).path
    out = export_stage(plan, store, "parquet", tmp_path / "out.parquet").path
    for path in [store.batch_path(plan.ref, 0), final, out]:
        flip_data_page_byte(path, "line")
        with pytest.raises(OSError, match="CRC checksum verification failed"):
            pq.ParquetFile(path, page_checksum_verification=True).read()


def test_finalize_and_export_name_the_file_they_cannot_read(tmp_path: Path) -> None:
    """finalize failed with `Corrupt snappy compressed data` and no file named."""
    plan, store = _materialized(
        tmp_path, finalize=[{"processor_type": "dedupe", "columns": ["person_id"]}]
    )
    bad = store.batch_path(plan.ref, 1)
    flip_data_page_byte(bad, "line")
    with pytest.raises(CorruptStageError, match=re.escape(str(bad)) + ".*CRC"):
        finalize_stage(plan, store)
    plan2, store2 = _materialized(tmp_path / "b")
    flip_data_page_byte(store2.batch_path(plan2.ref, 2), "line")
    out = tmp_path / "out.jsonl"
    with pytest.raises(CorruptStageError, match=r"batch_00002\.parquet cannot be read back intact"):
        export_stage(plan2, store2, "jsonl", out)
    assert not out.exists()


@pytest.mark.slow
def test_a_flipped_byte_in_a_data_page_fails_check_naming_the_file(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A page corrupted under an intact footer passed `status` and `check`."""
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=30, buffer_size=10))
    assert run(capsys, "materialize", str(cfg), "--no-progress")[0] == 0
    assert run(capsys, "check", str(cfg))[0] == 0
    bad = next(p for k, p in batch_files(data_root).items() if k.endswith("batch_00001.parquet"))
    flip_data_page_byte(bad, "line")
    assert pq.read_metadata(bad).num_rows == 10  # the footer is intact
    code, _, err = run(capsys, "check", str(cfg))
    assert code == 1
    assert "FAIL people/pages_intact: 1 of 3 file(s)" in err
    assert "batch_00001.parquet: OSError: could not verify page integrity, CRC checksum" in err
    assert "failed: 1 blocking check(s): people/pages_intact" in err


# ---- export ---------------------------------------------------------------------------------------


@pytest.fixture
def exported(
    tmp_path: Path, data_root: Path
) -> Any:  # a materialized stage (without Dagster) and a runner of `dd-assets export`
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=30, buffer_size=10))
    plan = plan_workflow(load_workflow(cfg))["people"]
    materialize(plan, PartitionStore(data_root), range(3))
    return cfg


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("tickets.csv", "csv"),
        ("tickets.PARQUET", "parquet"),
        ("tickets.JsonL", "jsonl"),
        ("tickets.ndjson", "jsonl"),
    ],
)
def test_export_takes_the_format_from_the_extension(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, fmt: str
) -> None:
    """`-o tickets.csv` wrote JSON lines."""
    out = tmp_path / "out" / name
    code, _, _ = run(capsys, "export", str(exported), "-o", str(out))
    assert code == 0
    if fmt == "parquet":
        assert pq.read_table(out).num_rows == 30
    elif fmt == "csv":
        assert out.read_text().splitlines()[0].startswith('"person_id","city"')
    else:
        assert len([json.loads(x) for x in out.read_text().splitlines()]) == 30


def test_export_format_given_wins_and_an_unknown_extension_is_a_usage_error(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rows.csv"
    assert run(capsys, "export", str(exported), "--format", "jsonl", "-o", str(out))[0] == 0
    assert json.loads(out.read_text().splitlines()[0])["city"]
    code, _, err = run(capsys, "export", str(exported), "-o", str(tmp_path / "rows.txt"))
    assert code == 2
    assert "cannot tell the export format from 'rows.txt'" in one_error_line(err)
    assert not (tmp_path / "rows.txt").exists()


def test_export_sweeps_the_temp_files_of_a_killed_export(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    killed = folder / f"big.csv{TEMP_MARK}{_host()}.{_dead_pid()}.1"
    killed.write_bytes(b"x" * 1000)  # what SIGKILL during an export leaves
    live = folder / f"big.csv{TEMP_MARK}{_host()}.1.1"  # pid 1 is alive: still being written
    live.write_bytes(b"y")
    assert run(capsys, "export", str(exported), "-o", str(folder / "rows.csv"))[0] == 0
    assert not killed.exists() and live.exists()


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


# ---- the Dagster instance ------------------------------------------------------------------------


def test_a_dagster_home_that_cannot_be_created(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=20, buffer_size=10))
    monkeypatch.setenv("DAGSTER_HOME", str(cfg / "home"))  # under a file: never a folder
    code, _, err = run(capsys, "materialize", str(cfg), "--no-progress")
    assert code == 1
    assert f"DAGSTER_HOME {cfg / 'home'} cannot be created or written" in one_error_line(err)
    assert files_under(data_root) == []


def test_a_read_only_dagster_home(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=20, buffer_size=10))
    home = tmp_path / "ro-home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with _read_only(home):
        code, _, err = run(capsys, "materialize", str(cfg), "--no-progress")
    assert code == 1
    assert f"DAGSTER_HOME {home} cannot be created or written" in one_error_line(err)


class _read_only:
    """chmod 555; root ignores modes, so as root the folder is made immutable (chattr +i)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        os.chmod(self.path, 0o555)
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i", str(self.path)], check=True, capture_output=True)

    def __exit__(self, *exc: object) -> None:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(self.path)], check=True, capture_output=True)
        os.chmod(self.path, 0o755)


@pytest.mark.slow
def test_a_locked_dagster_sqlite_is_one_error_line(
    tmp_path: Path,
    data_root: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sqlalchemy's OperationalError and its stack after ~14 s, before."""
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=20, buffer_size=10))
    assert run(capsys, "materialize", str(cfg), "--no-progress")[0] == 0  # the instance exists
    # SQLite's busy timeout for the instance's engines (Dagster's 30 s): the same error after
    # 2 s of waiting for the lock instead of 30 (the wait was ~80% of the test's time).
    monkeypatch.setattr("dd_assets.dagster.sqlite_storage.SQLITE_BUSY_TIMEOUT_SECONDS", 2)
    runs_db = Path(os.environ["DAGSTER_HOME"]) / "history" / "runs.db"
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(runs_db, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(120)
        conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        locked.wait(30)
        code, _, err = run(capsys, "materialize", str(cfg), "--no-progress", "--resume", "never")
    finally:
        release.set()
        holder.join()
    assert code == 1
    line = one_error_line(err)
    assert "SQLite database in" in line and "is locked by another process" in line


# ---- signals -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "resume"), [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)]
)
def test_an_interrupted_materialize_says_one_line_and_resumes(
    tmp_path: Path, sig: signal.Signals, code: int, resume: bool
) -> None:
    """Ctrl-C / SIGTERM printed Dagster and sqlalchemy frames and exited 1. (The resume after
    either signal is the same code path, checked once to keep CI short.)"""
    cfg = write_config(
        tmp_path / "wf.yaml",
        people_config(num_records=2400, buffer_size=120, partitions_per_run=20),
    )
    env = isolated_env(tmp_path)
    root = Path(env["DD_ASSETS_ROOT"])
    proc = subprocess.Popen(
        [DD, "materialize", str(cfg), "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background jobs ignore SIGINT; a user's terminal does not.
        preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (sig, signal.SIGINT)],
    )
    start = time.monotonic()
    while len(batch_files(root)) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - start < 120
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    saved = len(batch_files(root))
    assert re.fullmatch(r"interrupted; (\d+) row groups? saved; rerun to resume\n", err), err
    assert int(err.split()[1]) == saved < 20
    if not resume:
        return
    kept = snapshot(root)
    rerun = subprocess.run(
        [DD, "materialize", str(cfg), "--no-progress"], env=env, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    assert len(batch_files(root)) == 20
    assert {k: v for k, v in snapshot(root).items() if k in kept} == kept  # resumed, not redone


# ---- the real command's line and exit code -------------------------------------------------------


def _alias_bomb() -> str:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{cur}: &{cur} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join(levels) + "\nname: w\n"


BAD_CONFIGS = {
    "alias bomb": (_alias_bomb(), "expands to more than 250000 values"),
    "duplicate keys": ("name: w\nname: v\nstages: []\n", "duplicate key 'name'"),
    "non-UTF-8": (b"name: w\xff\n", "not UTF-8: byte 0xff at line 1"),
    "boolean buffer_size": (
        "name: w\nstages:\n  - name: s\n    num_records: 5\n    buffer_size: true\n"
        "    columns: [{name: a, column_type: expression, expr: x}]\n",
        "stages[0].buffer_size: Input should be a valid integer; got a boolean",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_the_command_prints_one_error_line_and_exits_1(tmp_path: Path, case: str) -> None:
    text, expected = BAD_CONFIGS[case]
    cfg = tmp_path / "wf.yaml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    res = subprocess.run(
        [DD, "validate", str(cfg)], capture_output=True, text=True, timeout=60, env=os.environ
    )
    assert res.returncode == 1
    one_error_line(res.stderr)
    assert expected in res.stderr
    debug = subprocess.run(
        [DD, "--debug", "validate", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert debug.returncode == 1
    assert debug.stderr.startswith("Traceback (most recent call last)")
    assert "\nerror: " in debug.stderr


def test_a_100_mb_config_is_refused_by_its_size_without_reading_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "big.yaml"
    with open(cfg, "wb") as fh:
        fh.truncate(100 * 1024 * 1024)
    t0 = time.perf_counter()
    code, _, err = run(capsys, "validate", str(cfg))
    assert code == 1 and time.perf_counter() - t0 < 1
    assert "is 104857600 bytes; a workflow config may be at most 1048576" in err


def test_debug_prints_the_stack_above_the_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "wf.yaml"
    cfg.write_text("name: w\nname: v\n")
    code, _, err = run(capsys, "--debug", "validate", str(cfg))
    assert code == 1
    assert err.startswith("Traceback (most recent call last)")
    assert err.splitlines()[-2].startswith("error: 1 error in workflow config")
