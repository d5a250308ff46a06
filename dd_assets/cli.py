"""`dd-assets` command line. Each subcommand is a thin shell over the library; exit codes are meant
for CI: 0 ok, 1 a problem with the workflow or its data, 2 bad usage."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from dd_assets.config import WorkflowConfigError, load_workflow

# Exit code of a run that stopped early: some row groups are on disk, the dataset is not complete.
EXIT_PARTIAL = 3

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def _cell(value: Any, width: int = 80) -> Text:
    text = (
        json.dumps(value, default=str, ensure_ascii=False)
        if isinstance(value, dict | list)
        else str(value)
    )
    # Text, not str: generated data is shown as is, never parsed as rich markup ("[/]", "arr[i]").
    return Text(text if len(text) <= width else text[: width - 1] + "…")


def print_table(rows: list[dict[str, Any]], title: str, columns: list[str] | None = None) -> None:
    """Wide tables fold into unreadable slivers in a terminal, so beyond a few columns each
    record is shown as its own column/value table."""
    if columns is None:
        columns = list(rows[0]) if rows else []
    if len(columns) * 14 <= console.width:
        table = Table(title=title)
        for c in columns:
            table.add_column(c, overflow="fold")
        for r in rows:
            table.add_row(*(_cell(r.get(c)) for c in columns))
        console.print(table)
        return
    console.print(f"[bold]{title}[/bold]")
    for i, r in enumerate(rows):
        table = Table(title=f"row {i}", show_header=False, title_justify="left")
        table.add_column("column", style="cyan", no_wrap=True)
        table.add_column("value", overflow="fold")
        for c in columns:
            table.add_row(c, _cell(r.get(c), 200))
        console.print(table)


def _seed_text(seed: object) -> str:
    from dd_assets.config import FileSeed, JoinSeed, StageSeed

    if isinstance(seed, StageSeed):
        return f", seed {seed.stage} ({seed.mode})"
    if isinstance(seed, JoinSeed):
        return f", joins {' + '.join(seed.stages)} on {', '.join(seed.keys)}"
    if isinstance(seed, FileSeed):
        return f", seed file {Path(seed.path).name}"
    return ""


def cmd_validate(args: argparse.Namespace) -> int:
    from dd_assets.stage_runner import plan_workflow

    wf = load_workflow(args.config)
    plans = plan_workflow(wf)  # with seed files hashed: the fingerprints runs will use
    console.print(
        f"[green]ok[/green] {escape(args.config)}: workflow {wf.name!r}, {len(wf.stages)} stage(s)"
    )
    for s in wf.stages:
        console.print(
            f"  {s.name}: {len(s.columns)} column(s), {s.num_records} records in"
            f" {s.num_row_groups} row group(s) of {s.buffer_size}{escape(_seed_text(s.seed))},"
            f" fingerprint {plans[s.name].fingerprint.short}"
        )
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from dd_assets.preview import preview_stage

    wf = load_workflow(args.config)
    stage = args.stage or wf.stages[0].name
    result = preview_stage(wf, stage, args.n)
    print_table(
        result.table.to_pylist(),
        f"{wf.name} / {stage}: first {result.table.num_rows} rows",
        result.table.column_names,  # the header even when every row was dropped
    )
    if result.dropped:
        err_console.print(f"[yellow]{sum(result.dropped.values())} row(s) dropped:[/yellow]")
        for reason, n in result.dropped.most_common():
            err_console.print(f"  {n}x {reason}", markup=False, highlight=False)
    return 0


def _parse_partitions(spec: str | None, total: int) -> list[int]:
    if not spec:
        return list(range(total))
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise SystemExit(
                f"error: --partitions {spec!r}: use row-group ids like 0-9 or 00003,00007"
            ) from None
        if not (0 <= a <= b < total):
            raise SystemExit(f"error: --partitions {spec!r}: row groups run from 0 to {total - 1}")
        out += range(a, b + 1)
    return sorted(set(out))


def cmd_materialize(args: argparse.Namespace) -> int:
    from dd_assets.launch import materialize_workflow

    wf = load_workflow(args.config)
    report = materialize_workflow(
        wf,
        stages=args.stage,
        resume=args.resume,
        partitions=lambda total: _parse_partitions(args.partitions, total),
        progress=not args.no_progress,
    )
    for line in report.lines:
        console.print(line, highlight=False)
    if not report.success:
        label = "stopped early (partial result)" if report.partial else "failed"
        err_console.print(f"[red]{label}:[/red] {report.error}", highlight=False)
        return EXIT_PARTIAL if report.partial else 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from dd_assets.status import workflow_status

    wf = load_workflow(args.config)
    rows = workflow_status(wf)
    table = Table(title=f"{wf.name}: status")
    for c in ("stage", "fingerprint", "row groups", "missing", "records", "stale", "finalize"):
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(
            r.stage,
            r.fingerprint,
            f"{r.done}/{r.total}",
            r.missing_text,
            str(r.records),
            "yes" if r.stale else "no",
            r.finalize_state or "-",
        )
    console.print(table)
    # Reasons go below the table: they are sentences, and folding them into a cell hides them.
    for r in rows:
        if r.stale:
            console.print(f"{r.stage}: stale: {r.stale_reason}", highlight=False, soft_wrap=True)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from dd_assets.asset_checks import check_workflow

    wf = load_workflow(args.config)
    report = check_workflow(wf, stages=args.stage)
    table = Table(title=f"{wf.name}: asset checks (run {report.run_id})")
    for c in ("stage", "check", "result", "severity"):
        table.add_column(c, no_wrap=True)
    table.add_column("details", overflow="fold")
    for r in report.rows:
        result = Text("pass", style="green") if r.passed else Text("FAIL", style="bold red")
        if not r.passed and not r.blocking:
            result = Text("warn", style="yellow")
        table.add_row(r.stage, r.check, result, r.severity, Text(r.description))
    console.print(table)
    if report.error:
        err_console.print(f"[red]check run failed:[/red] {escape(report.error)}", highlight=False)
        return 1
    # Failures again below the table, whole: they are sentences naming files and row groups,
    # and a folded table cell hides them.
    failed = report.failed_blocking
    for r in failed:
        err_console.print(
            f"[red]FAIL[/red] {r.stage}/{r.check}: {escape(r.description)}", highlight=False
        )
    for r in report.warnings:
        err_console.print(
            f"[yellow]warning:[/yellow] {r.stage}/{r.check}: {escape(r.description)}",
            highlight=False,
        )
    if failed:
        names = ", ".join(f"{r.stage}/{r.check}" for r in failed)
        err_console.print(f"[red]failed:[/red] {len(failed)} blocking check(s): {names}")
        return 1
    console.print(
        f"ok: {len(report.rows)} check(s), {len(report.warnings)} warning(s)", highlight=False
    )
    return 0


def cmd_unseal(args: argparse.Namespace) -> int:
    from dd_assets.stage_runner import plan_workflow
    from resources.store import PartitionStore
    from resources.store_resource import default_root

    wf = load_workflow(args.config)
    plan = plan_workflow(wf).get(args.stage)
    if plan is None:
        raise KeyError(
            f"no stage {args.stage!r} in workflow {wf.name!r}; stages: "
            + ", ".join(s.name for s in wf.stages)
        )
    store = PartitionStore(default_root())
    state = store.state(plan.ref) if store.stage_dir(plan.ref).exists() else {}
    if not state.get("finalize_state"):
        console.print(f"stage {args.stage!r} is not finalized; nothing to do", highlight=False)
        return 0
    moved = store.unseal(plan.ref)
    where = f"; its final output was moved to {moved}" if moved else ""
    console.print(
        f"stage {args.stage!r} unsealed{where}. New row groups can be written; materialize"
        " again to regenerate the final output.",
        highlight=False,
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dd_assets.export import export_stage

    wf = load_workflow(args.config)
    stage = args.stage or wf.stages[-1].name
    out = export_stage(wf, stage, args.format, args.output)
    console.print(f"wrote {out.rows} rows of {wf.name}/{stage} to {out.path}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from dd_assets.cli_runs import ensure_dagster_home

    env = dict(os.environ)
    if args.config:
        load_workflow(args.config)  # fail here, readably, rather than inside the webserver
        env["DD_ASSETS_CONFIG"] = str(Path(args.config).resolve())
    env["DAGSTER_HOME"] = ensure_dagster_home()
    # `dagster dev` is "superseded" by the separate dagster-dg-cli; it works and needs nothing more.
    env.setdefault("PYTHONWARNINGS", "ignore:Function `dev_command` is superseded")
    # `dagster dev` = webserver + daemon: without the daemon, runs and backfills launched from
    # the UI ("Materialize missing partitions") would sit in the queue forever.
    cmd = [
        str(Path(sys.executable).with_name("dagster")),
        "dev",
        "-m",
        "dd_assets.definitions",
        "-a",
        "defs",
        "-h",
        "127.0.0.1",
        "-p",
        str(args.port),
    ]
    console.print(
        f"Dagster UI on http://127.0.0.1:{args.port} (DAGSTER_HOME={env['DAGSTER_HOME']})"
    )
    sys.stdout.flush()
    # exec, not a child process: a signal for `dd-assets ui` (Ctrl-C, a supervisor's SIGTERM)
    # must reach dagster dev, which then stops its webserver, daemon and code server.
    os.execve(cmd[0], cmd, env)


def _user_errors() -> tuple[type[Exception], ...]:
    """Failure kinds whose message is written for users (path, cause, fix); anything else is a bug."""
    from dd_assets.engine.rowgroup import GenerationError
    from resources.llm.cache import RequestCacheError
    from resources.llm.cells import EarlyStopError
    from resources.llm.client import LLMError
    from resources.store import StoreError

    return (
        WorkflowConfigError,
        StoreError,
        GenerationError,
        LLMError,
        RequestCacheError,
        EarlyStopError,
        NotImplementedError,
        FileNotFoundError,
        KeyError,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dd-assets", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a workflow config and report every error at once")
    v.add_argument("config")
    v.set_defaults(func=cmd_validate)

    pv = sub.add_parser(
        "preview", help="generate the first rows of a stage, without Dagster or disk"
    )
    pv.add_argument("config")
    pv.add_argument("--stage", help="stage name (default: the first stage)")
    pv.add_argument("-n", type=int, default=10, help="rows to show (default 10)")
    pv.set_defaults(func=cmd_preview)

    m = sub.add_parser("materialize", help="generate (or resume) stages through Dagster")
    m.add_argument("config")
    m.add_argument("--stage", action="append", help="only this stage (repeatable; default: all)")
    m.add_argument("--resume", choices=["if_possible", "always", "never"], default="if_possible")
    m.add_argument("--partitions", help="row groups, e.g. 0-9 or 3,7 (default: all)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.set_defaults(func=cmd_materialize)

    st = sub.add_parser("status", help="per stage: fingerprint, row groups done/missing, stale")
    st.add_argument("config")
    st.set_defaults(func=cmd_status)

    ck = sub.add_parser(
        "check", help="run the asset checks of every stage (exit 1 if a blocking one fails)"
    )
    ck.add_argument("config")
    ck.add_argument("--stage", action="append", help="only this stage (repeatable; default: all)")
    ck.set_defaults(func=cmd_check)

    un = sub.add_parser(
        "unseal", help="invalidate a stage's final output (moved aside) so it can grow again"
    )
    un.add_argument("config")
    un.add_argument("stage")
    un.set_defaults(func=cmd_unseal)

    ex = sub.add_parser("export", help="stream a stage's rows to one jsonl/csv/parquet file")
    ex.add_argument("config")
    ex.add_argument("--stage", help="stage name (default: the last stage)")
    ex.add_argument("--format", choices=["jsonl", "csv", "parquet"], default="jsonl")
    ex.add_argument("--output", "-o", required=True, help="file to write (atomically)")
    ex.set_defaults(func=cmd_export)

    ui = sub.add_parser("ui", help="start the Dagster UI (and its daemon) on 127.0.0.1")
    ui.add_argument(
        "config", nargs="?", help="workflow config (default: $DD_ASSETS_CONFIG or the quickstart)"
    )
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except _user_errors() as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return EXIT_PARTIAL if type(exc).__name__ == "EarlyStopError" else 1


if __name__ == "__main__":
    sys.exit(main())
