"""No argument of any `cyclerd` command reaches the user as a traceback: every subcommand's
arguments get a table of bad values (missing, a folder, not UTF-8, not a store, nested too deeply,
markup, huge numbers, ...) and then whatever text hypothesis makes up, and each must end with a
message and one of the documented exit codes (docs/cli.md).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cyclerd.cli.main import app

runner = CliRunner()
CYCLERD = Path(sys.executable).with_name("cyclerd")
DOCUMENTED = {0, 1, 2, 3, 4, 5, 6, 130}

ONE_CYCLE = """\
name: one cycle
cell: {area: 0.785 cm^2}
record: {every: 10 min}
steps:
  - repeat:
      count: 1
      steps:
        - plate: {current: 1 mA/cm^2, until: {charge: 1 mAh/cm^2}}
        - strip: {current: 1 mA/cm^2, until: {voltage_above: 1 V, duration: 2 h}}
"""
LAB = 'lab = "fuzz"\ndatabase = "lab.db"\n\n[[channels]]\nname = "ch1"\nsim = "mg"\n'
DEEP = "[" * 5000 + "]" * 5000

# Files the bad values name, made in the folder each test works in.
FILES: dict[str, bytes] = {
    "e1.yaml": ONE_CYCLE.encode(),
    "lab.toml": LAB.encode(),
    "not-utf8.bin": b'lab = "\xff\xfe"\nname: \xff\n',
    "README.md": b"# not a database, not a protocol, not a config\n" * 50,
    "deep.yaml": DEEP.encode(),
    "deep.toml": f"x = {DEEP}\n".encode(),
    "deep-table.toml": ("x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n").encode(),
    "empty": b"",
    "bad-params.yaml": b"ice: [unclosed\n",
    "list-params.yaml": b"- 1\n- 2\n",
    "run1.csv": b"Test Time / s,Voltage / V\nabc,def\n",
}
BAD_VALUES = [
    "missing.yaml",
    "folder",
    "not-utf8.bin",
    "README.md",
    "deep.yaml",
    "deep.toml",
    "deep-table.toml",
    "empty",
    "bad-params.yaml",
    "list-params.yaml",
    "",
    " ",
    "-1",
    "0",
    "1e309",
    "nan",
    "99999999999999999999",
    "[/red]",
    "[bold]x",
    "ü€",
    "\udcff.db",  # a byte that is not UTF-8 in argv, as Python hands it over (surrogateescape)
    DEEP,
    "ice=" + DEEP,
    "a" * 5000,
]
# Each command with one argument left open ({}); the others are good, so the bad one is what fails.
SLOTS: list[list[str]] = [
    ["validate", "{}"],
    ["validate", "e1.yaml", "--area", "{}"],
    ["run", "{}", "--sim", "mgagsn", "--db", "out.db"],
    ["run", "e1.yaml", "--sim", "{}", "--db", "out.db"],
    ["run", "e1.yaml", "--sim", "mgagsn", "--db", "{}"],
    ["run", "e1.yaml", "--sim", "mgagsn", "--params", "{}", "--db", "out.db"],
    ["run", "e1.yaml", "--sim", "mgagsn", "--set", "{}", "--db", "out.db"],
    ["run", "e1.yaml", "--sim", "mgagsn", "--set", "ice={}", "--db", "out.db"],
    ["run", "e1.yaml", "--sim", "mgagsn", "--seed", "{}", "--db", "out.db"],
    ["run", "e1.yaml", "--sim", "mgagsn", "--capacity", "{}", "--db", "out.db"],
    ["run", "e1.yaml", "--instrument", "TCPIP::127.0.0.1::1::SOCKET", "--driver", "{}", "--db", "out.db"],
    ["run", "e1.yaml", "--instrument", "TCPIP::127.0.0.1::1::SOCKET", "--speed", "{}", "--db", "out.db"],
    ["run", "e1.yaml", "--instrument", "TCPIP::127.0.0.1::1::SOCKET", "--poll", "{}", "--db", "out.db"],
    ["submit", "{}", "--channel", "ch1", "--db", "lab.db"],
    ["submit", "e1.yaml", "--channel", "{}", "--config", "lab.toml"],
    ["submit", "e1.yaml", "--channel", "ch1", "--db", "{}"],
    ["submit", "e1.yaml", "--channel", "ch1", "--config", "{}"],
    ["submit", "e1.yaml", "--channel", "ch1", "--mass", "{}", "--db", "lab.db"],
    ["queue", "--db", "{}"],
    ["queue", "--config", "{}"],
    ["status", "--db", "{}"],
    ["status", "--config", "{}"],
    ["pause", "{}", "--db", "lab.db"],
    ["resume", "1", "--db", "{}"],
    ["stop", "{}", "--db", "lab.db"],
    ["stop", "1", "--config", "{}"],
    ["runs", "--db", "{}"],
    ["runs", "--config", "{}"],
    ["show", "{}", "--db", "lab.db"],
    ["show", "1", "--db", "{}"],
    ["show", "1", "--db", "lab.db", "--reference-cycle", "{}"],
    ["plot", "1", "--kind", "{}", "--db", "lab.db", "-o", "p.png"],
    ["plot", "1", "--kind", "ce", "--db", "{}", "-o", "p.png"],
    ["plot", "{}", "--kind", "ce", "--db", "lab.db", "-o", "p.png"],
    ["report", "1", "--db", "{}", "-o", "r.html"],
    ["report", "1", "--db", "lab.db", "-o", "{}"],
    ["export", "1", "--format", "{}", "--db", "lab.db"],
    ["export", "1", "--format", "csv", "--db", "{}"],
    ["export", "1", "--format", "csv", "--db", "lab.db", "--cycles", "{}"],
    ["import", "{}", "--db", "imported.db"],
    ["import", "run1.csv", "--db", "{}"],
    ["serve", "--config", "{}", "--until-idle"],
    ["doctor", "--config", "{}", "--no-instruments", "--timeout", "0.5"],
    ["schema", "-o", "{}"],
    ["emulate", "{}", "--port", "0"],
]
# Values that would do real work rather than fail: a slot given one of these is skipped.
GOOD = {"emulate": {"keithley2450", "methodscript"}}


def restore(folder: Path) -> None:
    """The folder as it was: a slot that writes (schema -o, export, run --db) may have overwritten a
    bad file or left a new store that a later value would find."""
    keep = {*FILES, "folder", "lab.db", "lab.db-wal", "lab.db-shm"}
    for path in folder.iterdir():
        if path.name not in keep:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    for name, content in FILES.items():
        (folder / name).write_bytes(content)


def argv(slot: list[str], value: str) -> list[str]:
    return [value if part == "{}" else part for part in slot]


def assert_a_message(args: list[str]) -> None:
    result = runner.invoke(app, args)
    shown = [a[:40] for a in args]
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        shown,
        repr(result.exception),
        result.output[-2000:],
    )
    assert result.exit_code in DOCUMENTED, (shown, result.exit_code, result.output[-2000:])
    assert "Traceback" not in result.output, (shown, result.output[-2000:])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A lab folder with a store holding one run, and the files the bad values name."""
    here = tmp_path_factory.mktemp("fuzz")
    restore(here)
    (here / "folder").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(here)
        patch.delenv("CYCLERD_CONFIG", raising=False)
        ran = runner.invoke(app, ["run", "e1.yaml", "--sim", "mg", "--db", "lab.db"])
        assert ran.exit_code == 0, ran.output
        yield here


