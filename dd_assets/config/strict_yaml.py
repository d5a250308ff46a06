"""Reading a config file and its YAML strictly, in bounded time and memory.

A config is small, hand-written text. So: only a regular file (a FIFO would block, /dev/zero
never ends), at most `MAX_CONFIG_BYTES`, UTF-8; no duplicate keys (YAML's "last one wins" would
silently drop the first); no tags beyond YAML's core ones; and limits on nesting and on alias
expansion, checked while the node graph is composed, before any Python object is built (an alias
bomb is a few hundred bytes whose expansion would take gigabytes). Every problem is a
`YamlProblem` with the line it is on."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from dd_assets.config.limits import MAX_CONFIG_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES
from dd_assets.config.regular_files import NotRegularFile, open_regular

try:  # libyaml parses ~10x faster; the composing below is Python either way
    from yaml._yaml import CParser as _Parser

    def _init_parser(loader: Any, text: str) -> None:
        _Parser.__init__(loader, text)

except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser as _PyParser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, _PyParser):  # type: ignore[no-redef]
        pass

    def _init_parser(loader: Any, text: str) -> None:
        Reader.__init__(loader, text)
        Scanner.__init__(loader)
        _PyParser.__init__(loader)


# YAML's core schema; anything else (!!binary, !!set, !!timestamp, !!python/...) has no use in a
# config and only widens what the constructors must survive.
_CORE = "tag:yaml.org,2002:"
ALLOWED_TAGS = {_CORE + t for t in ("str", "int", "float", "bool", "null", "seq", "map")}
_MERGE = _CORE + "merge"


@dataclass
class YamlProblem(Exception):
    message: str
    line: int | None = None


def read_config_text(path: Path) -> str:
    """The file's text, refused unless it is a regular UTF-8 file of at most MAX_CONFIG_BYTES."""
    try:
        fd, st = open_regular(path)
    except FileNotFoundError:
        raise YamlProblem(f"config file not found: {path}") from None
    except NotRegularFile as exc:
        raise YamlProblem(f"config {path} is {exc.kind}; name a workflow YAML file") from None
    except OSError as exc:
        raise YamlProblem(f"cannot open config file {path}: {exc.strerror}") from None
    try:
        if st.st_size > MAX_CONFIG_BYTES:
            raise YamlProblem(_too_big(path, st.st_size))
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)  # the file may have grown since fstat
    except OSError as exc:
        raise YamlProblem(f"cannot read config file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise YamlProblem(_too_big(path, len(data)))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise YamlProblem(
            f"not UTF-8: byte 0x{data[exc.start]:02x} at line {line}, column {column};"
            " save the file as UTF-8",
            line,
        ) from None


def _too_big(path: Path, size: int) -> str:
    return (
        f"config file {path} is {size} bytes; a workflow config may be at most"
        f" {MAX_CONFIG_BYTES} bytes (put data in a seed file: seed: {{path: rows.parquet}})"
    )


