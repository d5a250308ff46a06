"""The `dd-assets` subcommands: each loads and plans the workflow once, calls one function of
the runners (no Dagster) or of the Dagster layer, and prints. Commands that need no Dagster run
never import it, so they answer at once."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from dd_assets.cli.render import (
    ProgressBars,
    console,
    err_console,
    print_rows,
    print_table,
    print_title,
)
from dd_assets.config import FileSeed, JoinSeed, StageSeed, load_workflow, load_workflows
from dd_assets.errors import ConfigError, Interrupted
from dd_assets.runners.plan import StagePlan, WorkflowPlan, plan_workflow
from dd_assets.store.layout import default_root

if TYPE_CHECKING:
    from dd_assets.store.partition_store import PartitionStore

T = TypeVar("T")


def _plan(config: str) -> WorkflowPlan:
    """The workflow the command names, planned once (seed files hashed once)."""
    return plan_workflow(load_workflow(config))


def _store() -> PartitionStore:
    # Imported when a command needs the store: it loads pyarrow, which `validate` never needs.
    from dd_assets.store.partition_store import PartitionStore

    return PartitionStore(default_root())


def _seed_text(seed: object) -> str:
    if isinstance(seed, StageSeed):
        return f", seed {seed.stage} ({seed.mode})"
    if isinstance(seed, JoinSeed):
        return f", joins {' + '.join(seed.stages)} on {', '.join(seed.keys)}"
    if isinstance(seed, FileSeed):
        return f", seed file {Path(seed.path).name}"
    return ""


def cmd_validate(args: argparse.Namespace) -> int:
    plan = _plan(args.config)  # with seed files hashed: the fingerprints runs will use
    wf = plan.workflow
    console.print(
        f"[green]ok[/green] {escape(args.config)}: workflow {wf.name!r}, {len(wf.stages)} stage(s)"
    )
    for s in wf.stages:
        console.print(
            f"  {s.name}: {len(s.columns)} column(s), {s.num_records} records in"
            f" {s.num_row_groups} row group(s) of {s.buffer_size}{escape(_seed_text(s.seed))},"
            f" fingerprint {plan[s.name].fingerprint.short}"
        )
    return 0


def _options(options: list[str], parse: Callable[[str], tuple[str, T]]) -> dict[str, T]:
    """`NAME=...` options of `import`, by name; a malformed one is a config error (one line)."""
    out: dict[str, T] = {}
    for option in options:
        try:
            name, value = parse(option)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        out[name] = value
    return out


def cmd_import(args: argparse.Namespace) -> int:
    import yaml

    from dd_assets.config.datadesigner import (
        import_datadesigner,
        parse_function_option,
        parse_mcp_provider_option,
        parse_provider_option,
    )
    from dd_assets.store.atomic import atomic_write_bytes

    providers = _options(args.provider, parse_provider_option)
    mcp_providers = _options(args.mcp_provider, parse_mcp_provider_option)
    functions = _options(args.function, parse_function_option)
    output = Path(args.output)
    workflow, notes = import_datadesigner(
        Path(args.dd_config),
        output,
        providers=providers,
        functions=functions,
        mcp_providers=mcp_providers,
        name=args.name,
        num_records=args.num_records,
        buffer_size=args.buffer_size,
    )
    text = yaml.safe_dump(workflow, sort_keys=False, allow_unicode=True, width=100)
    atomic_write_bytes(output, text.encode("utf-8"))
    table = Table("where", "status", "what", title=f"{args.dd_config} -> {args.output}")
    for note in notes:
        color = {"lost": "yellow", "mapped": "cyan"}.get(note.status, "green")
        table.add_row(escape(note.where), f"[{color}]{note.status}[/{color}]", escape(note.detail))
    if notes:
        console.print(table)
    lost = sum(n.status == "lost" for n in notes)
    console.print(
        f"[green]wrote[/green] {escape(str(output))}: workflow {workflow['name']!r},"
        f" {len(workflow['stages'][0].get('columns', []))} column(s); {lost} thing(s) lost"
        " (listed above); everything else maps as said"
    )
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from dd_assets.runners.preview import preview_rows, preview_stage

    plan = _plan(args.config)
    stage = args.stage or plan.workflow.stages[0].name
    n = preview_rows(plan[stage], args.n)  # a stage that cannot be previewed fails here
    # The title first, as soon as it is known: generating the rows loads the engine (numpy,
    # pyarrow, Faker: most of a preview's time); dropped rows are listed after the table.
    print_title(f"{plan.name} / {stage}: first {n} rows")
    result = preview_stage(plan[stage], n)
    print_rows(result.table.to_pylist(), result.table.column_names)  # header even if all dropped
    if result.drops:
        err_console.print(f"[yellow]{len(result.drops)} row(s) dropped:[/yellow]")
        why = Counter(f"{d.label}: {d.message}" for d in result.drops)
        for reason, n in why.most_common():
            err_console.print(f"  {n}x {reason}", markup=False, highlight=False)
    return 0


def parse_partitions(spec: str | None, total: int) -> list[int]:
    if not spec:
        return list(range(total))
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ConfigError(
                f"--partitions {spec!r}: use row-group ids like 0-9 or 00003,00007"
            ) from None
        if not (0 <= a <= b < total):
            raise ConfigError(f"--partitions {spec!r}: row groups run from 0 to {total - 1}")
        out += range(a, b + 1)
    return sorted(set(out))


def cmd_materialize(args: argparse.Namespace) -> int:
    plan = _plan(args.config)  # a bad config answers before Dagster is even imported
    selected = plan.select(args.stage)  # unknown stages fail before the instance is touched
    from dd_assets.dagster.instance import get_instance
    from dd_assets.dagster.materialize import materialize_workflow

    stages, resume, store = args.stage, args.resume, _store()
    if args.rerun_from:
        stages = _rerun(args, plan, store)
        resume = "never"
        selected = plan.select(stages)
    before = _committed(store, selected)
    bars = None if args.no_progress else ProgressBars()
    try:
        with bars or _Nothing():
            report = materialize_workflow(
                plan,
                store,
                get_instance(),
                stages=stages,
                resume=resume,
                partitions=(lambda total: parse_partitions(args.partitions, total))
                if args.partitions
                else None,
                progress=bars,
                retry_dropped=args.retry_dropped,
            )
    except KeyboardInterrupt:
        saved = len(_committed(store, selected) - before)
        raise Interrupted(
            f"interrupted; {saved} row group{'' if saved == 1 else 's'} saved; rerun to resume"
        ) from None
    for line in report.lines:
        console.print(line, highlight=False)
    if report.error is not None:
        raise report.error
    return 0


def _rerun(args: argparse.Namespace, plan: WorkflowPlan, store: PartitionStore) -> list[str]:
    from dd_assets.runners.rerun import rerun_stages

    flag = f"--rerun-from {args.rerun_from}"
    if args.resume == "always":
        raise ConfigError(
            f"{flag} regenerates stages and --resume always only ever reuses what is on disk;"
            " drop --resume always (a rerun moves the old data aside, never deletes it)"
        )
    if args.stage or args.partitions:
        raise ConfigError(
            f"{flag} regenerates whole stages: {args.rerun_from!r} and every stage below it;"
            " drop --stage/--partitions (to regenerate some stages only, use --resume never"
            " --stage S)"
        )
    stages = rerun_stages(plan, store, args.rerun_from)
    console.print(
        f"rerun from {args.rerun_from!r}: regenerating {', '.join(stages)} with fresh LLM calls;"
        " their current data is moved aside (<fp12>.replaced-<time>, never deleted) and"
        " finalized stages among them are unsealed by it",
        highlight=False,
    )
    return stages


def _committed(store: PartitionStore, plans: list[StagePlan]) -> set[tuple[str, int]]:
    """Row-group files on disk (path, inode): a regenerated file is a new one."""
    out: set[tuple[str, int]] = set()
    for p in plans:
        for path in store.batch_paths(p.ref):
            with contextlib.suppress(FileNotFoundError):
                out.add((str(path), path.stat().st_ino))
    return out


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def cmd_status(args: argparse.Namespace) -> int:
    plan = _plan(args.config)
    # The title first, as soon as the config is known to be valid: reading the store loads
    # pyarrow and numpy (and a big stage's footer index), most of a status's time.
    print_title(f"{plan.name}: status")
    from dd_assets.runners.status import workflow_status

    rows = workflow_status(plan, _store())
    table = Table()
    columns = ("stage", "fingerprint", "row groups", "missing", "records", "dropped")
    for c in (*columns, "stale", "finalize"):
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(
            r.stage,
            r.fingerprint,
            f"{r.done}/{r.total}",
            r.missing_text,
            str(r.records),
            str(r.dropped),
            "yes" if r.stale else "no",
            r.finalize_state or "-",
        )
    console.print(table)
    # Reasons go below the table: they are sentences, and folding them into a cell hides them.
    for r in rows:
        if r.stale:
            console.print(f"{r.stage}: stale: {r.stale_reason}", highlight=False, soft_wrap=True)
        for note in r.notes:
            console.print(f"{r.stage}: {note}", highlight=False, soft_wrap=True, markup=False)
        if r.dropped:
            console.print(
                f"{r.stage}: {r.drops_text}; list them with `dd-assets export {args.config}"
                f" --stage {r.stage} --drops -o drops.jsonl`",
                highlight=False,
                soft_wrap=True,
                markup=False,
            )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    plan = _plan(args.config)  # a bad config answers before Dagster is even imported
    plan.select(args.stage)
    from dd_assets.dagster.check import check_workflow
    from dd_assets.dagster.instance import get_instance

    report = check_workflow(plan, _store(), get_instance(), stages=args.stage)
    table = Table(title=f"{plan.name}: asset checks (run {report.run_id})")
    for c in ("stage", "check", "result", "severity"):
        table.add_column(c, no_wrap=True)
    table.add_column("details", overflow="fold")
    for r in report.rows:
        result = Text("pass", style="green") if r.passed else Text("FAIL", style="bold red")
        if not r.passed and not r.blocking:
            result = Text("warn", style="yellow")
        table.add_row(r.stage, r.check, result, r.severity, Text(r.description))
    console.print(table)
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
    plan = _plan(args.config)[args.stage]
    store = _store()
    if not store.state(plan.ref).get("finalize_state"):
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
    from dd_assets.runners.export import (
        export_dropped_columns,
        export_drops,
        export_format,
        export_stage,
    )

    fmt = export_format(args.output, args.format)  # before anything is read
    plan = _plan(args.config)
    stage = args.stage or plan.workflow.stages[-1].name
    if args.drops and args.dropped_columns:
        raise ConfigError("export either --drops (dropped rows) or --dropped-columns, not both")
    export = (
        export_drops
        if args.drops
        else export_dropped_columns
        if args.dropped_columns
        else export_stage
    )
    out = export(plan[stage], _store(), fmt, args.output)
    console.print(
        f"wrote {out.rows} {out.what} of {plan.name}/{stage} to {out.path}", highlight=False
    )
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    from dd_assets.runners.approve import approve, clear, readers

    plan = _plan(args.config)
    plan[args.stage]  # an unknown stage is an error before anything else
    store = _store()
    below = readers(plan, args.stage)
    if args.clear == bool(args.file):
        raise ConfigError(
            "give the file to approve (`dd-assets approve CONFIG STAGE FILE`) or --clear, not"
            " both or neither"
        )
    if args.clear:
        moved = clear(plan, args.stage, store)
        if moved is None:
            console.print(f"stage {args.stage!r} has no approved output; nothing to do")
            return 0
        console.print(
            f"approval of {args.stage!r} cleared (moved to {moved}); it hands down its generated"
            f" output again to {below.text()}: materialize to regenerate what was built from"
            " the approved rows",
            highlight=False,
        )
        return 0
    approval = approve(plan, args.stage, store, args.file)
    what = "final output" if approval.replaces == "final" else "generated rows"
    console.print(
        f"approved: {approval.rows} rows are the output of {args.stage!r} (instead of its"
        f" {what}), stored as {approval.path}; read by {below.text()}. Materialize to"
        " regenerate what was built from other data",
        highlight=False,
    )
    if below.unaffected:
        console.print(
            f"note: {', '.join(below.unaffected)} read(s) the generated row groups of"
            f" {args.stage!r} (mode: row_group), not its final output, so the approval does not"
            " reach them",
            highlight=False,
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from dd_assets.runners.profile import stage_profile
    from dd_assets.runners.report import report_html, text_sections
    from dd_assets.store.atomic import atomic_write_bytes

    plan = _plan(args.config)
    store = _store()
    profiles = [stage_profile(p, store) for p in plan.select(args.stage)]
    if args.format == "text":
        for p in profiles:
            for title, rows in text_sections(p):
                print_table(rows, title)
        return 0
    if args.format == "json":
        text = json.dumps([p.to_dict() for p in profiles], indent=2, default=str) + "\n"
    else:
        text = report_html(profiles)
    output = args.output or ("report.html" if args.format == "html" else None)
    if output is None:
        sys.stdout.write(text)
        return 0
    atomic_write_bytes(output, text.encode())
    findings = sum(len(p.drift) for p in profiles)
    console.print(
        f"wrote the profile of {len(profiles)} stage(s) of {plan.name} to {escape(str(output))}"
        + (f" ([yellow]{findings} drift finding(s)[/yellow])" if findings else "")
    )
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from dd_assets.dagster.instance import get_instance
    from dd_assets.dagster.names import CONFIG_ENV
    from dd_assets.dagster.workspace import write_workspace

    env = dict(os.environ)
    if args.config:
        # A file or a folder of them (one code location), as DD_ASSETS_CONFIG: fail here,
        # readably, rather than inside the webserver.
        load_workflows(args.config)
        env[CONFIG_ENV] = str(Path(args.config).resolve())
    elif not env.get(CONFIG_ENV):
        raise ConfigError(
            "name a workflow: `dd-assets ui CONFIG` (a YAML file or a folder of them), or set"
            f" {CONFIG_ENV}"
        )
    # Created (under the instance lock) before the webserver, daemon and code server open it:
    # they take no lock, and would race each other, or a CLI command, on a new instance.
    get_instance().dispose()
    env["DAGSTER_HOME"] = os.environ["DAGSTER_HOME"]
    env["PWD"] = os.getcwd()  # dagster dev reads ./.env too; its ${PWD} must mean this folder
    # `dagster dev` is "superseded" by the separate dagster-dg-cli; it works and needs nothing more.
    env.setdefault("PYTHONWARNINGS", "ignore:Function `dev_command` is superseded")
    # `dagster dev` = webserver + daemon: without the daemon, runs and backfills launched from
    # the UI ("Materialize missing partitions") would sit in the queue forever. The workspace
    # names the code location as workspace.yaml does, so CLI runs are found and re-executable.
    cmd = [
        str(Path(sys.executable).with_name("dagster")),
        "dev",
        "-w",
        str(write_workspace(env["DAGSTER_HOME"])),
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
