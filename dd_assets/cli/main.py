"""`dd-assets` command line: the parser and the one place errors become exit codes.

Exit codes are meant for CI: 0 ok, 1 a problem with the workflow or its data (one `error:` line),
2 bad usage, 3 a run that stopped early (what completed is saved), 4 cells left unfinished by
transient endpoint faults (rerun later), 5 a stage over its drop budget (docs/ci.md), 130 / 143
interrupted by Ctrl-C / SIGTERM (what completed is saved). `--debug` prints the stack above the
`error:` line. Anything else escaping is a bug, and shows its traceback."""

from __future__ import annotations

import argparse
import gc
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from dd_assets.cli import commands
from dd_assets.cli.interrupts import watch_signals
from dd_assets.cli.project_env import project_env
from dd_assets.errors import EXIT_PARTIAL, DdAssetsError, Interrupted, one_line

DEBUG_ENV = "DD_ASSETS_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dd-assets", description=__doc__.splitlines()[0])
    p.add_argument(
        "--debug",
        action="store_true",
        default=bool(os.environ.get(DEBUG_ENV)),
        help=f"print the stack of an error (also: {DEBUG_ENV}=1)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a workflow config and report every error at once")
    v.add_argument("config")
    v.set_defaults(func=commands.cmd_validate)

    pv = sub.add_parser(
        "preview", help="generate the first rows of a stage, without Dagster or disk"
    )
    pv.add_argument("config")
    pv.add_argument("--stage", help="stage name (default: the first stage)")
    pv.add_argument("-n", type=int, default=10, help="rows to show (default 10)")
    pv.set_defaults(func=commands.cmd_preview)

    m = sub.add_parser("materialize", help="generate (or resume) stages through Dagster")
    m.add_argument("config")
    m.add_argument("--stage", action="append", help="only this stage (repeatable; default: all)")
    m.add_argument("--resume", choices=["if_possible", "always", "never"], default="if_possible")
    m.add_argument("--partitions", help="row groups, e.g. 0-9 or 3,7 (default: all)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.add_argument(
        "--retry-dropped",
        action="store_true",
        help="regenerate row groups that dropped rows, asking exactly those cells again",
    )
    m.add_argument(
        "--rerun-from",
        metavar="STAGE",
        help="regenerate STAGE and every stage below it (fresh LLM calls; old data moved aside)",
    )
    m.set_defaults(func=commands.cmd_materialize)

    st = sub.add_parser("status", help="per stage: fingerprint, row groups done/missing, stale")
    st.add_argument("config")
    st.set_defaults(func=commands.cmd_status)

    ck = sub.add_parser(
        "check", help="run the asset checks of every stage (exit 1 if a blocking one fails)"
    )
    ck.add_argument("config")
    ck.add_argument("--stage", action="append", help="only this stage (repeatable; default: all)")
    ck.set_defaults(func=commands.cmd_check)

    un = sub.add_parser(
        "unseal", help="invalidate a stage's final output (moved aside) so it can grow again"
    )
    un.add_argument("config")
    un.add_argument("stage")
    un.set_defaults(func=commands.cmd_unseal)

    ex = sub.add_parser("export", help="stream a stage's rows to one jsonl/csv/parquet file")
    ex.add_argument("config")
    ex.add_argument("--stage", help="stage name (default: the last stage)")
    ex.add_argument(
        "--format",
        choices=["jsonl", "csv", "parquet"],
        help="default: from the output's extension (.jsonl .ndjson .csv .parquet, any case)",
    )
    ex.add_argument("--output", "-o", required=True, help="file to write (atomically)")
    ex.add_argument(
        "--dropped-columns",
        action="store_true",
        help="export the columns the stage dropped (run.keep_dropped_columns) instead",
    )
    ex.add_argument(
        "--drops",
        action="store_true",
        help="export the stage's dropped rows (row, column, reason, status, message) instead",
    )
    ex.set_defaults(func=commands.cmd_export)

    rp = sub.add_parser(
        "report", help="profile stages: one self-contained HTML file with charts, or tables"
    )
    rp.add_argument("config")
    rp.add_argument("--stage", action="append", help="only this stage (repeatable; default: all)")
    rp.add_argument("--format", choices=["html", "text", "json"], default="html")
    rp.add_argument("--output", "-o", help="file to write (atomically); html default: report.html")
    rp.set_defaults(func=commands.cmd_report)

    ap = sub.add_parser(
        "approve", help="make a reviewed file the output a stage hands downstream (review gate)"
    )
    ap.add_argument("config")
    ap.add_argument("stage")
    ap.add_argument("file", nargs="?", help="parquet, csv or jsonl with the stage's columns")
    ap.add_argument("--clear", action="store_true", help="revert to the generated output")
    ap.set_defaults(func=commands.cmd_approve)

    im = sub.add_parser(
        "import",
        help="write a native workflow equivalent to a DataDesigner config (write_config output)",
    )
    im.add_argument("dd_config", help="DataDesigner config, YAML or JSON")
    im.add_argument(
        "--provider",
        action="append",
        default=[],
        metavar="NAME=BASE_URL[,api_key_env=VAR]",
        help="endpoint of a provider the model configs name (repeatable; built in: nvidia,"
        " openai, openrouter)",
    )
    im.add_argument(
        "--mcp-provider",
        action="append",
        default=[],
        metavar="NAME=URL[,api_key_env=VAR] | NAME=stdio:COMMAND [ARG ...]",
        help="an MCP server the tool_configs name (repeatable)",
    )
    im.add_argument(
        "--function",
        action="append",
        default=[],
        metavar="NAME=package.module:function",
        help="bind a custom column's generator_function (a bare name in the config) to a Python"
        " function, or NAME=file.py:function (repeatable)",
    )
    im.add_argument("--output", "-o", required=True, help="workflow YAML to write (atomically)")
    im.add_argument("--name", help="workflow and stage name (default: from the file name)")
    im.add_argument("--num-records", type=int, default=100)
    im.add_argument("--buffer-size", type=int, default=100)
    im.set_defaults(func=commands.cmd_import)

    ui = sub.add_parser("ui", help="start the Dagster UI (and its daemon) on 127.0.0.1")
    ui.add_argument(
        "config", nargs="?", help="workflow config or folder of them (default: $DD_ASSETS_CONFIG)"
    )
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=commands.cmd_ui)
    return p