class _StrictLoader(_Parser, Composer, SafeConstructor, Resolver):  # type: ignore[misc, valid-type]
    """libyaml's parser (when present) with PyYAML's Python composer, so that composing can be
    bounded: depth, recursion and expanded size are checked node by node."""

    def __init__(self, text: str) -> None:
        _init_parser(self, text)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0
        self._open: set[str] = set()  # anchors whose node is being composed
        self._size: dict[int, int] = {}  # id(node) -> nodes it expands to

    # CParser defines these in C, without the checks: the Python composer's win.
    get_single_node = Composer.get_single_node
    compose_document = Composer.compose_document
    compose_scalar_node = Composer.compose_scalar_node
    compose_sequence_node = Composer.compose_sequence_node

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            if event.anchor in self._open:
                raise ComposerError(
                    None,
                    None,
                    f"alias *{event.anchor} is used inside the node it names (a recursive"
                    " alias); a config must be a tree",
                    event.start_mark,
                )
            return Composer.compose_node(self, parent, index)
        event = self.peek_event()
        if self._depth >= MAX_YAML_DEPTH:
            raise ComposerError(
                None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", event.start_mark
            )
        tag = getattr(event, "tag", None)
        if tag not in (None, "!") and self._full_tag(tag) not in ALLOWED_TAGS:
            raise ComposerError(
                None,
                None,
                f"tag {tag.replace(_CORE, '!!')} is not allowed in a workflow config (only"
                " YAML's core types: !!str, !!int, !!float, !!bool, !!null, !!seq, !!map)",
                event.start_mark,
            )
        anchor = event.anchor
        if anchor is not None:
            self._open.add(anchor)
        self._depth += 1
        try:
            node = Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1
            self._open.discard(anchor)  # type: ignore[arg-type]
        size = 1
        if isinstance(node, SequenceNode):
            size += sum(self._size[id(n)] for n in node.value)
        elif isinstance(node, MappingNode):
            size += sum(self._size[id(k)] + self._size[id(v)] for k, v in node.value)
        if size > MAX_YAML_NODES:
            raise ComposerError(
                None,
                None,
                f"the config expands to more than {MAX_YAML_NODES} values (aliases count each time"
                " they are used); write it out, or put data in a seed file",
                node.start_mark,
            )
        self._size[id(node)] = size
        return node

    @staticmethod
    def _full_tag(tag: str) -> str:
        return _CORE + tag[2:] if tag.startswith("!!") else tag

    def compose_mapping_node(self, anchor: str | None) -> MappingNode:
        node = Composer.compose_mapping_node(self, anchor)
        seen: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE:
                continue  # a merge (<<) may be overridden by an explicit key, as YAML intends
            key = self.construct_object(key_node)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                continue  # unhashable: the constructor reports it
            if first is not key_node:
                raise ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {first.start_mark.line + 1}); YAML would"
                    " silently keep only the last one",
                    key_node.start_mark,
                )
        return node

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        if not isinstance(node, ScalarNode):
            return SafeConstructor.construct_object(self, node, deep)
        try:
            return SafeConstructor.construct_object(self, node, deep)
        except (ValueError, OverflowError, KeyError) as exc:
            # int() of 5000 digits, a 13th month, `!!bool maybe`: a value, not a bug.
            what = node.tag.rsplit(":", 1)[-1]
            raise ConstructorError(
                None, None, f"{node.value[:40]!r} is not a valid {what}: {exc}", node.start_mark
            ) from None


def parse_yaml(text: str) -> tuple[Any, Node | None]:
    """(data, root node) of one YAML document; YamlProblem with its line otherwise."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise _problem(exc, text) from None
    finally:
        loader.dispose()
    return data, node


def _problem(exc: yaml.YAMLError, text: str) -> YamlProblem:
    """One sentence with its line and column; PyYAML's own text spans several lines."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or "syntax error"
        if exc.context:
            what = f"{exc.context}: {what}"
        if mark is None:
            return YamlProblem(f"not valid YAML: {what}")
        return YamlProblem(f"not valid YAML: {what} (column {mark.column + 1})", mark.line + 1)
    position = getattr(exc, "position", None)  # a ReaderError: a character YAML refuses
    if isinstance(position, int):
        line = text.count("\n", 0, position) + 1
        return YamlProblem(f"not valid YAML: {str(exc).splitlines()[0]}", line)
    return YamlProblem(f"not valid YAML: {str(exc).splitlines()[0]}")


def parse_json(text: str) -> Any:
    """A JSON document (DataDesigner writes its configs as JSON too), with duplicate keys and
    nesting past MAX_YAML_DEPTH refused like in YAML."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise YamlProblem(f"duplicate key {k!r}; JSON readers would keep only the last")
            out[k] = v
        return out

    depth, in_string, escaped = 0, False, False
    for ch in text:  # json's decoder recurses per level: bound the nesting before it runs
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise YamlProblem(f"not valid JSON: nested more than {MAX_YAML_DEPTH} levels deep")
        elif ch in "]}":
            depth -= 1
    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise YamlProblem(f"not valid JSON: {exc.msg} (column {exc.colno})", exc.lineno) from None
