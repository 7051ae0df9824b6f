"""Reading protocol files: safe YAML with positions kept, so every error names file:line:column.

YAML is composed into nodes (which remember where they came from), built into plain data
with the safe constructor (nothing in a file is ever executed), validated by the pydantic
model and then by the semantic checks. Errors from all three are mapped back to nodes. When
the model refuses parts of a file, the checks still run on the parts it accepted, so that
one run of `validate` lists every problem.
"""

from __future__ import annotations

import copy
import datetime as dt
import difflib
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from cyclerd.protocols import checks
from cyclerd.protocols.errors import Problem, ProtocolError
from cyclerd.protocols.model import STEP_KINDS, Protocol

Loc = tuple[int | str, ...]


def load(path: str | Path) -> Protocol:
    """The protocol in `path`; raises ProtocolError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProtocolError([Problem(str(path), 1, 1, f"cannot read the file: {exc}")]) from None
    return loads(text, str(path))


def loads(text: str, filename: str = "<protocol>") -> Protocol:
    """The protocol in `text`; `filename` is only used in error messages."""
    root, data = _parse_yaml(text, filename)
    try:
        protocol = Protocol.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(filename, root, err) for err in exc.errors()]
        rest = _Rest(data)
        salvaged = rest.validate(exc.errors())
        if salvaged is not None:  # the contradictions in what did validate, in the same report
            unread = [p for p in map(rest.model_path, rest.cut) if p is not None]
            for issue in checks.check(salvaged, unread):
                node = _locate(root, rest.file_path(issue.path), key=issue.at_key)
                problems.append(_at(filename, node, issue.message))
        raise ProtocolError(problems) from None
    issues = checks.check(protocol)
    if issues:
        raise ProtocolError(
            [_at(filename, _locate(root, issue.path, key=issue.at_key), issue.message) for issue in issues]
        )
    return protocol


_GONE: Any = object()  # a list item cut from `_Rest.data`; it keeps the file's indices valid
_ROUNDS = 50  # cutting a leaf can make its parent invalid; each round cuts one level more


class _Rest:
    """The file's data with what the model refused cut away, so the checks can run on the rest.

    Values are cut where the model's error points (or at the nearest value that exists there);
    cut list items stay as `_GONE`, so model paths into the cut-down data map back to the file.
    `cut` lists the file paths of the values cut.
    """

    def __init__(self, data: Any) -> None:
        self.data = copy.deepcopy(data)
        self.cut: list[Loc] = []

    def validate(self, errors: list[ErrorDetails]) -> Protocol | None:
        """The protocol that what is left makes, or None if nothing checkable is left."""
        for _ in range(_ROUNDS):
            paths = [self.file_path(tuple(err["loc"])) for err in errors]  # all before any cut
            cuts = [self._cut(path) for path in paths]  # every one, not up to the first
            if not any(cuts):
                return None
            try:
                return Protocol.model_validate(_without_gone(self.data))
            except ValidationError as exc:
                errors = exc.errors()
        return None

    def file_path(self, loc: Loc) -> Loc:
        """The path in the file's data of a path into the cut-down data (list indices shift)."""
        node: Any = self.data
        path: list[int | str] = []
        for part in loc:
            if isinstance(node, list) and isinstance(part, int):
                kept = [i for i, item in enumerate(node) if item is not _GONE]
                part = kept[part] if 0 <= part < len(kept) else part
                node = node[part] if 0 <= part < len(node) else None
            elif isinstance(node, dict) and part in node:
                node = node[part]
            path.append(part)  # parts that are not keys (step kinds, '[key]') are kept as they are
        return tuple(path)

    def model_path(self, path: Loc) -> Loc | None:
        """The path into the cut-down data of a file path; None if a list item on it was cut."""
        node: Any = self.data
        loc: list[int | str] = []
        for part in path:
            if isinstance(node, list) and isinstance(part, int):
                if not 0 <= part < len(node) or node[part] is _GONE:
                    return None
                loc.append(sum(item is not _GONE for item in node[:part]))
                node = node[part]
                continue
            if isinstance(node, dict) and part in node:
                node = node[part]
            loc.append(part)
        return tuple(loc)

    def _cut(self, path: Loc) -> bool:
        """Cut the value deepest along `path` that exists; False if only the whole file is left."""
        node: Any = self.data
        parent: Any = None
        key: int | str = ""
        found: Loc = ()
        for i, part in enumerate(path):
            if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                if node[part] is _GONE:
                    return False  # already cut
                parent, key, node, found = node, part, node[part], path[: i + 1]
            elif isinstance(node, dict) and part in node:
                parent, key, node, found = node, part, node[part], path[: i + 1]
        if parent is None:
            return False
        if found == ("name",):  # required, and not part of any check: any readable name will do
            if parent["name"] == "protocol":
                return False
            parent["name"] = "protocol"
            return True
        if isinstance(parent, list) and isinstance(key, int):
            parent[key] = _GONE
        else:
            del parent[key]
        self.cut.append(found)
        return True


