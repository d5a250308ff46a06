"""DataDesigner configs (what its `write_config()` writes, YAML or JSON) turned into native
stage and model configs, so everything downstream (engine, fingerprints) sees one model.

A stage written `data_designer: <file or mapping>` is expanded here before validation. Keys
DataDesigner always writes are accepted when they hold their defaults and dropped; a feature
dd-assets does not have is one error naming it and the column, never "unknown key". Each step
also leaves a `Note` (mapped / same / lost), which `dd-assets import` prints.

Canonical input: mapping keys are sorted first (DataDesigner's YAML export sorts them, its JSON
export does not), so the same config as YAML or JSON maps to the same stage, and defaults that
are dropped never reach a fingerprint."""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dd_assets.config.errors import ConfigIssue
from dd_assets.config.models import BUILTIN_PROVIDERS, IMAGE_MAX_RESPONSE_BYTES, ProviderConfig
from dd_assets.config.processors import SchemaTransformProcessorConfig
from dd_assets.config.strict_yaml import YamlProblem, parse_json, parse_yaml, read_config_text

ISO_SECONDS = "%Y-%m-%dT%H:%M:%S"  # DataDesigner's datetime text when convert_to is unset
STAGE_KEYS = {
    "name",
    "description",
    "num_records",
    "buffer_size",
    "seed",
    "allow_empty",
    "finalize",
}
_REQUIRED = object()


@dataclass(frozen=True)
class Note:
    """One line of the import report: where, what became of it, and how."""

    where: str
    status: str  # "same" | "mapped" | "lost"
    detail: str


class DataDesignerError(Exception):
    """Issues found while mapping (gathered, then raised as a WorkflowConfigError)."""

    def __init__(self, issues: list[ConfigIssue]):
        super().__init__("; ".join(i.message for i in issues))
        self.issues = issues


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def read_datadesigner(path: Path) -> dict[str, Any]:
    """The `data_designer` mapping of a file `write_config()` wrote (YAML or JSON), read as
    strictly as a workflow config (strict_yaml: a regular file, size, duplicate keys, aliases)."""
    try:
        text = read_config_text(path)
        if path.suffix.lower() == ".json":
            data = parse_json(text)
        else:
            data, _ = parse_yaml(text)
    except YamlProblem as exc:
        where = f"{path}:{exc.line}" if exc.line else str(path)
        message = exc.message.replace("config file not found", "DataDesigner config not found")
        raise DataDesignerError([ConfigIssue("data_designer", f"{where}: {message}")]) from None
    return unwrap(data, str(path))


def unwrap(data: Any, where: str) -> dict[str, Any]:
    """`{data_designer: {...}, library_version}` or the bare inner mapping."""
    if isinstance(data, dict) and isinstance(data.get("data_designer"), dict):
        extra = set(data) - {"data_designer", "library_version"}
        if extra:
            raise DataDesignerError(
                [
                    ConfigIssue(
                        "data_designer", f"{where}: unexpected top-level key(s) {sorted(extra)}"
                    )
                ]
            )
        data = data["data_designer"]
    if not isinstance(data, dict) or "columns" not in data:
        raise DataDesignerError(
            [
                ConfigIssue(
                    "data_designer",
                    f"{where} is not a DataDesigner config: expected the mapping write_config()"
                    " writes, with data_designer.columns",
                )
            ]
        )
    return data


