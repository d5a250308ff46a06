"""Load a workflow from YAML (or a dict) into WorkflowConfig, turning every problem, structural or
semantic, into ConfigIssues that carry the YAML path and line."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from yaml.nodes import MappingNode, Node, SequenceNode

from dd_assets.config.base import is_identifier
from dd_assets.config.columns import SamplerColumnConfig
from dd_assets.config.datadesigner import expand_workflow
from dd_assets.config.errors import ConfigIssue, WorkflowConfigError, format_loc
from dd_assets.config.functions import bind_functions
from dd_assets.config.limits import MAX_CONFIG_BYTES
from dd_assets.config.models import ModelConfig
from dd_assets.config.strict_yaml import YamlProblem, parse_yaml, read_config_text
from dd_assets.config.workflow import (
    FileColumns,
    FileSeed,
    StageConfig,
    WorkflowConfig,
    semantic_issues,
)

_TAG_RE = re.compile(r"^(function-after|function-before|function-wrap|function-plain)\[.*\]\Z")


def _line_map(node: Node, path: tuple[Any, ...] = (), out: dict | None = None) -> dict:
    out = {} if out is None else out
    out[path] = node.start_mark.line + 1
    if isinstance(node, MappingNode):
        for key, value in node.value:
            k = key.value
            out[(*path, k)] = key.start_mark.line + 1
            _line_map(value, (*path, k), out)
            out[(*path, k)] = key.start_mark.line + 1
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, (*path, i), out)
    return out


_ABSENT = object()


def _clean_loc(
    loc: tuple[Any, ...], data: Any = _ABSENT, keep_last: bool = False
) -> tuple[Any, ...]:
    """Drop pydantic's union-tag and validator segments so the path matches the YAML.

    A segment that names a union member (``category``, ``filter`` ...) is a tag only where the
    input has no such key: ``params.category`` of a subcategory sampler, or a subcategory value
    list keyed ``uniform``, are real YAML keys and stay. `keep_last`: the last segment is a field
    name (a missing field), never a tag."""
    out = []
    node = data
    for k, part in enumerate(loc):
        if isinstance(part, str):
            if _TAG_RE.match(part):
                continue
            is_key = isinstance(node, dict) and part in node
            last = keep_last and k == len(loc) - 1
            if part in _UNION_TAGS and not is_key and not last:
                continue
        out.append(part)
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            node = node[part]
        else:
            node = _ABSENT
    return tuple(out)


_UNION_TAGS = {
    "sampler", "expression", "llm-text", "llm-code", "llm-structured", "llm-judge",
    "category", "subcategory", "uniform", "gaussian", "bernoulli", "poisson", "uuid", "datetime",
    "person_from_faker", "binomial", "scipy", "bernoulli_mixture", "timedelta", "drop_columns", "rename", "filter", "dedupe", "schema_transform",
    "StageSeed", "JoinSeed", "FileSeed", "embedding", "validation", "image", "custom", "code",
    "local_callable",
}  # fmt: skip


def _nearest_line(lines: dict, loc: tuple[Any, ...]) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


_TYPE_ERRORS = {"int_type", "float_type", "bool_type", "string_type", "int_from_float"}
_YAML_TYPES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number with a fraction",
    str: "a string",
    type(None): "null",
    list: "a list",
    dict: "a mapping",
}


def _message(err: dict[str, Any]) -> str:
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return "unknown key (not a field here; check the spelling against docs/config.md)"
    if err["type"] == "missing":
        return "required field is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "invalid_key":
        return (
            f"key {err['input']!r} is not a name: YAML reads an unquoted on/off/yes/no key as a"
            " boolean; quote it or check the key against docs/config.md"
        )
    if err["type"] in _TYPE_ERRORS and "input" in err:
        # The type only, never the value (it may be a pasted key): `buffer_size: true` reads
        # "should be a valid integer; got a boolean".
        return (
            f"{msg}; got {_YAML_TYPES.get(type(err['input']), 'a ' + type(err['input']).__name__)}"
        )
    if err["type"] == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"unknown {ctx.get('discriminator', 'type')} {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
    return msg


def issues_from_validation(
    exc: ValidationError, lines: dict, prefix: tuple = (), data: Any = _ABSENT
) -> list[ConfigIssue]:
    issues = []
    for err in exc.errors():
        raw_loc = err["loc"][:-1] if err["type"] == "invalid_key" else err["loc"]  # not a place
        loc = (*prefix, *_clean_loc(raw_loc, data, err["type"] == "missing"))
        issues.append(ConfigIssue(format_loc(loc), _message(err), _nearest_line(lines, loc)))
    return issues


def _with_lines(issues: list[ConfigIssue], lines: dict) -> list[ConfigIssue]:
    out = []
    for issue in issues:
        loc: list[Any] = []
        for part in re.findall(r"[^.\[\]]+|\[\d+\]", issue.path):
            loc.append(int(part[1:-1]) if part.startswith("[") else part)
        out.append(
            ConfigIssue(issue.path, issue.message, issue.line or _nearest_line(lines, tuple(loc)))
        )
    return out


def _placeholder(raw: Any, j: int) -> dict[str, Any]:
    name = raw.get("name") if isinstance(raw, dict) else None
    if not is_identifier(name):
        name = f"_invalid_column_{j}"
    return {"name": name, "column_type": "sampler", "sampler_type": "uuid", "params": {}}


def _validate_ignoring_unknown_keys(raw: Any) -> tuple[StageConfig | None, set[int]]:
    """Validate a stage with unknown keys removed and structurally broken columns replaced by
    placeholders of the same name, so the rest of the stage still gets its semantic checks.
    Returns the stage (None if it cannot be salvaged) and the placeholder column indices."""
    placeholders: set[int] = set()
    for _ in range(20):
        try:
            return StageConfig.model_validate(raw), placeholders
        except ValidationError as exc:
            raw = copy.deepcopy(raw)
            for err in exc.errors():
                loc = _clean_loc(err["loc"], raw, err["type"] == "missing")
                col = (
                    loc[1]
                    if len(loc) >= 2 and loc[0] == "columns" and isinstance(loc[1], int)
                    else None
                )
                if col is not None and col in placeholders:
                    continue
                if err["type"] == "extra_forbidden":
                    _delete(raw, loc)
                elif (
                    col is not None
                    and isinstance(raw.get("columns"), list)
                    and col < len(raw["columns"])
                ):
                    raw["columns"][col] = _placeholder(raw["columns"][col], col)
                    placeholders.add(col)
                else:
                    return None, placeholders
    return None, placeholders


def _delete(data: Any, loc: tuple[Any, ...]) -> None:
    for part in loc[:-1]:
        data = data[part]
    data.pop(loc[-1], None)


def _partial_semantics(data: dict[str, Any]) -> list[ConfigIssue]:
    """When some parts fail structurally, still check the parts that parsed, so a user sees every
    error in one go instead of fixing them one run at a time."""
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, list):
        return []
    valid: list[tuple[int, StageConfig, set[int]]] = []
    for i, raw in enumerate(raw_stages):
        stage, placeholders = _validate_ignoring_unknown_keys(raw)
        if stage is not None:
            valid.append((i, stage, placeholders))
    if not valid:
        return []
    # Stages that failed structurally still exist: a seed naming one is not an "unknown stage".
    parsed = {v[0] for v in valid}
    unparsed = {
        raw["name"]
        for i, raw in enumerate(raw_stages)
        if isinstance(raw, dict) and isinstance(raw.get("name"), str) and i not in parsed
    }
    raw_models = data.get("models") if isinstance(data.get("models"), dict) else {}
    models = {k: ModelConfig.model_construct() for k in raw_models}
    wf = WorkflowConfig.model_construct(
        name=str(data.get("name", "w")), models=models, stages=[s for _, s, _ in valid]
    )
    issues = []
    for issue in semantic_issues(wf):
        m = re.match(r"stages\[(\d+)\](.*)", issue.path)
        if m:
            i, stage, placeholders = valid[int(m.group(1))]
            if _noise(stage, placeholders, m.group(2), unparsed):
                continue
            issue = ConfigIssue(f"stages[{i}]{m.group(2)}", issue.message)
        issues.append(issue)
    return issues


def _noise(stage: StageConfig, placeholders: set[int], rest: str, unparsed: set[Any]) -> bool:
    """A semantic issue that only exists because of a placeholder or an unparsed stage."""
    seed = re.fullmatch(r"\.seed\.stages?(?:\[(\d+)\])?", rest)
    if seed and stage.seed is not None:
        k = int(seed.group(1) or 0)
        if k < len(stage.seed.upstreams) and stage.seed.upstreams[k] in unparsed:
            return True
    m = re.match(r"\.columns\[(\d+)\](.*)", rest)
    if not m:
        return False
    j = int(m.group(1))
    if j in placeholders:
        return True
    holders = {stage.columns[k].name for k in placeholders}
    col = stage.columns[j]
    # A subcategory's parent checks need the real parent column.
    return (
        m.group(2) in (".params.category", ".params.values")
        and isinstance(col, SamplerColumnConfig)
        and getattr(col.params, "category", None) in holders
    )


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
ENV_FIELDS = ("base_url", "model")


def _expand_env(data: dict[str, Any]) -> list[ConfigIssue]:
    """`${VAR}` / `${VAR:-default}` in models' base_url and model only, so one file can point at
    NVIDIA Build, vLLM or a local mock. Never elsewhere: a key must not slip into the config."""
    issues = []
    models = data.get("models")
    if not isinstance(models, dict):
        return issues
    for alias, model in models.items():
        if not isinstance(model, dict):
            continue
        for fld in ENV_FIELDS:
            value = model.get(fld)
            if not isinstance(value, str):
                continue

            def sub(m: re.Match[str], alias: str = alias, fld: str = fld) -> str:
                got = os.environ.get(m.group(1))
                if got is None and m.group(2) is None:
                    issues.append(
                        ConfigIssue(
                            f"models.{alias}.{fld}",
                            f"environment variable {m.group(1)} is not set; set it or write"
                            f" ${{{m.group(1)}:-default}}",
                        )
                    )
                    return ""
                return got if got is not None else m.group(2)

            model[fld] = _ENV_RE.sub(sub, value)
    return issues


def parse_workflow(
    data: Any, *, source: str | None = None, lines: dict | None = None, base: Path | None = None
) -> WorkflowConfig:
    """`base`: the folder relative paths in the config (DataDesigner configs) are relative to."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise WorkflowConfigError(
            [
                ConfigIssue(
                    "", "a workflow config must be a mapping with name:, models: and stages:", 1
                )
            ],
            source,
        )
    data = copy.deepcopy(data)
    _, dd_issues = expand_workflow(data, base or Path.cwd())
    if dd_issues:
        raise WorkflowConfigError(_with_lines(dd_issues, lines), source)
    env_issues = _with_lines(_expand_env(data), lines)
    if env_issues:
        raise WorkflowConfigError(env_issues, source)
    fn_issues = _with_lines(bind_functions(data, base or Path.cwd()), lines)
    if fn_issues:
        raise WorkflowConfigError(fn_issues, source)
    try:
        workflow = WorkflowConfig.model_validate(data)
    except WorkflowConfigError as exc:
        raise WorkflowConfigError(_with_lines(exc.issues, lines), source) from None
    except ValidationError as exc:
        issues = issues_from_validation(exc, lines, data=data)
        known = {(i.path, i.message) for i in issues}
        extra = [
            i
            for i in _with_lines(_partial_semantics(data), lines)
            if (i.path, i.message) not in known
        ]
        raise WorkflowConfigError(issues + extra, source) from None
    workflow._source, workflow._lines = source, lines
    for binding in workflow.functions.values():
        binding.bind(base or Path.cwd())
    return workflow


