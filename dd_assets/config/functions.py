"""Python functions a workflow binds by name: the generators of `custom` columns.

DataDesigner's `write_config()` writes a custom column's `generator_function` as a bare name,
which not even its own `from_config` can load back. A workflow's top-level `functions:` maps
that name to where the function lives: `package.module:function` (importable: installed, or on
PYTHONPATH) or `path/to/file.py:function` (relative to the workflow file).

A function's identity, which enters the fingerprint of every stage using it, is where it
lives as written, the sha256 of its own source text and the metadata that decides its output
(required and side-effect columns, dtype): an edited function is a new dataset, never mixed with
the old rows. What it calls is not covered (DataDesigner's fingerprint has the same limit).

Importing user code happens here, once per process and function (`resolve`), when a config that
uses the function is loaded: `dd-assets validate` then reports an import error as one line."""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, PrivateAttr, field_validator, model_validator

from dd_assets.config.base import model_settings
from dd_assets.config.columns import check_identifier

DType = Literal["str", "int", "float", "bool"]


class FunctionBinding(BaseModel):
    """One entry of `functions:`: a string `where:function`, or a mapping that also gives the
    metadata DataDesigner's `@custom_column_generator` decorator would (read from the function
    when the decorator was used and the mapping does not say) and the column's dtype."""

    model_config = model_settings(extra="forbid", frozen=True)

    function: str
    required_columns: list[str] | None = None
    side_effect_columns: list[str] | None = None
    # The column's type, or a mapping output column -> type (the column and its side-effect
    # columns); text (`str`) when not given: a value that is not text is kept as its JSON.
    dtype: DType | dict[str, DType] = "str"
    # The folder a file path is relative to (the workflow file's), set by the loader.
    _base: Path | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"function": data} if isinstance(data, str) else data

    @field_validator("function")
    @classmethod
    def _where_and_name(cls, v: str) -> str:
        where, sep, name = v.rpartition(":")
        if not sep or not where or not name.isidentifier():
            raise ValueError(
                f"function {v!r} must be 'package.module:function' or 'file.py:function'"
            )
        return v

    @field_validator("required_columns", "side_effect_columns")
    @classmethod
    def _names(cls, v: list[str] | None) -> list[str] | None:
        for name in v or []:
            check_identifier(name, "column name")
        return v

    def bind(self, base: Path) -> FunctionBinding:
        self._base = base
        return self


@dataclass(frozen=True)
class ResolvedFunction:
    fn: Any
    params: tuple[str, ...]  # positional parameter names: (row | df, [generator_params])
    required_columns: tuple[str, ...]
    side_effect_columns: tuple[str, ...]
    source_sha256: str
    is_async: bool


class FunctionError(ValueError):
    """A binding that does not give a usable function (import error, wrong signature)."""


def resolve(binding: FunctionBinding) -> ResolvedFunction:
    base = binding._base or Path.cwd()
    return _resolve(binding.function, str(base), binding.required_columns,
                    binding.side_effect_columns)  # fmt: skip


def _tuple(v: list[str] | None) -> tuple[str, ...] | None:
    return None if v is None else tuple(v)


@functools.lru_cache(maxsize=256)
def _load(where: str, base: str) -> Any:
    if where.endswith(".py"):
        path = Path(where) if Path(where).is_absolute() else Path(base) / where
        if not path.is_file():
            raise FunctionError(f"file {path} not found")
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        name = f"dd_assets_functions_{path.stem}_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise FunctionError(f"cannot load {path} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise FunctionError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
        return module
    try:
        return importlib.import_module(where)
    except Exception as exc:
        raise FunctionError(
            f"cannot import module {where!r} ({type(exc).__name__}: {exc}); install it or put"
            " its folder on PYTHONPATH, or name a file: 'path/to/file.py:function'"
        ) from None


def _resolve(
    function: str, base: str, required: list[str] | None, side: list[str] | None
) -> ResolvedFunction:
    return _resolve_cached(function, base, _tuple(required), _tuple(side))


@functools.lru_cache(maxsize=256)
def _resolve_cached(
    function: str,
    base: str,
    required: tuple[str, ...] | None,
    side: tuple[str, ...] | None,
) -> ResolvedFunction:
    where, _, name = function.rpartition(":")
    module = _load(where, base)
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        raise FunctionError(f"{where} has no function {name!r}")
    inner = inspect.unwrap(fn)
    try:
        source = inspect.getsource(inner)
    except (OSError, TypeError) as exc:
        raise FunctionError(f"the source of {function} cannot be read ({exc})") from None
    params = tuple(
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    )
    if not params or params[0] not in ("row", "df") or len(params) > 3:
        raise FunctionError(
            f"{function} must take (row) or (df), then optionally generator_params (DataDesigner's"
            f" signature); it takes ({', '.join(params)})"
        )
    if len(params) == 3:
        raise FunctionError(
            f"{function} takes `models` (DataDesigner's model facades), which dd-assets does not"
            " provide; make the LLM call an llm column the function reads"
        )
    if len(params) == 2 and params[1] != "generator_params":
        raise FunctionError(f"{function}: the second parameter must be generator_params")
    meta = getattr(fn, "custom_column_metadata", None)
    meta = meta if isinstance(meta, dict) else {}
    if meta.get("model_aliases"):
        raise FunctionError(
            f"{function} declares model_aliases (LLM calls from the function), which dd-assets"
            " does not provide; make the LLM call an llm column the function reads"
        )
    return ResolvedFunction(
        fn=fn,
        params=params,
        required_columns=required if required is not None else tuple(meta.get("required_columns") or ()),
        side_effect_columns=side if side is not None else tuple(meta.get("side_effect_columns") or ()),
        source_sha256=hashlib.sha256(source.encode("utf-8")).hexdigest(),
        is_async=inspect.iscoroutinefunction(inner),
    )  # fmt: skip


