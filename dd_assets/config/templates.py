"""One Jinja2 environment for every template (expressions, prompts, filters), so that what the
config validator sees as a template's dependencies is exactly what the engine renders."""

from __future__ import annotations

import json
from functools import lru_cache

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment


@lru_cache(maxsize=1)
def environment() -> SandboxedEnvironment:
    # StrictUndefined: a misspelt column must fail loudly, never render as "".
    return SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)


def _json_value(value: object) -> object:
    """How DataDesigner prints a value into a JSON template: JSON literals, dicts and lists as
    JSON text, strings as they are."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


@lru_cache(maxsize=1)
def json_environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, finalize=_json_value
    )


@lru_cache(maxsize=4096)
def compile_template(source: str, json_values: bool = False) -> jinja2.Template:
    return (json_environment() if json_values else environment()).from_string(source)


def referenced_names(source: str) -> frozenset[str]:
    """Top-level variables a template reads; raises jinja2.TemplateSyntaxError on bad syntax.

    Cached: the engine asks for every LLM cell's dependencies, and parsing costs ~0.5 ms."""
    return _referenced_names(source)


@lru_cache(maxsize=4096)
def _referenced_names(source: str) -> frozenset[str]:
    return frozenset(meta.find_undeclared_variables(environment().parse(source)))
