"""What every config model shares, and how a field added later keeps old fingerprints valid.

A stage's fingerprint hashes its config as dumped to JSON. A field added to a model after
configs were written would appear in every dump (with its default) and so change every existing
fingerprint: every dataset on disk would look stale, though nothing about it changed. Fields
added after the first release are therefore declared with `added_field(...)`; the fingerprint
dump (`fingerprint_dump`) leaves such a field out while it holds its default, so only configs
that use it get a new fingerprint."""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict

# fullmatch, never `^...$`: `$` also matches before a trailing newline, so "s\n" would pass.
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_identifier(value: object) -> bool:
    """ASCII letters, digits and `_`, not starting with a digit: a name a Jinja template, a
    Dagster asset key and an environment variable all accept (str.isidentifier takes any script)."""
    return isinstance(value, str) and _IDENTIFIER_RE.fullmatch(value) is not None


def identity_url(url: str) -> str:
    """An endpoint as it enters a fingerprint: scheme, host, port and path; never userinfo, query
    or fragment (a credential there must not reach disk). IPv6 hosts stay unbracketed, as every
    fingerprint so far has them."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def model_settings(**kwargs: Any) -> ConfigDict:
    """The `model_config` of every config model: pydantic's settings as given, and `defer_build`.

    Without it, each of the ~60 config models builds its own validator and serializer when its
    class is created, ~0.15 s of every command's start (docs/speed.md), though a config is
    validated by WorkflowConfig's validator alone (which holds all of them) and a few models are
    dumped on their own (the columns a config uses, for fingerprints). Deferred, a model builds
    them the first time it is used, and only the models a command uses pay. Validation and
    dumps are the same either way (tests/config/test_fingerprint.py)."""
    return ConfigDict(defer_build=True, **kwargs)


# Config numbers and flags are strict: YAML reads `true` as a bool, and pydantic's lax mode would
# take it as 1 (`buffer_size: true`), "5" as 5 and 5.0 as 5. Floats must be finite (`.nan`, `.inf`
# pass every range check by comparing false). Every int, float and bool field of a config model
# uses these (tests/config/test_strict_fields.py checks it).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]  # strict still accepts an int
Bool = Annotated[bool, Strict()]
Scalar = str | Int | Float | Bool  # a category value or an option key: any YAML scalar but null

_OMIT_DEFAULT = {"fingerprint": "omit_default"}


def added_field(default: Any = None, **kwargs: Any) -> Any:
    """A pydantic Field left out of fingerprints while it holds its default (see above)."""
    extra = {**kwargs.pop("json_schema_extra", {}), **_OMIT_DEFAULT}
    return Field(default=default, json_schema_extra=extra, **kwargs)


def fingerprint_dump(model: BaseModel) -> dict[str, Any]:
    """`model.model_dump(mode="json")` without added fields that hold their defaults."""
    data = model.model_dump(mode="json")
    _prune(model, data)
    return data


def _omitted(field: Any, value: Any) -> bool:
    extra = field.json_schema_extra
    if not (isinstance(extra, dict) and extra.get("fingerprint") == "omit_default"):
        return False
    return bool(value == field.get_default(call_default_factory=True))


def _prune(value: Any, data: Any) -> None:
    if isinstance(value, BaseModel) and isinstance(data, dict):
        for name, field in type(value).model_fields.items():
            if name not in data:
                continue
            v = getattr(value, name)
            if _omitted(field, v):
                del data[name]
            else:
                _prune(v, data[name])
    elif isinstance(value, list | tuple) and isinstance(data, list):
        for v, d in zip(value, data, strict=False):
            _prune(v, d)
    elif isinstance(value, dict) and isinstance(data, dict):
        for k, v in value.items():
            if str(k) in data:
                _prune(v, data[str(k)])