def check_seed_file_columns(workflow: WorkflowConfig, files: FileColumns) -> None:
    """The checks that need the columns of the workflow's seed files (read by the caller: this
    layer reads no data): renames, drops and references against the full column set."""
    issues = _with_lines(semantic_issues(workflow, files), workflow._lines)
    if issues:
        raise WorkflowConfigError(issues, workflow._source)


def load_workflow(path: str | Path) -> WorkflowConfig:
    path = Path(path)
    try:
        text = read_config_text(path)
    except YamlProblem as exc:
        raise WorkflowConfigError([ConfigIssue("", exc.message, exc.line)], str(path)) from None
    return _resolve_seed_paths(
        loads_workflow(text, source=str(path), base=path.parent), path.parent
    )


CONFIG_SUFFIXES = (".yaml", ".yml")


def load_workflows(path: str | Path) -> list[WorkflowConfig]:
    """A workflow config file, or every `*.yaml`/`*.yml` file directly in a folder (sorted by
    name): what one code location serves. Every file's errors are reported together."""
    path = Path(path)
    if not path.is_dir():
        return [load_workflow(path)]
    files = sorted(f for f in path.iterdir() if f.suffix in CONFIG_SUFFIXES and f.is_file())
    if not files:
        raise WorkflowConfigError(
            [ConfigIssue("", f"no workflow configs (*.yaml, *.yml) in folder {path}")], str(path)
        )
    out: list[WorkflowConfig] = []
    issues: list[ConfigIssue] = []
    for f in files:
        try:
            out.append(load_workflow(f))
        except WorkflowConfigError as exc:
            issues += [ConfigIssue(i.path, i.message, i.line, str(f)) for i in exc.issues]
    if issues:
        raise WorkflowConfigError(issues, str(path))
    return out


def _resolve_seed_paths(workflow: WorkflowConfig, base: Path) -> WorkflowConfig:
    """Seed files are relative to the config file, not to wherever the command runs."""
    stages = []
    for stage in workflow.stages:
        seed = stage.seed
        if isinstance(seed, FileSeed) and not Path(seed.path).is_absolute():
            # Not resolve(): a symlink stays what the user named, so errors name it too.
            seed = seed.model_copy(update={"path": os.path.abspath(base / seed.path)})
            stage = stage.model_copy(update={"seed": seed})
        stages.append(stage)
    return workflow.model_copy(update={"stages": stages})


def loads_workflow(
    text: str, *, source: str | None = None, base: Path | None = None
) -> WorkflowConfig:
    if len(text) > MAX_CONFIG_BYTES:  # characters: at least as many bytes
        raise WorkflowConfigError(
            [ConfigIssue("", f"a workflow config may be at most {MAX_CONFIG_BYTES} bytes")], source
        )
    try:
        data, node = parse_yaml(text)
    except YamlProblem as exc:
        raise WorkflowConfigError([ConfigIssue("", exc.message, exc.line)], source) from None
    lines = _line_map(node) if node is not None else {}
    return parse_workflow(data, source=source, lines=lines, base=base)
