"""The layers of design.md, enforced by reading every module's imports (no module is imported).

protocols/ imports nothing else of cyclerd; drivers/ only protocols; simulators/ only drivers and
protocols; the analysis neither a simulator nor a driver. A violation names the file and line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# folder -> (its import prefix, the cyclerd prefixes it may import besides its own)
LAYERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "protocols": ("cyclerd.protocols", ()),
    "drivers": ("cyclerd.drivers", ("cyclerd.protocols",)),
    "simulators": ("cyclerd.simulators", ("cyclerd.drivers", "cyclerd.protocols")),
}
# The analysis reads stored data: whatever produced it is none of its business.
ANALYSIS_FORBIDDEN = ("cyclerd.simulators", "cyclerd.drivers")


def cyclerd_imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import of a cyclerd module in `path`, wherever it sits."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "cyclerd":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import; write `from cyclerd....`")
            module = node.module or ""
            if module.split(".")[0] != "cyclerd":
                continue
            if module == "cyclerd":  # `from cyclerd import store` imports cyclerd.store
                for alias in node.names:
                    yield node.lineno, f"cyclerd.{alias.name}"
            else:
                yield node.lineno, module


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_violations(root: Path) -> list[str]:
    """Every import in `root` that crosses the layers downward-only rule, as 'file:line: why'."""
    found = []
    for folder, (own, allowed) in LAYERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            for line, module in cyclerd_imports(path):
                if not any(_under(module, prefix) for prefix in (own, *allowed)):
                    found.append(f"{path.relative_to(root)}:{line}: {folder}/ imports {module}")
    for path in sorted((root / "cycler" / "analysis").rglob("*.py")):
        for line, module in cyclerd_imports(path):
            if any(_under(module, prefix) for prefix in ANALYSIS_FORBIDDEN):
                found.append(f"{path.relative_to(root)}:{line}: the analysis imports {module}")
    return found


def test_the_repository_keeps_its_layers() -> None:
    assert layer_violations(ROOT) == []


@pytest.mark.parametrize(
    ("folder", "line", "expected"),
    [
        ("protocols", "from cyclerd.drivers.base import Batch", "protocols/ imports cyclerd.drivers.base"),
        ("drivers", "import cyclerd.store", "drivers/ imports cyclerd.store"),
        ("drivers", "from cyclerd import daemon", "drivers/ imports cyclerd.daemon"),
        ("simulators", "from cyclerd.engine import Runner", "simulators/ imports cyclerd.engine"),
        (
            "cycler/analysis",
            "from cyclerd.simulators.presets import make_cell",
            "the analysis imports cyclerd.simulators.presets",
        ),
    ],
)
def test_a_forbidden_import_is_named(tmp_path: Path, folder: str, line: str, expected: str) -> None:
    for name in ("protocols", "drivers", "simulators", "cycler/analysis"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "ok.py").write_text("import numpy\nfrom cyclerd.protocols import model\n")
    culprit = tmp_path / folder / "culprit.py"
    culprit.write_text(f'"""A module."""\n\ndef f() -> None:\n    {line}\n')
    assert layer_violations(tmp_path) == [f"{folder}/culprit.py:4: {expected}"]
