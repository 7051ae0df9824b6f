"""A cycler in lab.toml: one instrument, many lab channels, each naming its cycler channel; the
mistakes a person makes there are reported at their line, with what to write instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from cyclerd.daemon.config import emulated, load_config
from cyclerd.drivers.cycler import ResourceError, host_and_port
from cyclerd.protocols import ProtocolError


def cycler_lab(channels: str, driver: str = "maccor") -> str:
    return f"""\
lab = "cyclers"

[[instruments]]
name = "macc"
driver = "{driver}"
resource = "tcp://127.0.0.1:57570"

[[instruments]]
name = "smu"
driver = "keithley2450"
resource = "TCPIP::127.0.0.1::5025::SOCKET"
{channels}"""


def channel(name: str, instrument: str, cycler_channel: int | None = None) -> str:
    line = "" if cycler_channel is None else f"cycler_channel = {cycler_channel}\n"
    return f'\n[[channels]]\nname = "{name}"\ninstrument = "{instrument}"\n{line}'


def test_eight_lab_channels_on_one_cycler_load(tmp_path: Path) -> None:
    config = tmp_path / "lab.toml"
    config.write_text(cycler_lab("".join(channel(f"c{n}", "macc", n) for n in range(1, 9))))
    lab = load_config(config)
    assert [(c.name, c.instrument, c.cycler_channel) for c in lab.channels][-1] == ("c8", "macc", 8)


@pytest.mark.parametrize(
    ("channels", "said"),
    [
        (
            channel("c1", "macc"),
            ":15:1: channels.0.instrument: channel 'c1' is on maccor cycler 'macc': add cycler_channel = N",
        ),
        (
            channel("k1", "smu", 2),
            ":16:1: channels.0.cycler_channel: channel 'k1' is on keithley2450 'smu', which has one channel:"
            " remove cycler_channel",
        ),
        (
            channel("c1", "macc", 3) + channel("c2", "macc", 3),
            ":21:1: channels.1.cycler_channel: channel 'c2' and channel 'c1' both drive channel 3 of 'macc'",
        ),
        (
            channel("c1", "macc", 0),
            ":16:1: channels.0.cycler_channel: 'cycler_channel' must be greater than or equal to 1",
        ),
    ],
    ids=["missing", "on-an-smu", "twice", "zero"],
)
def test_a_cycler_channel_mistake_is_reported_at_its_line(tmp_path: Path, channels: str, said: str) -> None:
    config = tmp_path / "lab.toml"
    config.write_text(cycler_lab(channels))
    with pytest.raises(ProtocolError) as err:
        load_config(config)
    assert f"{config}{said}" in str(err.value)


def test_a_cycler_resource_is_tcp_host_and_port_and_on_loopback_an_emulator() -> None:
    assert host_and_port("tcp://192.168.1.30:57570", 1) == ("192.168.1.30", 57570)
    assert host_and_port("TCP://cycler-pc", 502) == ("cycler-pc", 502)
    for wrong in ("192.168.1.30:57570", "tcp://host:port", "socket://host:1", "tcp://host:1/path"):
        with pytest.raises(ResourceError, match="tcp://host:port"):
            host_and_port(wrong, 1)
    assert emulated("tcp://127.0.0.1:57570")
    assert not emulated("tcp://192.168.1.30:57570")


def test_the_documented_lab_configuration_loads() -> None:
    """docs/lab.toml is what people copy: it must be a valid configuration, cyclers included."""
    lab = load_config(Path(__file__).parents[1] / "docs" / "lab.toml")
    assert {i.driver for i in lab.instruments} >= {"keithley2450", "methodscript", "maccor"}
    assert [c.cycler_channel for c in lab.channels if c.instrument == "maccor1"] == [1, 2]


def test_an_emulated_cycler_in_virtual_time_is_refused_with_a_message() -> None:
    """The cyclers' emulators run on accelerated real time only; asked for speed 0 they say so."""
    from typer.testing import CliRunner

    from cyclerd.cli.main import app

    result = CliRunner().invoke(app, ["emulate", "maccor", "--speed", "0", "--port", "0"])
    assert result.exit_code == 2
    assert "speed must be more than 0" in result.output


@pytest.mark.parametrize("driver", ["maccor", "neware", "arbin"])
def test_a_cycler_channel_refuses_at_submit_what_no_cycler_runs(tmp_path: Path, driver: str) -> None:
    """Checked from lab.toml alone, before the job is queued: spectra and sweeps name their step;
    the paper's plating/stripping is accepted."""
    from importlib.resources import files

    from cyclerd.daemon.reach import refusals
    from cyclerd.protocols import loads
    from cyclerd.protocols.compiler import compile_protocol

    config = tmp_path / "lab.toml"
    config.write_text(cycler_lab(channel("c1", "macc", 1), driver))
    lab = load_config(config)
    library = files("cyclerd.protocols") / "library"

    def refused(name: str) -> list[str]:
        return refusals(lab, "c1", compile_protocol(loads((library / name).read_text())))

    assert refused("plating_stripping.yaml") == []
    assert refused("formation.yaml") == []
    eis = "c1 cannot measure impedance spectra (EIS): step '"
    assert refused("eis_after_cycling.yaml")[0].startswith(eis)
    assert refused("cv.yaml")[0].startswith("c1 cannot run sweep steps: step '")


def test_an_unreachable_cycler_is_one_plain_line_and_exit_3(tmp_path: Path) -> None:
    """`cyclerd run` on a cycler nobody answers for: what failed, in plain words (no markup)."""
    from mosquitto import free_port
    from typer.testing import CliRunner

    from cyclerd.cli.main import app

    protocol = tmp_path / "rest.yaml"
    protocol.write_text("name: rest\nsteps:\n  - rest: 1 min\n")
    resource = f"tcp://127.0.0.1:{free_port()}"
    args = ["run", str(protocol), "--instrument", resource, "--driver", "maccor", "--cycler-channel", "1"]
    result = CliRunner().invoke(app, [*args, "--db", str(tmp_path / "x.db")])
    assert result.exit_code == 3
    assert "instrument: Maccor" in result.output
    assert "[red]" not in result.output
