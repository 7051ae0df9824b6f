"""Which store a command works on: the control commands find the lab from --db, --config or
$CYCLERD_CONFIG and never create a store; a missing one is an error that says how to point at
the lab. Run in a folder of their own, as an operator's terminal would be.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from protocol_texts import E1_TWO_CYCLES
from typer.testing import CliRunner

from cyclerd.cli.main import app
from cyclerd.store.database import Store

runner = CliRunner()
LAB = """\
lab = "bench"
database = "data/lab.db"

[[channels]]
name = "ch1"
sim = "mgagsn"

[[channels]]
name = "ch2"
sim = "mg"
"""
CONTROL = [
    ["status"],
    ["queue"],
    ["submit", "e1.yaml", "--channel", "ch1"],
    ["pause", "1"],
    ["resume", "1"],
    ["stop", "1"],
]


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An operator's folder with a protocol in it, and no lab named anywhere."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CYCLERD_CONFIG", raising=False)
    (tmp_path / "e1.yaml").write_text(E1_TWO_CYCLES)
    return tmp_path


def lab_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A lab elsewhere: its lab.toml and its store, as serve leaves it."""
    folder = tmp_path / "lab"
    folder.mkdir()
    (folder / "lab.toml").write_text(LAB)
    Store(folder / "data" / "lab.db").close()
    return folder / "lab.toml", folder / "data" / "lab.db"


@pytest.mark.parametrize("args", CONTROL, ids=lambda args: args[0])
def test_without_a_lab_the_control_commands_say_how_to_point_at_it_and_create_nothing(
    here: Path, args: list[str]
) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "--config lab.toml" in result.output
    assert "CYCLERD_CONFIG" in result.output
    assert "--db" in result.output
    assert list(here.iterdir()) == [here / "e1.yaml"]  # no ./cyclerd.db appeared


@pytest.mark.parametrize("args", CONTROL, ids=lambda args: args[0])
def test_a_missing_store_is_an_error_and_is_not_created(here: Path, args: list[str]) -> None:
    result = runner.invoke(app, [*args, "--db", "lab.db"])
    assert result.exit_code == 2, result.output
    assert "no store at lab.db" in result.output
    assert not (here / "lab.db").exists()


def test_submit_finds_the_lab_from_its_config_or_the_environment(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, db = lab_folder(here)
    queued = runner.invoke(app, ["submit", "e1.yaml", "--channel", "ch1", "--config", str(config)])
    assert queued.exit_code == 0, queued.output
    assert "queued as job 1 for channel ch1" in queued.output
    monkeypatch.setenv("CYCLERD_CONFIG", str(config))
    again = runner.invoke(app, ["submit", "e1.yaml", "--channel", "ch2"])
    assert again.exit_code == 0, again.output
    assert "queued as job 2 for channel ch2" in again.output
    listed = runner.invoke(app, ["queue"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.count("E1, two cycles") == 2
    assert "2 job(s) queued" in runner.invoke(app, ["status"]).output
    with Store(db) as store:
        assert [job["channel"] for job in store.jobs.list("queued")] == ["ch1", "ch2"]
    assert not (here / "cyclerd.db").exists()


def test_submit_names_the_labs_channels_when_given_one_it_lacks(here: Path) -> None:
    config, db = lab_folder(here)
    result = runner.invoke(app, ["submit", "e1.yaml", "--channel", "ch11", "--config", str(config)])
    assert result.exit_code == 2
    assert "lab bench has no channel 'ch11'; did you mean 'ch1'? its channels: ch1, ch2" in result.output
    with Store(db) as store:
        assert store.jobs.list() == []


def test_a_lab_whose_store_does_not_exist_yet_says_serve_creates_it(here: Path) -> None:
    config, db = lab_folder(here)
    db.unlink()
    result = runner.invoke(app, ["submit", "e1.yaml", "--channel", "ch1", "--config", str(config)])
    assert result.exit_code == 2
    assert f"no store at {db}: lab bench has no store yet: `cyclerd serve --config {config}`" in result.output
    assert not db.exists()


def test_a_config_the_environment_names_but_that_is_not_there_is_named(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CYCLERD_CONFIG", str(here / "nowhere.toml"))
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 2
    assert f"no lab configuration at {here / 'nowhere.toml'} (from $CYCLERD_CONFIG)" in result.output


def test_the_reading_commands_fall_back_on_the_store_run_leaves_here(here: Path) -> None:
    ran = runner.invoke(app, ["run", "e1.yaml", "--sim", "mgagsn"])
    assert ran.exit_code == 0, ran.output
    assert "stored as run 1 in cyclerd.db" in ran.output
    assert "E1, two cycles" in runner.invoke(app, ["runs"]).output
    assert runner.invoke(app, ["show", "1"]).exit_code == 0


def test_a_file_that_is_not_a_store_is_named_as_such(here: Path) -> None:
    (here / "README.md").write_text("# notes\n" * 100)
    for args in (["show", "1"], ["runs"], ["status"], ["export", "1", "--format", "csv"]):
        result = runner.invoke(app, [*args, "--db", "README.md"])
        assert result.exit_code == 2, result.output
        assert "README.md is not a cyclerd store (file is not a database)" in result.output


def _help(args: list[str]) -> str:
    """A command's help as one line of words (rich draws it in a box, wrapped)."""
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    return re.sub(r"[\s│╭╮╰╯─]+", " ", result.output)


@pytest.mark.parametrize(
    "command",
    ["submit", "queue", "status", "pause", "resume", "stop", "runs", "show", "plot", "report", "export"],
)
def test_db_help_does_not_promise_a_store_the_command_would_refuse_to_create(command: str) -> None:
    text = _help([command])
    assert "created if missing" not in text
    assert "--config" in text


@pytest.mark.parametrize("command", ["run", "import"])
def test_the_commands_that_create_their_store_say_so(command: str) -> None:
    assert "created if missing" in _help([command])


@pytest.mark.parametrize(
    "args", [[], ["status"], ["run"], ["doctor"]], ids=lambda args: " ".join(args) or "cyclerd"
)
def test_dash_h_is_help(args: list[str]) -> None:
    short = runner.invoke(app, [*args, "-h"])
    assert short.exit_code == 0, short.output
    assert short.output == runner.invoke(app, [*args, "--help"]).output
