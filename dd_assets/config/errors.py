"""Config errors carry every problem at once, each tied to the YAML path the user must edit."""

from __future__ import annotations

from dataclasses import dataclass, field

from dd_assets.errors import ConfigError, one_line


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a workflow config, located by its path (``stages[0].columns[2].expr``)."""

    path: str
    message: str
    line: int | None = None
    file: str | None = None  # set when one error gathers the issues of several files

    def render(self, source: str | None = None) -> str:
        source = self.file or source
        where = self.path or "<root>"
        if source and self.line is not None:
            where = f"{source}:{self.line}: {where}"
        elif source:
            where = f"{source}: {where}"
        elif self.line is not None:
            where = f"line {self.line}: {where}"
        return one_line(f"{where}: {self.message}")


@dataclass
class WorkflowConfigError(ConfigError):
    """Raised (never as a ValueError, so pydantic lets it through unwrapped) with all issues found."""

    issues: list[ConfigIssue]
    source: str | None = field(default=None)

    def __str__(self) -> str:
        n = len(self.issues)
        head = f"{n} error{'s' if n != 1 else ''} in workflow config"
        if self.source:
            head += f" {one_line(self.source)}"
        return head + ":\n" + "\n".join("  " + i.render(self.source) for i in self.issues)


def format_loc(loc: tuple[str | int, ...]) -> str:
    """Render a pydantic/our location tuple as ``stages[0].columns[1].params.values``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
