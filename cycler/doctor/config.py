"""The doctor's checks of lab.toml: it loads and validates, and each channel has a cell position
of its own (a known simulated cell, or an instrument no other channel uses).
"""

from __future__ import annotations

from pathlib import Path

from cyclerd.daemon.config import Lab, load_config
from cyclerd.doctor.verdict import Check, Verdict, current_user
from cyclerd.drivers.cycler import CYCLERS
from cyclerd.protocols import ProtocolError
from cyclerd.simulators import presets


def check_config(path: Path) -> tuple[Check, Lab | None]:
    """lab.toml loads and validates; problems are shown as load_config gives them (file:line)."""
    try:
        lab = load_config(path)
    except ProtocolError as exc:
        return Check("config", Verdict.FAIL, f"{exc}\nfix these lines, then run doctor again"), None
    except FileNotFoundError:
        return Check("config", Verdict.FAIL, f"no file {path}: copy docs/lab.toml there and edit it"), None
    except PermissionError:
        fix = f"chgrp cyclerd {path} && chmod 640 {path}"
        return Check("config", Verdict.FAIL, f"user {current_user()} may not read {path}: {fix}"), None
    except (OSError, UnicodeDecodeError) as exc:
        return Check("config", Verdict.FAIL, f"cannot read {path}: {exc}"), None
    counts = f"{len(lab.channels)} channel(s), {len(lab.instruments)} instrument(s)"
    return Check("config", Verdict.OK, f"{path}: lab {lab.lab!r}, {counts}"), lab


def check_channels(lab: Lab) -> list[Check]:
    """Each channel has one cell position: a known simulated cell, an instrument of its own, or a
    channel of a cycler."""
    instruments = {i.name: i for i in lab.instruments}
    users: dict[str, list[str]] = {}
    for channel in lab.channels:
        if channel.instrument is not None:
            users.setdefault(channel.instrument, []).append(channel.name)
    checks = []
    for channel in lab.channels:
        name = f"channel {channel.name}"
        if channel.sim is not None:
            if channel.sim in presets.names():
                checks.append(Check(name, Verdict.OK, f"simulated {channel.sim} cell, seed {channel.seed}"))
            else:
                known = ", ".join(presets.names())
                checks.append(
                    Check(name, Verdict.FAIL, f"no simulated cell {channel.sim!r}; choose one of {known}")
                )
            continue
        assert channel.instrument is not None  # config validation: exactly one of sim/instrument
        instrument = instruments[channel.instrument]  # and the instrument exists
        others = [c for c in users[channel.instrument] if c != channel.name]
        if instrument.driver in CYCLERS:  # many channels, each on a channel of its own (config checks)
            where = f"channel {channel.cycler_channel} of cycler {instrument.name}"
            checks.append(
                Check(name, Verdict.OK, f"on {where} ({instrument.driver} at {instrument.resource})")
            )
        elif others:
            detail = (
                f"shares instrument {instrument.name} with {', '.join(others)}: a {instrument.driver} is one"
                " cell position, and two channels would fight over it; give each channel its own instrument"
            )
            checks.append(Check(name, Verdict.FAIL, detail))
        else:
            where = f"on instrument {instrument.name} ({instrument.driver} at {instrument.resource})"
            checks.append(Check(name, Verdict.OK, where))
    return checks