class _Mapper:
    def __init__(self, prefix: str, providers: dict[str, ProviderConfig], base: Path):
        self.prefix = prefix
        self.providers = {**BUILTIN_PROVIDERS, **providers}
        self.declared = set(providers)
        self.base = base
        self.issues: list[ConfigIssue] = []
        self.notes: list[Note] = []
        self.tools: dict[str, dict[str, Any]] = {}

    # -- helpers

    def issue(self, where: str, message: str) -> None:
        self.issues.append(ConfigIssue(f"{self.prefix}.{where}" if where else self.prefix, message))

    def note(self, where: str, status: str, detail: str) -> None:
        self.notes.append(Note(where, status, detail))

    def mappings(self, raw: list[Any], where: str, what: str) -> Iterator[tuple[str, dict]]:
        """(`where[k]`, item) for each item of a list that must hold mappings; any other item is
        an issue naming it, and is skipped so the rest still gets checked."""
        for k, item in enumerate(raw):
            if isinstance(item, dict):
                yield f"{where}[{k}]", item
            else:
                self.issue(f"{where}[{k}]", f"{what} must be a mapping")

    def unsupported(
        self, where: str, feature: str, column: str | None = None, verb: str = "is"
    ) -> None:
        on = f" on column {column!r}" if column else ""
        self.issue(where, f"{feature}{on} {verb} not supported yet")

    def shaped(self, value: Any, kind: type, where: str, default: Any) -> Any:
        """`value` when it is a `kind` (dict, list, str), else `default` and an issue: the
        mapping below then never meets a shape it does not expect."""
        if value is None or isinstance(value, kind):
            return default if value is None else value
        names = {dict: "a mapping", list: "a list", str: "a string"}
        self.issue(where, f"must be {names[kind]}, not {type(value).__name__}")
        return default

    def take(
        self, data: dict[str, Any], where: str, spec: dict[str, Any], column: str | None = None
    ) -> dict[str, Any]:
        """The keys of `spec` that hold something other than their default (those missing and
        _REQUIRED are errors); unknown keys are errors naming them."""
        out: dict[str, Any] = {}
        for key in data:
            if key not in spec:
                self.issue(
                    f"{where}.{key}",
                    f"unknown DataDesigner key {key!r}"
                    + (f" on column {column!r}" if column else "")
                    + f"; expected one of {', '.join(sorted(spec))}",
                )
        for key, default in spec.items():
            if key not in data:
                if default is _REQUIRED:
                    self.issue(f"{where}.{key}", "required field is missing")
                continue
            if default is _REQUIRED or data[key] != default:
                out[key] = data[key]
        return out

    # -- the whole config

    def stage(self, dd: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        dd = _canonical(dd)
        top = self.take(
            dd,
            "",
            {
                "columns": _REQUIRED,
                "model_configs": [],
                "tool_configs": [],
                "seed_config": None,
                "constraints": None,
                "profilers": None,
                "processors": None,
            },
        )
        self.tool_configs(self.shaped(top.get("tool_configs"), list, "tool_configs", []))
        self.profilers(self.shaped(top.get("profilers"), list, "profilers", []))
        columns: list[dict[str, Any]] = []
        raw_columns = self.shaped(top.get("columns"), list, "columns", [])
        for j, raw in enumerate(raw_columns):
            col = self.column(raw, f"columns[{j}]")
            if col is not None:
                columns.append(col)
        self.constraints(self.shaped(top.get("constraints"), list, "constraints", []), columns)
        stage: dict[str, Any] = {"columns": columns}
        seed_config = self.shaped(top.get("seed_config"), dict, "seed_config", {})
        if seed_config:
            stage["seed"] = self.seed(seed_config)
        post, final = self.processors(
            self.shaped(top.get("processors"), list, "processors", []), columns
        )
        if post:
            stage["post_batch"] = post
        if final:
            stage["finalize"] = final
        used = {c["model_alias"] for c in columns if isinstance(c.get("model_alias"), str)}
        models = self.models(self.shaped(top.get("model_configs"), list, "model_configs", []), used)
        return stage, models

    # -- columns

    _COMMON = {
        "name": _REQUIRED,
        "column_type": _REQUIRED,
        "drop": False,
        "skip": None,
        "propagate_skip": True,
    }
    _LLM = {
        "prompt": _REQUIRED,
        "model_alias": _REQUIRED,
        "system_prompt": None,
        "multi_modal_context": None,
        "tool_alias": None,
        "with_trace": "none",
        "extract_reasoning_content": False,
    }
    _BY_TYPE: dict[str, dict[str, Any]] = {
        "sampler": {
            "sampler_type": _REQUIRED,
            "params": _REQUIRED,
            "conditional_params": {},
            "convert_to": None,
        },
        "expression": {"expr": _REQUIRED, "dtype": "str"},
        "llm-text": _LLM,
        "llm-code": {**_LLM, "code_lang": _REQUIRED},
        "llm-structured": {**_LLM, "output_format": _REQUIRED},
        "llm-judge": {**_LLM, "scores": _REQUIRED},
        "embedding": {"target_column": _REQUIRED, "model_alias": _REQUIRED},
        "image": {"prompt": _REQUIRED, "model_alias": _REQUIRED, "multi_modal_context": None},
        "validation": {
            "target_columns": _REQUIRED,
            "validator_type": _REQUIRED,
            "validator_params": _REQUIRED,
            "batch_size": 10,
        },
    }
    _BY_TYPE["custom"] = {
        "generator_function": _REQUIRED,
        "generation_strategy": "cell_by_cell",
        "generator_params": None,
    }
    _NOT_YET = {}

    def column(self, raw: Any, where: str) -> dict[str, Any] | None:
        if not isinstance(raw, dict):
            self.issue(where, "a column must be a mapping")
            return None
        name = raw.get("name")
        name = name if isinstance(name, str) else f"#{where}"  # the native checks report it
        ctype = self.shaped(raw.get("column_type"), str, f"{where}.column_type", "")
        if ctype in self._NOT_YET:
            self.issue(where, f"{self._NOT_YET[ctype]} are not supported yet (column {name!r})")
            return None
        if ctype not in self._BY_TYPE:
            self.issue(
                f"{where}.column_type",
                f"unknown DataDesigner column_type {ctype!r} on column {name!r}; expected one of"
                f" {', '.join([*self._BY_TYPE, *self._NOT_YET])}",
            )
            return None
        got = self.take(raw, where, {**self._COMMON, **self._BY_TYPE[ctype]}, name)
        if "skip" in got or "propagate_skip" in got:
            self.note(
                f"column {name}",
                "same",
                "skip / propagate_skip: skipped cells are not generated and hold skip.value",
            )
        if "tool_alias" in got:
            if not isinstance(got["tool_alias"], str) or got["tool_alias"] not in self.tools:
                self.issue(
                    f"{where}.tool_alias",
                    f"tool_alias {got['tool_alias']!r} on column {name!r} is not in tool_configs",
                )
            self.note(
                f"column {name}",
                "same",
                f"tool_alias {got['tool_alias']!r}: MCP tool calls (providers under mcp_providers:)",
            )
        if "multi_modal_context" in got:
            got["multi_modal_context"] = self.image_contexts(
                self.shaped(got["multi_modal_context"], list, f"{where}.multi_modal_context", []),
                f"{where}.multi_modal_context",
                name,
            )
        out = dict(got)
        if ctype == "image":
            self.note(
                f"column {name}",
                "mapped",
                "image column: images written as files beside each row group, the cells"
                " holding their paths (images/<column>/...); base64 in a preview",
            )
        if ctype == "sampler":
            return self.sampler(out, where, name)
        if ctype == "validation":
            return self.validation(out, where, name)
        if ctype == "custom":
            self.note(
                f"column {name}",
                "mapped",
                f"custom: generator_function {out.get('generator_function')!r} is the function"
                " bound under the workflow's functions: (generator_params passed as a mapping)",
            )
        if ctype == "expression" and not any(n.where == "expressions" for n in self.notes):
            self.note(
                "expressions",
                "mapped",
                "rendered as written: cells are not JSON-decoded first, and a bool cast reads"
                " yes/no as true/false (DataDesigner reads 'yes' as false)",
            )
        if "with_trace" in out:
            self.note(
                f"column {name}",
                "same",
                f"with_trace: {out['with_trace']} -> side column {name}__trace",
            )
        return out

    def sampler(self, col: dict[str, Any], where: str, name: str) -> dict[str, Any] | None:
        st = col.get("sampler_type")
        params = dict(self.shaped(col.get("params"), dict, f"{where}.params", {}))
        conds = {
            k: dict(v)
            for k, v in self.shaped(
                col.get("conditional_params"), dict, f"{where}.conditional_params", {}
            ).items()
            if isinstance(v, dict)
        }
        for p in (params, *conds.values()):
            p.pop("sampler_type", None)
        if st == "person":
            for p in (params, *conds.values()):
                if p.pop("select_field_values", None) is not None:
                    self.unsupported(
                        f"{where}.params.select_field_values", "person select_field_values", name
                    )
                if p.pop("with_synthetic_personas", False):
                    self.unsupported(
                        f"{where}.params.with_synthetic_personas", "synthetic personas", name, "are"
                    )
            st = "person_from_faker"
            self.note(
                f"column {name}",
                "lost",
                "person (Nemotron-Personas dataset) -> person_from_faker: Faker-made people with"
                " DataDesigner's Faker field names; the dataset's fields (email_address,"
                " national_id, personas) are not there",
            )
        col["sampler_type"] = st
        notes = []
        for p in (params, *conds.values()):
            if st == "uuid":
                p.update(format="hex", short_length=8)
                notes.append("uuid as 32 hex digits, 8 in short form")
            elif st == "person_from_faker":
                p["fields"] = "datadesigner"
                notes.append("person record with DataDesigner's field names")
            elif st == "datetime":
                p["draw"] = "seconds"
                notes.append(
                    "datetime drawn as DataDesigner does: seconds in [start, end), floored to the unit"
                )
        if st in ("datetime", "timedelta") and col.get("convert_to") is None:
            col["convert_to"] = ISO_SECONDS
            notes.append(f"datetime as ISO text ({ISO_SECONDS})")
        if col.get("convert_to") == "int":
            col["int_rounding"] = "half_even"
            notes.append("convert_to: int rounds half to even like DataDesigner")
        col["params"] = params
        if conds:
            col["conditional_params"] = conds
            notes.append(f"{len(conds)} conditional_params (the one sorting last wins)")
        for n in dict.fromkeys(notes):
            self.note(f"column {name}", "mapped", n)
        return col

    def image_contexts(self, raw: list[Any], where: str, name: str) -> list[dict[str, Any]]:
        """ImageContexts; data_type null is DataDesigner's auto-detection, done the same way
        (engine/images.py)."""
        out = []
        for at, ctx in self.mappings(raw, where, "an image context"):
            got = self.take(
                ctx,
                at,
                {"column_name": _REQUIRED, "modality": "image", "data_type": None,
                 "image_format": None},
                name,
            )  # fmt: skip
            if "data_type" not in got:
                self.note(
                    f"column {name}",
                    "same",
                    f"multi_modal_context on {got.get('column_name')!r} without data_type: each"
                    " value is an image URL, an image file's path (read and sent as base64) or"
                    " base64, as DataDesigner detects it",
                )
            out.append(got)
        return out

    def tool_configs(self, raw: list[Any]) -> None:
        """DataDesigner's ToolConfigs -> the workflow's `tools:` (keyed by tool_alias); the MCP
        providers they name come from the workflow's `mcp_providers:`."""
        for where, t in self.mappings(raw, "tool_configs", "a tool config"):
            got = self.take(
                t,
                where,
                {
                    "tool_alias": _REQUIRED,
                    "providers": _REQUIRED,
                    "allow_tools": None,
                    "max_tool_call_turns": 5,
                    "timeout_sec": None,
                },
            )
            alias = got.pop("tool_alias", None)
            if not isinstance(alias, str):
                self.issue(f"{where}.tool_alias", "the tool alias must be a string")
                continue
            if "timeout_sec" in got:
                got["timeout_s"] = got.pop("timeout_sec")
            self.tools[alias] = got
            self.note(
                f"tools {alias}",
                "mapped",
                "tool_configs -> tools: (the tool loop as DataDesigner's: tools listed from the"
                " providers, filtered by allow_tools, at most max_tool_call_turns turns)",
            )

    def profilers(self, raw: list[Any]) -> None:
        """A judge-score profiler writes DataDesigner's analysis report, never the data: the
        stage profile (`dd-assets report`, the Dagster metadata) already counts every judge
        score; the LLM-written summary is not made."""
        for where, p in self.mappings(raw, "profilers", "a profiler"):
            got = self.take(p, where, {"model_alias": _REQUIRED, "summary_score_sample_size": 20})
            self.note(
                f"profiler {got.get('model_alias')}",
                "lost",
                "judge-score profiler: no LLM-written summary; the stage profile (dd-assets"
                " report) has each judge score's distribution and mean",
            )

    def validation(self, col: dict[str, Any], where: str, name: str) -> dict[str, Any] | None:
        """Code and local_callable validators; their params lose the copy of validator_type."""
        kind = col.get("validator_type")
        params = self.shaped(col.get("validator_params"), dict, f"{where}.validator_params", {})
        if kind == "local_callable" and params.get("validator_type", kind) == kind:
            got = self.take(
                params,
                f"{where}.validator_params",
                {
                    "validator_type": "local_callable",
                    "validation_function": _REQUIRED,
                    "output_schema": None,
                },
                name,
            )
            if "output_schema" in got:
                self.unsupported(
                    f"{where}.validator_params.output_schema",
                    "a local_callable validator's output_schema",
                    name,
                )
            col["validator_params"] = {"validation_function": got.get("validation_function")}
            self.note(
                f"column {name}",
                "mapped",
                f"local_callable validator: validation_function"
                f" {got.get('validation_function')!r} is the function bound under the workflow's"
                " functions:, called per row (DataDesigner: batch_size rows at once)",
            )
            return col
        if kind != "code" or params.get("validator_type", "code") != "code":
            self.unsupported(
                f"{where}.validator_type", f"{kind} validators (only code and local_callable)",
                name, "are",
            )  # fmt: skip
            return None
        col["validator_params"] = {k: v for k, v in params.items() if k != "validator_type"}
        self.note(
            f"column {name}",
            "same",
            "code validation: python by ruff, SQL by sqlfluff's parser (as DataDesigner)",
        )
        return col

    def constraints(self, raw: list[Any], columns: list[dict[str, Any]]) -> None:
        by_name = {c["name"]: c for c in columns if isinstance(c.get("name"), str)}
        for where, c in self.mappings(raw, "constraints", "a constraint"):
            got = self.take(
                c,
                where,
                {
                    "target_column": _REQUIRED,
                    "operator": _REQUIRED,
                    "rhs": _REQUIRED,
                    "constraint_type": _REQUIRED,
                },
            )
            target, kind = got.get("target_column"), got.get("constraint_type")
            col = by_name.get(target) if isinstance(target, str) else None
            if col is None or col.get("column_type") != "sampler":
                self.issue(
                    f"{where}.target_column",
                    f"constraints apply to sampler columns; {target!r} is not one",
                )
                continue
            if kind == "scalar_inequality":
                rule = {"operator": got.get("operator"), "value": got.get("rhs")}
            elif kind == "column_inequality":
                rule = {"operator": got.get("operator"), "column": got.get("rhs")}
            else:
                self.issue(f"{where}.constraint_type", f"unknown constraint_type {kind!r}")
                continue
            col.setdefault("constraints", []).append(rule)
            self.note(
                f"column {target}",
                "mapped",
                f"{kind} {rule['operator']} {got.get('rhs')}: rejection sampling, per row",
            )

    # -- seed

    def seed(self, raw: dict[str, Any]) -> dict[str, Any]:
        got = self.take(
            raw,
            "seed_config",
            {"source": _REQUIRED, "sampling_strategy": "ordered", "selection_strategy": None},
        )
        source = self.shaped(got.get("source"), dict, "seed_config.source", {})
        seed: dict[str, Any] = {}
        seed_type = source.get("seed_type", "local")
        if seed_type != "local":
            self.unsupported(
                "seed_config.source.seed_type", f"{seed_type} seed sources", verb="are"
            )
            return {"path": "unsupported.parquet"}
        extra = set(source) - {"path", "seed_type"}
        if extra:
            self.issue(
                "seed_config.source", f"unknown DataDesigner key(s) {sorted(extra)} of a local seed"
            )
        path = Path(str(source.get("path", "")))
        seed["path"] = str(path if path.is_absolute() else (self.base / path).resolve())
        if "sampling_strategy" in got:
            seed["strategy"] = got["sampling_strategy"]
            self.note(
                "seed_config",
                "mapped",
                "shuffle is a fixed permutation per pass over the seed (DataDesigner reshuffles"
                " on every run)",
            )
        sel = got.get("selection_strategy")
        if isinstance(sel, dict):
            if "start" in sel or "end" in sel:
                seed["rows"] = {"first": sel.get("start"), "last": sel.get("end")}
                self.note("seed_config", "mapped", f"IndexRange -> seed.rows {seed['rows']}")
            elif sel.get("num_partitions", 1) != 1 or sel.get("index", 0) != 0:
                seed["shard"] = {
                    "index": sel.get("index", 0),
                    "count": sel.get("num_partitions", 1),
                }
                self.note("seed_config", "mapped", f"PartitionBlock -> seed.shard {seed['shard']}")
        self.note(
            "seed_config",
            "mapped",
            "relative seed paths are relative to the DataDesigner config file",
        )
        return seed

    # -- processors

    def processors(
        self, raw: list[Any], columns: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """DataDesigner runs processors on the main dataset; a schema_transform writes a side
        output and passes the main dataset on. Here the main dataset is the row groups and the
        schema_transform becomes the stage's final output (finalize)."""
        procs: list[tuple[int, dict[str, Any]]] = []
        for k, p in enumerate(raw):
            where = f"processors[{k}]"
            kind = p.get("processor_type") if isinstance(p, dict) else None
            if kind == "drop_columns":
                procs.append(
                    (
                        k,
                        self.take(
                            p,
                            where,
                            {
                                "processor_type": _REQUIRED,
                                "name": _REQUIRED,
                                "column_names": _REQUIRED,
                            },
                        ),
                    )
                )
            elif kind == "schema_transform":
                procs.append(
                    (
                        k,
                        self.take(
                            p,
                            where,
                            {"processor_type": _REQUIRED, "name": _REQUIRED, "template": _REQUIRED},
                        ),
                    )
                )
            else:
                self.unsupported(where, f"{kind} processors", verb="are")
        transforms = [
            k for k, (_, p) in enumerate(procs) if p.get("processor_type") == "schema_transform"
        ]
        if len(transforms) > 1:
            self.unsupported("processors", "more than one schema_transform processor in a config")
            return [], []
        if not transforms:
            return [p for _, p in procs], []
        at = transforms[0]
        k, st = procs[at]
        reads: set[str] = set()
        with contextlib.suppress(ValueError):  # the native validation reports the template
            reads = SchemaTransformProcessorConfig(
                template=st.get("template") or {"_": ""}
            ).required_columns
        for c in columns:
            if c.get("drop") and isinstance(c.get("name"), str) and c["name"] in reads:
                c["drop"] = False
                self.note(
                    f"column {c['name']}",
                    "mapped",
                    f"drop: true, but schema_transform {st.get('name')!r} reads it: kept in the row"
                    " groups (DataDesigner drops it after processors ran)",
                )
        final = [
            {**p, "values": "json"} if i == at else p for i, (_, p) in enumerate(procs[: at + 1])
        ]
        post: list[dict[str, Any]] = []
        for _, p in procs[at + 1 :]:
            globs = p.get("column_names")
            globs = [g for g in globs if isinstance(g, str)] if isinstance(globs, list) else []
            hit = sorted(r for r in reads if any(fnmatch.fnmatchcase(r, g) for g in globs))
            if hit:
                self.note(
                    f"processor {p.get('name')}",
                    "lost",
                    f"drop_columns after schema_transform {st.get('name')!r} would drop {hit}, which"
                    " the transform reads; not applied (the row groups keep those columns)",
                )
            else:
                post.append(p)
        self.note(
            f"processor {st.get('name')}",
            "mapped",
            "schema_transform -> finalize: the stage's final output (DataDesigner writes it"
            " beside the main dataset); values print as JSON (true, null)",
        )
        return post, final

    # -- models

    _MODEL = {
        "alias": _REQUIRED,
        "model": _REQUIRED,
        "provider": None,
        "inference_parameters": None,
        "skip_health_check": False,
    }
    _CHAT = {
        "generation_type": "chat-completion",
        "max_parallel_requests": 4,
        "timeout": None,
        "extra_body": None,
        "temperature": None,
        "top_p": None,
        "max_tokens": None,
    }

    _EMBEDDING = {
        "generation_type": "embedding",
        "max_parallel_requests": 4,
        "timeout": None,
        "extra_body": None,
        "encoding_format": "float",
        "dimensions": None,
    }

    _IMAGE = {
        "generation_type": "image",
        "max_parallel_requests": 4,
        "timeout": None,
        "extra_body": None,
    }

    def models(self, raw: list[Any], used: set[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for where, m in self.mappings(raw, "model_configs", "a model config"):
            alias = m.get("alias")
            if not isinstance(alias, str):
                self.issue(f"{where}.alias", "the model alias must be a string")
                continue
            if alias not in used:
                self.note(f"model {alias}", "lost", "not used by any column: left out")
                continue
            got = self.take(m, where, self._MODEL)
            inf = dict(
                self.shaped(
                    got.get("inference_parameters"), dict, f"{where}.inference_parameters", {}
                )
            )
            gen = inf.get("generation_type", "chat-completion")
            specs = {
                "chat-completion": self._CHAT,
                "embedding": self._EMBEDDING,
                "image": self._IMAGE,
            }
            if not isinstance(gen, str) or gen not in specs:
                self.unsupported(f"{where}.inference_parameters", f"{gen} models", verb="are")
                continue
            spec = specs[gen]
            params = self.take(inf, f"{where}.inference_parameters", spec)
            provider_name = self.shaped(got.get("provider"), str, f"{where}.provider", None)
            provider = self.providers.get(provider_name) if provider_name else None
            if provider is None:
                self.issue(
                    f"{where}.provider",
                    f"model {alias!r} names provider {provider_name!r}, which is not defined; add"
                    f" it under providers: (known: {', '.join(sorted(self.providers))})",
                )
                continue
            if provider_name not in self.declared:
                self.note(
                    f"model {alias}",
                    "mapped",
                    f"provider {provider_name!r}: DataDesigner's built-in endpoint {provider.endpoint}",
                )
            model: dict[str, Any] = {"base_url": provider.endpoint, "model": got.get("model")}
            if provider.api_key:
                model["api_key_env"] = provider.api_key
            inference = {
                k2: params[k2]
                for k2 in ("temperature", "top_p", "max_tokens", "encoding_format", "dimensions")
                if k2 in params
            }
            if inference:
                model["inference"] = inference
            if "max_parallel_requests" in params:
                model["max_parallel_requests"] = params["max_parallel_requests"]
            if "timeout" in params:
                model["timeout_s"] = params["timeout"]
            extra_body = self.shaped(params.get("extra_body"), dict, f"{where}.extra_body", {})
            body = {**(provider.extra_body or {}), **extra_body}
            if body:
                model["extra_body"] = body
            if gen == "image":
                # An image answer is far over the 2 MiB a text answer is allowed.
                model["max_response_bytes"] = IMAGE_MAX_RESPONSE_BYTES
            if "skip_health_check" in got:
                self.note(
                    f"model {alias}",
                    "same",
                    "skip_health_check: dd-assets makes no health-check call",
                )
            out[alias] = model
        named = {
            m.get("alias") for m in raw if isinstance(m, dict) and isinstance(m.get("alias"), str)
        }
        for alias in sorted(used - set(out) - named):
            self.issue(
                "model_configs",
                f"model alias {alias!r} is used by a column but not in model_configs",
            )
        return out


def expand_stage(
    raw_stage: dict[str, Any],
    prefix: str,
    providers: dict[str, ProviderConfig],
    base: Path,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[Note], dict[str, dict[str, Any]]]:
    """A stage written with `data_designer:` as a native stage mapping, plus the models its
    columns use, the report notes and its tool configs (the workflow's `tools:`). Raises
    DataDesignerError with every issue found."""
    spec = raw_stage["data_designer"]
    issues: list[ConfigIssue] = []
    extra = set(raw_stage) - STAGE_KEYS - {"data_designer"}
    for key in sorted(extra):
        issues.append(
            ConfigIssue(
                f"{prefix}.{key}",
                f"{key} comes from the DataDesigner config in a data_designer: stage; next to it"
                f" give only {', '.join(sorted(STAGE_KEYS))}",
            )
        )
    if isinstance(spec, str):
        path = Path(spec)
        path = path if path.is_absolute() else base / path
        dd = read_datadesigner(path)
        dd_base = path.parent
    else:
        dd = unwrap(spec, f"{prefix}.data_designer")
        dd_base = base
    mapper = _Mapper(f"{prefix}.data_designer", providers, dd_base)
    stage, models = mapper.stage(dd)
    issues += mapper.issues
    if "seed" in stage and "seed" in raw_stage:
        issues.append(
            ConfigIssue(
                f"{prefix}.seed",
                "the DataDesigner config has a seed_config; give one seed, not two",
            )
        )
    if issues:
        raise DataDesignerError(issues)
    native = {k: v for k, v in raw_stage.items() if k != "data_designer"}
    native.update({k: v for k, v in stage.items() if k != "finalize"})
    if "finalize" in stage:
        own = raw_stage.get("finalize") or []
        native["finalize"] = stage["finalize"] + (own if isinstance(own, list) else [own])
    return native, models, mapper.notes, mapper.tools


def providers_of(data: dict[str, Any]) -> tuple[dict[str, ProviderConfig], list[ConfigIssue]]:
    """The workflow's `providers:`, as a mapping name -> provider or as DataDesigner's list of
    `{name, endpoint, ...}` (its model_providers.yaml); normalised in `data` to the mapping."""
    from pydantic import ValidationError

    raw = data.get("providers")
    if raw is None:
        return {}, []
    if isinstance(raw, list):
        named = {
            p.get("name"): {k: v for k, v in p.items() if k != "name"}
            for p in raw
            if isinstance(p, dict) and isinstance(p.get("name"), str | None)
        }
        if len(named) != len(raw) or None in named:
            return {}, [ConfigIssue("providers", "each provider in the list needs a distinct name")]
        raw = data["providers"] = named
    if not isinstance(raw, dict):
        return {}, [ConfigIssue("providers", "providers must map a name to {endpoint, api_key}")]
    out: dict[str, ProviderConfig] = {}
    issues: list[ConfigIssue] = []
    for name, spec in raw.items():
        try:
            out[name] = ProviderConfig.model_validate(spec)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                msg = err["msg"].removeprefix("Value error, ")
                if err["type"] == "extra_forbidden":
                    msg = "unknown key"
                issues.append(ConfigIssue(f"providers.{name}" + (f".{loc}" if loc else ""), msg))
    return out, issues


def expand_workflow(data: dict[str, Any], base: Path) -> tuple[list[Note], list[ConfigIssue]]:
    """Expand, in place, every `data_designer:` stage of a workflow mapping into a native stage
    and its models into `models:`. Returns the report notes and every issue found."""
    providers, issues = providers_of(data)
    notes: list[Note] = []
    stages = data.get("stages")
    if not isinstance(stages, list) or not any(
        isinstance(s, dict) and "data_designer" in s for s in stages
    ):
        return notes, issues
    if issues:
        return notes, issues
    models = data.setdefault("models", {})
    if not isinstance(models, dict):
        return notes, issues
    for i, raw in enumerate(stages):
        if not (isinstance(raw, dict) and "data_designer" in raw):
            continue
        try:
            native, stage_models, stage_notes, stage_tools = expand_stage(
                raw, f"stages[{i}]", providers, base
            )
        except DataDesignerError as exc:
            issues += exc.issues
            continue
        tools = data.setdefault("tools", {}) if stage_tools else {}
        for kind, target, mapped in (("model", models, stage_models), ("tool", tools, stage_tools)):
            if not isinstance(target, dict):
                continue
            for alias, spec in mapped.items():
                if alias in target and target[alias] != spec:
                    issues.append(
                        ConfigIssue(
                            f"stages[{i}].data_designer.{kind}_configs",
                            f"{kind} alias {alias!r} is also defined, differently, in the workflow"
                            " or by another stage; rename one of them",
                        )
                    )
                target[alias] = spec
        stages[i] = native
        notes += stage_notes
    return notes, issues


def import_datadesigner(
    dd_path: Path,
    output: Path,
    *,
    providers: dict[str, dict[str, Any]] | None = None,
    functions: dict[str, str] | None = None,
    mcp_providers: dict[str, dict[str, Any]] | None = None,
    name: str | None = None,
    num_records: int = 100,
    buffer_size: int = 100,
) -> tuple[dict[str, Any], list[Note]]:
    """A native workflow mapping equivalent to a one-stage workflow referencing `dd_path` with
    `data_designer:` (same names, so the same fingerprint and the same rows), and the report.
    Seed paths are written relative to the folder of `output`."""
    from dd_assets.config.columns import check_identifier
    from dd_assets.config.errors import WorkflowConfigError
    from dd_assets.config.loader import parse_workflow

    stem = name or "".join(c if c.isalnum() else "_" for c in dd_path.stem)
    try:
        check_identifier(stem, "workflow name")
    except ValueError as exc:
        raise WorkflowConfigError([ConfigIssue("--name", str(exc))], str(dd_path)) from None
    workflow: dict[str, Any] = {"name": stem}
    if providers:
        workflow["providers"] = providers
    if mcp_providers:
        workflow["mcp_providers"] = mcp_providers
    if functions:
        # A file path given on the command line is relative to the working directory; in the
        # workflow, to the workflow's folder.
        workflow["functions"] = {
            k: _function_relative(v, output.resolve().parent) for k, v in functions.items()
        }
    workflow["stages"] = [
        {
            "name": stem,
            "num_records": num_records,
            "buffer_size": buffer_size,
            "data_designer": str(dd_path.resolve()),
        }
    ]
    notes, issues = expand_workflow(workflow, dd_path.parent)
    if issues:
        raise WorkflowConfigError(issues, str(dd_path))
    workflow.pop("providers", None)  # resolved into models
    if not workflow.get("models"):
        workflow.pop("models", None)
    seed = workflow["stages"][0].get("seed")
    if seed is not None:
        seed["path"] = _relative(Path(seed["path"]), output.resolve().parent)
    # Reorder for reading: name, models, stages.
    workflow = {
        k: workflow[k]
        for k in ("name", "models", "mcp_providers", "tools", "functions", "stages")
        if k in workflow
    }
    parse_workflow(workflow, source=str(output), base=output.resolve().parent)
    return workflow, notes


def _function_relative(where: str, folder: Path) -> str:
    path, sep, name = where.rpartition(":")
    if not sep or not path.endswith(".py"):
        return where
    return f"{_relative(Path(path).resolve(), folder)}:{name}"


def parse_mcp_provider_option(text: str) -> tuple[str, dict[str, Any]]:
    """`NAME=URL[,api_key_env=VAR]` (streamable HTTP) or `NAME=stdio:COMMAND [ARG ...]` (the
    CLI's --mcp-provider) as an mcp_providers: entry."""
    import shlex

    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ValueError(
            f"--mcp-provider {text!r}: expected NAME=URL[,api_key_env=VAR] or"
            " NAME=stdio:COMMAND [ARG ...]"
        )
    if rest.startswith("stdio:"):
        words = shlex.split(rest.removeprefix("stdio:"))
        if not words:
            raise ValueError(f"--mcp-provider {name}: stdio: needs a command")
        return name, {"provider_type": "stdio", "command": words[0], "args": words[1:]}
    url, *extras = rest.split(",")
    spec: dict[str, Any] = {"provider_type": "streamable_http", "endpoint": url}
    for extra in extras:
        key, _, value = extra.partition("=")
        if key != "api_key_env" or not value:
            raise ValueError(f"--mcp-provider {name}: unknown option {key!r}; only api_key_env=VAR")
        spec["api_key"] = value
    return name, spec


def parse_function_option(text: str) -> tuple[str, str]:
    """`NAME=package.module:function` or `NAME=file.py:function` (the CLI's --function)."""
    name, sep, where = text.partition("=")
    if not sep or not name or ":" not in where:
        raise ValueError(
            f"--function {text!r}: expected NAME=package.module:function or NAME=file.py:function"
        )
    return name, where


def _relative(path: Path, folder: Path) -> str:
    """Relative when the seed sits under the workflow's folder (the pair can move together)."""
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)


def parse_provider_option(text: str) -> tuple[str, dict[str, Any]]:
    """`NAME=BASE_URL[,api_key_env=VAR]` (the CLI's --provider) as a providers: entry."""
    name, sep, rest = text.partition("=")
    parts = rest.split(",")
    if not sep or not name or not parts[0]:
        raise ValueError(f"--provider {text!r}: expected NAME=BASE_URL[,api_key_env=VAR]")
    spec: dict[str, Any] = {"endpoint": parts[0]}
    for extra in parts[1:]:
        key, _, value = extra.partition("=")
        if key != "api_key_env" or not value:
            raise ValueError(f"--provider {name}: unknown option {key!r}; only api_key_env=VAR")
        spec["api_key"] = value
    return name, spec