# Commands that only read and print, and answer at once (issue 17, docs/speed.md).
QUICK_EXIT = (commands.cmd_validate, commands.cmd_status)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code = _run(args)
    if argv is None and args.func in QUICK_EXIT:
        # Run as the program (argv from sys.argv), it exits next, and Python's exit runs full
        # garbage collections over every object the command loaded (~50,000: the config models,
        # pyarrow, numpy): ~0.05-0.15 s of a `status`. Frozen, they are left to the OS as at any
        # exit; these commands leave nothing whose finalizer matters (they run no user code,
        # and their only write, a footer index, is atomic and closed). Called with argv (tests,
        # in process): untouched.
        gc.freeze()
    return code


def _run(args: argparse.Namespace) -> int:
    func: Callable[[argparse.Namespace], int] = args.func
    with watch_signals() as signals:
        try:
            with project_env():  # ./.env, as Dagster's tools read it: one instance per folder
                return func(args)
        except (KeyboardInterrupt, Interrupted) as exc:
            if args.debug:
                traceback.print_exc()
            print(str(exc) or Interrupted.DEFAULT, file=sys.stderr)
            return signals.exit_code()
        except DdAssetsError as exc:
            if args.debug:
                traceback.print_exc()
            partial = "stopped early (partial result): " if exc.exit_code == EXIT_PARTIAL else ""
            print(f"error: {partial}{one_line(str(exc), keep_newlines=True)}", file=sys.stderr)
            return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
