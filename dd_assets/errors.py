"""Every error dd-assets raises for a user to read descends from `DdAssetsError`, so the CLI
catches one type and prints one `error:` line; anything else escaping is a bug (a traceback).

Each layer has one base class here; the concrete errors live beside the code that raises them:

    DdAssetsError                      exit_code 1 unless said otherwise
    ├── ConfigError                    config: the workflow config is wrong
    │   └── WorkflowConfigError        every issue at once, with YAML paths (config.errors)
    ├── GenerationError                engine: a row group cannot be produced (config/data)
    ├── StoreError                     store: what is on disk; the message names path and fix
    │   ├── CorruptStageError          stage.json or a row-group file cannot be trusted
    │   ├── ConfigChangedError         --resume always, but the config changed
    │   ├── MissingRowGroupsError      a reader asked for row groups not on disk
    │   ├── StageSealedError           the stage is finalized; rows cannot be added
    │   ├── FinalMissingError          no (current) final output of a stage
    │   ├── EmptyFinalError            finalize kept no rows and allow_empty is off
    │   ├── SeedFileError              a seed file is missing or unreadable
    │   ├── ObjectStoreError           an s3:// (gs://, az://) data root cannot be used:
    │   │                              scheme, endpoint, bucket, credentials (store.objects)
    │   └── ObjectReplacedError        an object was replaced by another run's write while
    │                                  it was read; nothing mixed, rerun (store.objects)
    ├── LLMError                       llm: endpoint and cache
    │   ├── LLMConfigError             a call cannot be made as configured (alias, key)
    │   ├── LLMFatalError              the endpoint refused in a way no retry fixes (stop)
    │   ├── LLMRequestRejected         this one request was refused (its row is dropped)
    │   ├── LLMRetryableExhausted      transient faults outlasted the retries
    │   ├── RequestCacheError          the request cache file cannot be used
    │   ├── RequestSlotsError          the shared request slots (lock files, PostgreSQL) fail
    │   ├── ToolError                  an MCP provider or tool_alias cannot be used (llm.tools)
    │   ├── EarlyStopError             exit_code 3: too many cells dropped; partial result
    │   └── UnfinishedCellsError       exit_code 4: cells a transient fault left unanswered;
    │                                  their row groups were not saved (runners.materialize)
    ├── UsageError                     exit_code 2: a command's arguments cannot be used as given
    ├── RunError                       runners/dagster: what a run was asked to do
    │   ├── UnknownStageError          a stage name the workflow does not have
    │   ├── ApprovalError              a file cannot be approved as a stage's output
    │   ├── TargetNotReachedError      target_records rows do not pass finalize (yet)
    │   ├── DropBudgetError            exit_code 5: a stage dropped more rows than
    │   │                              run.max_drop_rate allows (runners.checks)
    │   └── InstanceError              the Dagster instance (DAGSTER_HOME) cannot be used
    └── Interrupted                    Ctrl-C / SIGTERM: exit 130 / 143; what completed is saved
"""

from __future__ import annotations

# Exit codes beyond 1 (an error) and 2 (bad usage), one per way a run can end without its
# dataset being whole and good, so CI can tell them apart (docs/ci.md):
# the run stopped early: some row groups are on disk, the dataset is not whole.
EXIT_PARTIAL = 3
# transient faults left cells unanswered: those row groups are not saved; rerunning later completes them.
EXIT_UNFINISHED = 4
# every row group is there, but a stage dropped more rows than run.max_drop_rate allows.
EXIT_DROP_BUDGET = 5


# What str.splitlines() breaks a line at. A name from the user (a path, a column, a value) can
# hold any of them; printed raw, one error would read as several lines (a `\r` in a seed path).
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_ESCAPES = {ord(c): repr(c)[1:-1] for c in _LINE_BREAKS}
_ESCAPES_BUT_NEWLINE = {k: v for k, v in _ESCAPES.items() if k != ord("\n")}


def one_line(text: str, keep_newlines: bool = False) -> str:
    """`text` with its line breaks written as escapes (`\\r`), except `\\n` when
    `keep_newlines` (an error's own indented detail lines)."""
    return text.translate(_ESCAPES_BUT_NEWLINE if keep_newlines else _ESCAPES)


class DdAssetsError(Exception):
    """An error written for users: the message names the thing and the fix."""

    exit_code: int = 1


class ConfigError(DdAssetsError):
    """The workflow config (or a command's arguments about it) is wrong."""


class GenerationError(DdAssetsError):
    """A row group cannot be produced at all (a config or data problem, not a flaky cell)."""


class StoreError(DdAssetsError):
    """A problem with what is on disk; the message says which path and what to do."""


class LLMError(DdAssetsError):
    """An LLM endpoint or the request cache failed in a way the user must act on."""


class UsageError(DdAssetsError):
    """The command line asks for something it cannot mean (exit 2, like argparse's errors)."""

    exit_code = 2


class RunError(DdAssetsError):
    """A run was asked for something the workflow or its data cannot give."""


class UnknownStageError(RunError, KeyError):
    """A stage name the workflow does not have; the message lists the stages it has."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Interrupted(DdAssetsError):
    """A command stopped by Ctrl-C or SIGTERM; the message says what was saved. The CLI prints
    it as is (not an `error:`: the user asked for it) and exits 130 or 143 by the signal."""

    DEFAULT = "interrupted; rerun to resume"
    exit_code = 130


def unknown_stages(wanted: set[str], known: list[str], workflow: str) -> UnknownStageError:
    names = ", ".join(map(repr, sorted(wanted)))
    return UnknownStageError(
        f"no stage{'s' if len(wanted) > 1 else ''} {names} in workflow {workflow!r};"
        f" stages: {', '.join(known)}"
    )