def identity(binding: FunctionBinding) -> dict[str, Any]:
    """What of a function decides its column's values (module docstring)."""
    r = resolve(binding)
    return {
        "function": binding.function,
        "source_sha256": r.source_sha256,
        "required_columns": list(r.required_columns),
        "side_effect_columns": list(r.side_effect_columns),
        "dtype": binding.dtype,
    }


def bind_functions(data: dict[str, Any], base: Path) -> list[Any]:
    """Fill each custom column of a raw workflow mapping from the function its
    `generator_function` names under `functions:` (importing it); returns ConfigIssues for
    unbound names, bad bindings and functions that do not load."""
    from pydantic import ValidationError

    from dd_assets.config.errors import ConfigIssue

    issues: list[ConfigIssue] = []
    raw = data.get("functions")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return [ConfigIssue("functions", "functions must map a name to 'package.module:function'")]
    bindings: dict[str, FunctionBinding] = {}
    for name, spec in raw.items():
        try:
            bindings[name] = FunctionBinding.model_validate(spec).bind(base)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                msg = err["msg"].removeprefix("Value error, ")
                issues.append(ConfigIssue(f"functions.{name}" + (f".{loc}" if loc else ""), msg))
    stages = data.get("stages")
    for i, stage in enumerate(stages if isinstance(stages, list) else []):
        columns = stage.get("columns") if isinstance(stage, dict) else None
        for j, col in enumerate(columns if isinstance(columns, list) else []):
            if isinstance(col, dict) and col.get("validator_type") == "local_callable":
                issues += _bind_validator(col, f"stages[{i}].columns[{j}]", bindings, raw)
                continue
            if not (isinstance(col, dict) and col.get("column_type") == "custom"):
                continue
            where = f"stages[{i}].columns[{j}]"
            fn_name = col.get("generator_function")
            if not isinstance(fn_name, str):
                continue  # the column's own validation reports it
            binding = bindings.get(fn_name)
            if binding is None:
                if fn_name not in raw:
                    issues.append(
                        ConfigIssue(
                            f"{where}.generator_function",
                            f"custom column {col.get('name')!r}: generator_function {fn_name!r} is"
                            f" not bound to a Python function; add to the workflow `functions:"
                            f" {{{fn_name}: 'package.module:{fn_name}'}}` (or"
                            f" 'path/to/file.py:{fn_name}'; dd-assets import: --function"
                            f" {fn_name}=WHERE)",
                        )
                    )
                continue
            try:
                r = resolve(binding)
            except FunctionError as exc:
                issues.append(ConfigIssue(f"functions.{fn_name}", str(exc)))
                continue
            strategy = col.get("generation_strategy", "cell_by_cell")
            first = "df" if strategy == "full_column" else "row"
            if r.params[0] != first:
                issues.append(
                    ConfigIssue(
                        f"{where}.generation_strategy",
                        f"custom column {col.get('name')!r} is {strategy}, so its function"
                        f" {binding.function} must take {first!r} first, not {r.params[0]!r}",
                    )
                )
            col["input_columns"] = list(r.required_columns)
            col["side_effect_columns"] = list(r.side_effect_columns)
            dtypes = binding.dtype if isinstance(binding.dtype, dict) else {}
            if isinstance(binding.dtype, str) and binding.dtype != "str":
                dtypes = {str(col.get("name")): binding.dtype}
            col["dtypes"] = dtypes
    return issues


def _bind_validator(
    col: dict[str, Any], where: str, bindings: dict[str, FunctionBinding], raw: dict[str, Any]
) -> list[Any]:
    """A local_callable validator: its validation_function bound and taking one DataFrame; the
    binding's dtype mapping types the report's fields beside is_valid."""
    from dd_assets.config.errors import ConfigIssue

    params = col.get("validator_params")
    name = params.get("validation_function") if isinstance(params, dict) else None
    if not isinstance(name, str):
        return []  # the column's own validation reports it
    binding = bindings.get(name)
    if binding is None:
        if name in raw:
            return []  # the binding itself is wrong: reported above
        return [
            ConfigIssue(
                f"{where}.validator_params.validation_function",
                f"local_callable validator of column {col.get('name')!r}: validation_function"
                f" {name!r} is not bound to a Python function; add to the workflow `functions:"
                f" {{{name}: 'package.module:{name}'}}` (or 'path/to/file.py:{name}'; dd-assets"
                f" import: --function {name}=WHERE)",
            )
        ]
    try:
        r = resolve(binding)
    except FunctionError as exc:
        return [ConfigIssue(f"functions.{name}", str(exc))]
    if r.params != ("df",):
        return [
            ConfigIssue(
                f"functions.{name}",
                f"{binding.function} is a local_callable validator: it must take one DataFrame"
                f" (df), as DataDesigner calls it; it takes ({', '.join(r.params)})",
            )
        ]
    fields = binding.dtype if isinstance(binding.dtype, dict) else {}
    params["report_fields"] = {k: v for k, v in fields.items() if k != "is_valid"}
    return []