def _without_gone(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_gone(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_without_gone(v) for v in data if v is not _GONE]
    return data


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one mapping; the message already says what to do."""


class _Constructor(yaml.constructor.SafeConstructor):
    """The safe constructor, refusing duplicate keys (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[str, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` is resolved by the base class; later keys override it
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                continue  # unhashable keys are refused by the base class, numbers by the model
            if key in seen:
                first = seen[key].start_mark
                raise _DuplicateKey(
                    None,
                    None,
                    f"'{key}' appears twice in this mapping (first at line {first.line + 1}); keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


# What PyYAML reports -> what to write instead, and whether the fault lies where the unfinished
# construct began (an unclosed quote, a key without ':') rather than where PyYAML noticed it.
_YAML_HINTS: tuple[tuple[str, str, bool], ...] = (
    ("'\\t'", "indent with spaces, not tabs", False),
    ("expected ',' or ']'", "close the list with ']' and separate its items with ','", False),
    ("expected ',' or '}'", "close the mapping with '}' and separate entries with ','", False),
    ("found unexpected end of stream", "close the quoted text with the same quote", True),
    ("could not find expected ':'", "write 'key: value', with a space after the colon", True),
    ("expected <block end>", "line this entry up with the ones above it", False),
    ("mapping values are not allowed", "quote text containing ': ', or fix the indentation", False),
    ("found undefined alias", "define the anchor ('&name') before its alias ('*name')", False),
    ("could not determine a constructor", "remove the '!' tag; write plain text or numbers", False),
    ("but found another document", "keep one protocol per file: remove the second '---'", False),
    ("found unhashable key", "a key must be a word such as 'name'", False),
)


def _yaml_problem(exc: yaml.MarkedYAMLError, filename: str) -> Problem:
    """A YAML syntax error placed where to fix it, saying what to write instead."""
    what = exc.problem or exc.context or "invalid YAML"
    hint, at_start = "", False
    if not isinstance(exc, _DuplicateKey):
        default = ("check the indentation and quoting here", False)
        hint, at_start = next(((h, s) for f, h, s in _YAML_HINTS if f in what), default)
        # Ran off the end of the file: the unclosed bracket or quote is what to point at.
        at_start = at_start or "<stream end>" in what
    mark = (exc.context_mark if at_start else None) or exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return Problem(filename, line, column, f"YAML: {what}" + (f"; {hint}" if hint else ""))


MAX_TEXT_CHARS = 1_000_000  # the library's longest protocol is ~8 kB
MAX_VALUES = 100_000  # values in the file once every alias is written out
MAX_STEPS = 10_000  # step entries written in the file (a loop's count does not multiply them)


def _parse_yaml(text: str, filename: str) -> tuple[yaml.Node | None, Any]:
    if len(text) > MAX_TEXT_CHARS:
        message = (
            f"the file has {len(text):,} characters, more than a protocol may ({MAX_TEXT_CHARS:,}); "
            "write long sequences as `repeat` loops and keep notes short"
        )
        raise ProtocolError([Problem(filename, 1, 1, message)])
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            if root is not None:
                _refuse_expansion(root, filename)
            constructor = _Constructor()
            data = None if root is None else _plain(constructor.construct_document(root))
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        raise ProtocolError([_yaml_problem(exc, filename)]) from None
    except yaml.reader.ReaderError as exc:
        # Not marked with a line and column: count them from the character offset.
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        message = f"YAML: the character {chr(exc.character)!r} is not allowed here; delete it"
        raise ProtocolError([Problem(filename, line, column, message)]) from None
    except yaml.YAMLError as exc:
        raise ProtocolError([Problem(filename, 1, 1, f"YAML: {exc}")]) from None
    except RecursionError:
        # Also what an alias inside its own anchor (`a: &a [*a]`) comes to.
        message = (
            "nested too deeply to be a protocol; flatten it, and write out any alias ('*a') "
            "used inside its own anchor ('&a')"
        )
        raise ProtocolError([Problem(filename, 1, 1, message)]) from None
    if root is None:
        raise ProtocolError([Problem(filename, 1, 1, "the file is empty; a protocol needs name and steps")])
    steps = _count_steps(data.get("steps") if isinstance(data, dict) else None)
    if steps > MAX_STEPS:
        node = _locate(root, ("steps",), key=True) or root
        message = (
            f"{steps:,} steps are written here, more than a protocol may have ({MAX_STEPS:,}); "
            "repeat steps with `repeat: {count: N}` instead of writing them out"
        )
        raise ProtocolError([_at(filename, node, message)])
    return root, data


def _count_steps(steps: Any) -> int:
    """Step entries in a `steps` list, those inside `repeat` blocks included."""
    if not isinstance(steps, list):
        return 0
    count = len(steps)
    for step in steps:
        if isinstance(step, dict) and isinstance(step.get("repeat"), dict):
            count += _count_steps(step["repeat"].get("steps"))
    return count


def _refuse_expansion(root: yaml.Node, filename: str) -> None:
    """ProtocolError if the file stands for more than MAX_VALUES values with its aliases written
    out: a few hundred bytes of nested aliases can stand for billions, which would take all
    the daemon's memory. Counted on the composed nodes, where an alias is the node it names, so
    the count itself costs one visit per distinct node."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # being counted: met again below itself, it contains itself
    pending: list[tuple[yaml.Node, bool]] = [(root, False)]
    while pending:  # iterative: depth is the YAML parser's problem, not this count's
        node, children_done = pending.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not children_done:
            if id(node) in open_nodes:
                line, column = node.start_mark.line + 1, node.start_mark.column + 1
                message = "an alias ('*a') is used inside its own anchor ('&a'); write the inner one out"
                raise ProtocolError([Problem(filename, line, column, message)])
            open_nodes.add(id(node))
            pending.append((node, True))
            pending.extend((child, False) for child in children if id(child) not in sizes)
            continue
        open_nodes.discard(id(node))
        sizes[id(node)] = 1 + sum(sizes.get(id(child), 1) for child in children)
        if sizes[id(node)] > MAX_VALUES:
            line, column = node.start_mark.line + 1, node.start_mark.column + 1
            message = (
                f"with its aliases ('*name') written out this holds more than {MAX_VALUES:,} values, "
                "more than any protocol needs; repeat steps with `repeat: {count: N}` instead"
            )
            raise ProtocolError([Problem(filename, line, column, message)])


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _plain(data: Any) -> Any:
    """Dates YAML recognised by itself become text again: metadata such as 'made: 2025-03-01'."""
    if isinstance(data, dict):
        return {_plain(k): _plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain(v) for v in data]
    if isinstance(data, dt.date | dt.datetime):
        return data.isoformat()
    return data


def _locate(node: yaml.Node | None, loc: Loc, key: bool = False) -> yaml.Node | None:
    """The node a pydantic location points at; parts that are not keys (union tags) are skipped.

    With `key`, a location ending in a mapping key points at the key rather than its value.
    """
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                    scalar = isinstance(value_node, yaml.ScalarNode)
                    node = key_node if last and (key or not scalar) else value_node
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
    return node


def _at(filename: str, node: yaml.Node | None, message: str) -> Problem:
    if node is None:
        return Problem(filename, 1, 1, message)
    return Problem(filename, node.start_mark.line + 1, node.start_mark.column + 1, message)


def _problem(filename: str, root: yaml.Node | None, err: ErrorDetails) -> Problem:
    loc = tuple(err["loc"])
    if loc and loc[-1] == "[key]":  # a key that is not text in a free-form mapping (metadata)
        name = loc[-2]
        message = f"the key {name} must be text; put it in quotes, e.g. '\"{name}\": ...'"
        return _at(filename, _locate(root, loc[:-1], key=True), message)
    if err["type"] == "missing":
        # Point at the key whose settings lack it: the mapping itself starts a line further on.
        return _at(filename, _locate(root, loc[:-1], key=True), _message(loc, err))
    key = err["type"] in ("extra_forbidden", "invalid_key")
    return _at(filename, _locate(root, loc, key=key), _message(loc, err))


def _message(loc: Loc, err: ErrorDetails) -> str:
    kind = err["type"]
    name = str(loc[-1]) if loc else "the protocol"
    if not loc and kind in ("model_type", "model_attributes_type"):
        return "a protocol is a mapping of keys to values: 'name: ...' followed by 'steps:'"
    if kind in ("extra_forbidden", "invalid_key"):  # invalid_key: a number or null as a key
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown key '{name}'; {hint}allowed here: {', '.join(allowed)}"
    if kind == "missing":
        return f"missing '{name}'; add {_example(loc)}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"'{name}' must be a mapping of keys to values, e.g. {_example(loc)}"
    if kind == "list_type":
        return f"'{name}' must be a list (lines starting with '- ')"
    if kind in ("int_type", "int_parsing", "int_from_float", "finite_number"):
        return f"'{name}' must be a whole number, e.g. {_example(loc)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"'{name}' must be true or false"
    if kind == "string_type":
        return f"'{name}' must be text"
    if kind == "too_short":
        return f"'{name}' must not be empty; add at least one entry"
    if kind == "string_too_short":
        return f"'{name}' must not be empty; write e.g. {_example(loc)}"
    if kind.startswith(("greater_than", "less_than")):
        limit = next(iter((err.get("ctx") or {}).values()), "")
        words = kind.replace("_", " ").replace("equal", "or equal to")
        return f"'{name}' must be {words} {limit}"
    return err["msg"]  # our own validators' messages already say what to write


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    stack = [annotation]
    while stack:
        item = stack.pop()
        if isinstance(item, type) and issubclass(item, BaseModel):
            found.append(item)
        else:
            stack.extend(get_args(item))
    return found


def _models_at(loc: Loc) -> list[type[BaseModel]]:
    """The model classes that may stand at `loc` (discriminator tags narrow step unions)."""
    models: list[type[BaseModel]] = [Protocol]
    for part in loc:
        if isinstance(part, int):
            continue
        narrowed: list[type[BaseModel]] = []
        for model in models:
            field = model.model_fields.get(part)
            if field is not None:
                narrowed.extend(_models_in(field.annotation))
            elif STEP_KINDS.get(part) is model:
                narrowed.append(model)
        models = narrowed or models
    return models


def _allowed_keys(loc: Loc) -> list[str]:
    return sorted({name for model in _models_at(loc) for name in model.model_fields if name != "kind"})


def _example(loc: Loc) -> str:
    name = str(loc[-1]) if loc else ""
    for model in _models_at(loc[:-1]):
        field = model.model_fields.get(name)
        if field is None:
            continue
        if field.examples:
            return f"'{name}: {field.examples[0]}'"
        sections = [] if get_origin(field.annotation) is list else _models_in(field.annotation)
        for sub in sections:  # a section such as 'cell': show one of its settings
            for sub_name, sub_field in sub.model_fields.items():
                if sub_field.examples:
                    return f"'{name}: {{{sub_name}: {sub_field.examples[0]}}}'"
        if field.annotation is bool:
            return f"'{name}: true' or '{name}: false'"
    if name == "steps":
        return "'steps:' followed by a list of steps, e.g. '- rest: 10 min'"
    return f"'{name}: ...'"
