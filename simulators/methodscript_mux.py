"""The multiplexer add-on of an EmStat4 (MUX8-R2 and its kin): channel selection, and the loops
that alternate between channels within each interval.

The emulator has one simulated cell and every channel of the multiplexer sees it [U]: selecting a
channel changes nothing the cell does, and an alternating loop reads that cell once per channel,
each channel in an equal share of the interval, one after the other (so a relaxing cell shows up
as slightly different readings across the channels). Choices the vendor examples leave open:
the two last arguments of an alternating loop are its first and last channel, inclusive [U];
`mux_config` selects channel 1 [U]; the loop leaves its last channel selected [U].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cyclerd.simulators import methodscript_packages as pk
from cyclerd.simulators import methodscript_techniques as mt
from cyclerd.simulators.methodscript_values import Value

# mux_config type -> channels: 1 MUX8, 2 MUX16, 3 MUX8-R2 (the vendor examples' comments); 0: none
MUX_CHANNELS = {0: 0, 1: 8, 2: 16, 3: 8}
NAMES = ("ca_alt_mux", "cp_alt_mux", "ocp_alt_mux")


@dataclass
class Multiplexer:
    """What `mux_config` set up and which channel is connected to the potentiostat."""

    kind: int = 0
    options: int = 0  # [U] kept, not modelled: switch boxes, OCP mode, RE-CE links, idle WE mode
    channel: int = 0  # from 1; 0 while none is configured

    @property
    def count(self) -> int:
        return MUX_CHANNELS[self.kind]

    def configure(self, kind: int, options: int) -> None:
        if kind not in MUX_CHANNELS:
            raise pk.DeviceError(pk.ERR_NOT_SUPPORTED)  # [U] e.g. 4, the EmStat Pico's MUX16
        self.kind, self.options, self.channel = kind, options, min(1, MUX_CHANNELS[kind])

    def select(self, channel: int) -> None:
        if not 1 <= channel <= self.count:
            raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)  # [U] out of range, or no multiplexer set up
        self.channel = channel


def points(
    d: mt.Device, mux: Multiplexer, name: str, n: Sequence[float], outputs: Sequence[pk.Ref]
) -> mt.Readings:
    """Check an alternating loop's arguments and the device state (before `M`); return its readings."""
    base = name.removesuffix("_alt_mux")
    level, t_int, t_run, first, last = (0.0, *n) if base == "ocp" else n
    if t_int <= 0 or t_run < 0:
        raise pk.DeviceError(pk.ERR_INVALID_TIME)
    channels = range(int(first), int(last) + 1)
    if not 1 <= first <= last <= mux.count:
        raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)
    if len(d.array(outputs[1 if base == "ca" else 0])) < len(channels):
        raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)  # [U] an array too short for the channels
    mt.start_hold(d, base, level)
    return _alternate(d, mux, base, level, t_int, int(t_run / t_int + 1e-9), channels)


async def _alternate(
    d: mt.Device, mux: Multiplexer, base: str, level: float, t_int: float, count: int, channels: range
) -> mt.Readings:
    """Per interval: each channel in turn for its share; one reading per channel, at its share's end."""
    t0, share = d.now(), t_int / len(channels)
    for k in range(count):
        per_channel: list[list[Value]] = []
        for j, channel in enumerate(channels):
            mux.channel = channel
            await d.pause_until(t0 + k * t_int + (j + 1) * share)
            voltage, current = d.fe.sample(share)
            per_channel.append(mt.reading(d, base, level, voltage, current))
        if base == "ca":  # E_dc, then the currents
            yield [per_channel[0][0], [r[1] for r in per_channel]]
        elif base == "cp":  # the potentials, then I_dc
            yield [[r[0] for r in per_channel], per_channel[0][1]]
        else:
            yield [[r[0] for r in per_channel]]
