"""How the CLI shows things in a terminal: tables of rows and a progress bar (rich)."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

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
        _print_table(rows, columns, title)
        return
    print_title(title)
    print_rows(rows, columns)


def print_title(title: str) -> None:
    """A command's first line, printed (and flushed) before the work it announces, so that
    the command answers at once; what follows is `print_rows`."""
    console.print(Text(title, style="bold"))
    console.file.flush()


def print_rows(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """The rows under a title already printed: one table, or one per record when wide."""
    if len(columns) * 14 <= console.width:
        _print_table(rows, columns, None)
        return
    _print_records(rows, columns)


def _print_table(rows: list[dict[str, Any]], columns: list[str], title: str | None) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*(_cell(r.get(c)) for c in columns))
    console.print(table)


def _print_records(rows: list[dict[str, Any]], columns: list[str]) -> None:
    for i, r in enumerate(rows):
        table = Table(title=f"row {i}", show_header=False, title_justify="left")
        table.add_column("column", style="cyan", no_wrap=True)
        table.add_column("value", overflow="fold")
        for c in columns:
            table.add_row(c, _cell(r.get(c), 200))
        console.print(table)


class ProgressBars:
    """One bar per wave of stages, fed (label, done, total) by the materialize watcher."""

    def __init__(self) -> None:
        # Here: only materialize shows progress, and rich.progress loads more of rich.
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("row groups"),
            TimeElapsedColumn(),
            console=err_console,
        )
        self.tasks: dict[str, Any] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(label, total=total)
        self.progress.update(self.tasks[label], completed=done)

    def __enter__(self) -> ProgressBars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