@pytest.mark.parametrize("slot", SLOTS, ids=lambda slot: " ".join(slot))
def test_bad_values_in_every_argument_end_in_a_message(folder: Path, slot: list[str]) -> None:
    for value in BAD_VALUES:
        if value in GOOD.get(slot[0], set()):
            continue
        restore(folder)
        assert_a_message(argv(slot, value))


TEXT = st.text(
    # argv cannot hold NUL (C strings); lone surrogates are covered by the table above.
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=30,
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(slot=st.sampled_from(SLOTS), value=TEXT)
def test_any_text_in_any_argument_ends_in_a_message(folder: Path, slot: list[str], value: str) -> None:
    if value.strip() in GOOD.get(slot[0], set()):
        return
    restore(folder)
    assert_a_message(argv(slot, value))


@pytest.mark.parametrize(
    "args",
    [
        ["show", "1", "--db", "README.md"],
        ["run", "e1.yaml", "--sim", "mgagsn", "--params", "nofile.yaml", "--db", "out.db"],
        ["serve", "--config", "folder"],
        ["serve", "--config", "not-utf8.bin"],
        ["serve", "--config", "deep.toml"],
        ["doctor", "--config", "deep.toml"],
        ["run", "e1.yaml", "--sim", "mgagsn", "--set", "ice=" + DEEP[:2000], "--db", "out.db"],
    ],
    ids=lambda args: " ".join(a[:20] for a in args),
)
def test_the_installed_command_prints_a_message_not_a_traceback(folder: Path, args: list[str]) -> None:
    """What the issue saw, through the real entry point (a new process, as the operator runs it)."""
    restore(folder)
    done = subprocess.run([CYCLERD, *args], cwd=folder, capture_output=True, text=True, timeout=60)
    assert done.returncode in DOCUMENTED - {0}, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert (done.stderr + done.stdout).strip(), "a refusal says why"
