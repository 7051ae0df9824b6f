"""The EmStat4's peripherals as the emulator has them: GPIO pins, the real-time clock, the aux DAC,
buzzer, LED and file storage, the EmStat4T's display and QR scanner, and the multiplexer add-on.

Nothing is wired to the pins and there is no screen, so each answers as if left alone [U]: an
input reads 1 where its pull-up is on and 0 otherwise (outputs are not read back); the buzzer,
LED, aux DAC, files and display take their commands without effect; a display's button, menu or
number prompt answers 0 at once, as if the first choice were taken; `qr_scan` finds no code
(count -3). The clock is the host's UTC time when the emulator started, moved on by device time.
The configuration lives as long as the device: a power cycle clears it, the clock runs on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cyclerd.simulators import methodscript_packages as pk
from cyclerd.simulators.methodscript_mux import Multiplexer
from cyclerd.simulators.methodscript_values import Value, Variables

GPIO_INPUT, GPIO_OUTPUT = 0, 1  # set_gpio_cfg modes; 2 and up hand pins to SPI, I2C, ... [U]
QR_NONE_SCANNED = -3  # qr_scan's count when no code was read (the vendor example's comment)
_SILENT = {
    "beep", "notify_led", "file_open", "file_close",
    "display_clear", "display_draw", "display_text", "display_progress", "display_icon", "display_scroll_add",
}  # fmt: skip
_ANSWERED_ZERO = {"display_btns": 0, "display_inp_num": 1, "display_scroll_get": 1}  # -> which argument


@dataclass
class Peripherals:
    """What scripts set on the device outside the analog front end; one per emulated device."""

    started_s: float  # device time at power-up, when the clock read `started`
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    mux: Multiplexer = field(default_factory=Multiplexer)
    pin_modes: dict[int, int] = field(default_factory=dict)  # pin -> set_gpio_cfg mode; unset: input
    pullups: int = 0
    outputs: int = 0
    aux_potential_V: float = 0.0

    def reset(self) -> None:
        """Power lost: the configuration goes, the real-time clock (on its own battery) runs on."""
        self.mux, self.pin_modes, self.pullups, self.outputs = Multiplexer(), {}, 0, 0
        self.aux_potential_V = 0.0

    def inputs(self) -> int:
        """The level of every pin as read: 1 where an input is pulled up, else 0 (nothing connected)."""
        outputs = sum(1 << pin for pin, mode in self.pin_modes.items() if mode != GPIO_INPUT)
        return self.pullups & ~outputs

    def clock(self, now_s: float) -> tuple[int, int, int, int, int, int]:
        t = self.started + timedelta(seconds=now_s - self.started_s)
        return t.year, t.month, t.day, t.hour, t.minute, t.second


STATEMENTS = {
    *_SILENT, *_ANSWERED_ZERO, "set_gpio_cfg", "set_gpio", "set_gpio_msk", "set_gpio_pullup",
    "get_gpio", "get_gpio_msk", "set_e_aux", "rtc_get", "qr_scan",
    "mux_config", "mux_get_channel_count", "mux_set_channel",
}  # fmt: skip


def run(s: pk.Stmt, v: Variables, io: Peripherals, now_s: float) -> None:
    """Execute one statement of STATEMENTS at device time `now_s`; raises DeviceError as the device would."""
    name, a = s.name, s.args
    if name in _ANSWERED_ZERO:
        v.set(_as_ref(a[_ANSWERED_ZERO[name]]), Value(0.0, "ja", is_int=True))
    elif name in ("set_gpio_cfg", "set_gpio_pullup", "set_gpio_msk"):
        mask, value = int(v.num(a[0])), int(v.num(a[1]))
        if name == "set_gpio_cfg":
            io.pin_modes.update({pin: value for pin in range(mask.bit_length()) if mask >> pin & 1})
        elif name == "set_gpio_pullup":
            io.pullups = io.pullups | mask if value else io.pullups & ~mask
        else:
            io.outputs = io.outputs | mask if value else io.outputs & ~mask  # [U] value: on / off
    elif name == "set_gpio":
        io.outputs = int(v.num(a[0]))
    elif name in ("get_gpio", "get_gpio_msk"):
        mask = int(v.num(a[1])) if name == "get_gpio_msk" else -1
        v.set(_as_ref(a[0]), Value(float(io.inputs() & mask), "ec", is_int=True))
    elif name == "set_e_aux":
        if not math.isfinite(potential := v.num(a[0])):
            raise pk.DeviceError(pk.ERR_INVALID_POTENTIAL)
        io.aux_potential_V = potential
    elif name == "rtc_get":
        for arg, part in zip(a, io.clock(now_s), strict=True):
            v.set(_as_ref(arg), Value(float(part), "ja", is_int=True))  # [U] integers, type ja
    elif name == "qr_scan":
        v.set(_as_ref(a[1]), Value(float(QR_NONE_SCANNED), "ja", is_int=True))
    elif name == "mux_config":
        io.mux.configure(int(v.num(a[0])), int(v.num(a[1])))
    elif name == "mux_get_channel_count":
        v.set(_as_ref(a[0]), Value(float(io.mux.count), "ja", is_int=True))  # [U] type ja
    elif name == "mux_set_channel":
        io.mux.select(int(v.num(a[0])))
    # _SILENT: nothing to drive


def _as_ref(arg: pk.Arg) -> pk.Ref:
    assert isinstance(arg, pk.Ref), arg  # the parser put a variable here
    return arg
