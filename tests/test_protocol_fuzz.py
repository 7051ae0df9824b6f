"""Whatever text arrives, loading it either gives a Protocol or raises a ProtocolError whose
problems point inside the text: never another exception, never a position off the page."""

from __future__ import annotations

import copy
import re
import string
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyclerd.protocols import Protocol, ProtocolError, loads

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# /tmp/e1.yaml, the plating/stripping protocol with EIS every 10 min, as the parsed dict.
E1: dict[str, Any] = {
    "name": "E1 test",
    "cell": {"area": "0.785 cm^2", "capacity": "1 mAh/cm^2"},
    "safety": {"voltage_min": "-0.5 V", "voltage_max": "1.5 V", "current_max": "3 mA/cm^2"},
    "steps": [
        {"rest": "10 min"},
        "Charge at 0.1C until 1.2 V (10 seconds period)",
        {
            "repeat": {
                "count": 300,
                "until": {"short_circuit": True},
                "steps": [
                    {
                        "plate": {
                            "current": "1 mA/cm^2",
                            "until": {"charge": "1 mAh/cm^2", "voltage_below": "-0.4 V"},
                            "every": {
                                "interval": "10 min",
                                "at_end": True,
                                "steps": [
                                    {
                                        "eis": {
                                            "frequency_start": "7 MHz",
                                            "frequency_stop": "0.1 Hz",
                                            "amplitude": "10 mV",
                                        }
                                    }
                                ],
                            },
                        }
                    },
                    {"strip": {"current": "1 mA/cm^2", "until": {"voltage_above": "1 V", "duration": "2 h"}}},
                ],
            }
        },
    ],
}

UNIT_TEXTS = [
    "1 mA", "-5 min", "nan V", "inf V", "1e999 V", "-1e999 V", "C/0", "-C/0", "1e999C", "C/1e-320",
    "10 m", "0 s", "min", "V", "", " ", "1 mA/cm^2", "-1 mA/cm^2", "C/20", "-C/2", "0.1C", "2C",
    "1 mAh", "1 mAh/cm^2", "95 %", "150 %", "-5 %", "60 degC", "60 °C", "7 MHz", "0 Hz", "1 mV/s",
    "10 ** 1000 s", "10 ** 1000 V", "2 ** 2000 mA", "9 ** 9 ** 9 s", "1" + "0" * 400 + " V",
    "1 s / 0", "(1 s", "10 blargs",
    "10 fortnights", "1 e", "ocv", "3 kg", "1 Ohm", "4.2 V", "2.5 V", "-0.4 V", "1 h", "1e-320 s",
    "Rest for 5 m", "Rest for 10 minutes", "Charge at 1 W until 4 V", "Charge at 0.1C until 4.25 V",
    "Discharge at 1 mA for -3 minutes", "Hold at 4.25 V until C/20", "Charge at 1e999 A until 4 V",
    "Discharge at C/0 for 1 h", "Hold at 1 V", "charge at 1 mA for 1 hr (1 s period)",
    "1 ma", "1 MA", "0.1c", "0.1 C", "c/20", "3.6 C", "3.6 A*s", "7 mhz", "10 Mv", "60 C", "0.1 Hz",
]  # fmt: skip
KEYS = [
    "name", "description", "cell", "area", "capacity", "metadata", "safety", "voltage_min",
    "voltage_max", "current_max", "temperature_max", "duration_max", "record", "every",
    "voltage_change", "current_change", "steps", "until", "duration", "voltage_above",
    "voltage_below", "current_below", "charge", "dvdt_below", "label", "current", "voltage",
    "current_limit", "interval", "at_start", "at_end", "count", "short_circuit",
    "coulombic_efficiency_below", "capacity_retention_below", "frequency_start", "frequency_stop",
    "points_per_decade", "amplitude", "dc_level", "start", "vertices", "scan_rate", "scans", "kind",
    "$schema", "<<", "nme", "curent", "untill",
]  # fmt: skip
STEP_KINDS = ["rest", "cc", "plate", "strip", "cv", "cccv", "eis", "sweep", "repeat"]
UNKNOWN_KINDS = ["plte", "pulse", "ocv", "Rest", "CC", "", "gitt", "kind"]

keys = st.one_of(
    st.sampled_from(KEYS + STEP_KINDS + UNKNOWN_KINDS),
    st.text(max_size=8),
    st.integers(-3, 3),
    st.none(),
    st.booleans(),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(UNIT_TEXTS),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(keys, inner, max_size=3),
        st.builds(lambda kind, body: {kind: body}, st.sampled_from(STEP_KINDS + UNKNOWN_KINDS), inner),
    ),
    max_leaves=6,
)

Path = tuple[Any, ...]


def _paths(node: Any, prefix: Path = ()) -> list[Path]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*prefix, i))
    return found


def _get(node: Any, path: Path) -> Any:
    for part in path:
        node = node[part]
    return node


def _mutate(doc: Any, data: st.DataObject) -> Any:
    """One random edit somewhere in `doc`: delete, replace, rename, insert a step, or copy a
    subtree elsewhere (e.g. a repeat into an every-block)."""
    paths = _paths(doc)
    path = data.draw(st.sampled_from(paths), label="path")
    operation = data.draw(
        st.sampled_from(["delete", "replace", "rename", "insert_step", "copy"]), label="operation"
    )
    if not path:
        return data.draw(values, label="new document") if operation == "replace" else doc
    parent, last = _get(doc, path[:-1]), path[-1]
    if operation == "delete":
        del parent[last]
    elif operation == "replace":
        parent[last] = data.draw(values, label="value")
    elif operation == "rename" and isinstance(parent, dict):
        new_key = data.draw(keys, label="new key")
        parent[new_key] = parent.pop(last)
    elif operation == "insert_step":
        target = _get(doc, path)
        kind = data.draw(st.sampled_from(STEP_KINDS + UNKNOWN_KINDS), label="kind")
        step = {kind: data.draw(values, label="body")}
        if isinstance(target, list):
            target.insert(data.draw(st.integers(0, len(target)), label="at"), step)
        else:
            parent[last] = [step]
    elif operation == "copy":
        source = data.draw(st.sampled_from(paths), label="copy from")
        parent[last] = copy.deepcopy(_get(doc, source))
    return doc


# YAML that safe_dump never writes: complex and merge keys, tags, aliases (one of them inside
# its own anchor), extra documents and directives.
SNIPPETS = [
    "? [a, b]\n: 1\n", "? {a: 1}\n: 2\n", "x: &r [*r]\n", "x: &r {y: *r}\n", "<<: {name: y}\n",
    "<<: 3\n", "x: !!python/tuple [1]\n", "x: !!binary aGk=\n", "x: !!set {a, b}\n",
    "x: *undefined\n", "---\n", "...\n", "%YAML 1.1\n", "x: 2025-01-01\n", "2025-01-01: x\n",
    "null: x\n", "1.5: x\n", "x: 0x1F\n", "x: .nan\n", "x: |\n  text\n", "x: 'unclosed\n",
]  # fmt: skip


def _mutate_text(text: str, data: st.DataObject) -> str:
    """Edits YAML cannot express as data: a duplicated line (duplicate keys), a deleted line,
    a tab, a cut-off file, a snippet of unusual YAML at some indentation."""
    lines = text.splitlines(keepends=True)
    if not lines:
        return text
    i = data.draw(st.integers(0, len(lines) - 1), label="line")
    edits = ["none", "duplicate", "delete", "tab", "truncate", "inject"]
    edit = data.draw(st.sampled_from(edits), label="text")
    if edit == "inject":
        indent = " " * (len(lines[i]) - len(lines[i].lstrip(" ")))
        snippet = data.draw(st.sampled_from(SNIPPETS), label="snippet")
        lines.insert(i, "".join(indent + line for line in snippet.splitlines(keepends=True)))
    elif edit == "duplicate":
        lines.insert(i, lines[i])
    elif edit == "delete":
        del lines[i]
    elif edit == "tab":
        lines[i] = "\t" + lines[i].lstrip(" ")
    elif edit == "truncate":
        return text[: data.draw(st.integers(0, len(text)), label="cut")]
    return "".join(lines)


def _check(text: str) -> Protocol | ProtocolError:
    """Load `text`: only a Protocol or a ProtocolError with positions inside the text may come."""
    try:
        return loads(text, "fuzz.yaml")
    except ProtocolError as exc:
        error = exc
    assert error.problems, "a ProtocolError must list at least one problem"
    last_line = len(re.split(r"\r\n|[\n\r\x85\u2028\u2029]", text))  # YAML's line breaks
    for problem in error.problems:
        assert problem.file == "fuzz.yaml"
        assert 1 <= problem.line <= last_line + 1, (problem, text)
        assert problem.column >= 1, problem
        assert problem.message.strip(), problem
    assert str(error).splitlines()[0].endswith("in fuzz.yaml")
    return error


def test_the_seed_document_loads() -> None:
    protocol = loads(yaml.safe_dump(E1, sort_keys=False), "e1.yaml")
    assert protocol.name == "E1 test"
    assert [step.kind for step in protocol.steps] == ["rest", "cc", "repeat"]


YAML_CHARACTERS = list(":-[]{},#&*!|>'\"?%@`\\\n\t ") + list(string.ascii_letters + string.digits)
YAMLISH = st.text(alphabet=st.sampled_from(YAML_CHARACTERS), max_size=120)
LINES = st.lists(
    st.builds(
        lambda indent, key, value: f"{' ' * indent}{key}{value}",
        st.integers(0, 8),
        st.sampled_from(["", "- ", *(f"{k}: " for k in KEYS[:20] + STEP_KINDS)]),
        st.sampled_from(["", "{", "[", "]", "}", "- ", "&a ", "*a", "!!str ", "|", *UNIT_TEXTS]),
    ),
    max_size=12,
).map("\n".join)


@FUZZ
@given(st.one_of(st.text(max_size=200), YAMLISH, LINES))
def test_random_text_raises_only_protocol_errors(text: str) -> None:
    _check(text)


@FUZZ
@given(st.data())
def test_mutated_protocols_raise_only_protocol_errors(data: st.DataObject) -> None:
    doc: Any = copy.deepcopy(E1)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        doc = _mutate(doc, data)
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=data.draw(st.booleans(), label="unicode"))
    _check(_mutate_text(text, data))


@FUZZ
@given(st.data())
def test_values_swapped_for_quantity_texts_raise_only_protocol_errors(data: st.DataObject) -> None:
    # Every leaf replaced, so each quantity field meets the nasty texts, not just random ones.
    doc: Any = copy.deepcopy(E1)
    leaves = [p for p in _paths(doc) if p and not isinstance(_get(doc, p), dict | list)]
    for path in data.draw(st.lists(st.sampled_from(leaves), min_size=1, max_size=4), label="leaves"):
        _get(doc, path[:-1])[path[-1]] = data.draw(st.sampled_from(UNIT_TEXTS) | scalars, label="v")
    result = _check(yaml.safe_dump(doc, sort_keys=False))
    if isinstance(result, Protocol):
        assert result.name
