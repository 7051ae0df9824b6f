"""The MethodSCRIPT vocabulary of the EmStat4 emulator: every script command it accepts, with the
kinds of its arguments and, for a measurement loop, the technique id of its `M` line.

One table (instrument-protocols.md §3.3–3.8, and the PalmSens example scripts for the rest): the
parser refuses any other word with `!4001`. Which module runs a command is noted at its group.
"""

from __future__ import annotations

from dataclasses import dataclass

NEW, REF, VAL, VT, OP, TEXT = "new", "ref", "val", "vt", "op", "text"  # argument kinds


@dataclass(frozen=True)
class Spec:
    """A script command: its arguments and, for a measurement loop, the `M` technique id."""

    args: tuple[str, ...] = ()
    technique: int | None = None
    options: tuple[str, ...] = ()  # accepted trailing `name(value ...)` options
    optional: int = 0  # how many of the last `args` may be left out (e.g. `smooth`)


_HOLD = (REF, REF, VAL, VAL, VAL)
_EIS = (REF, REF, REF, VAL, VAL, VAL, VAL, VAL)
_MUX_HOLD = (REF, REF, *[VAL] * 5)  # E I E_or_I_dc t_int t_run first_channel last_channel [U]
COMMANDS: dict[str, Spec] = {
    # the language (methodscript_interp)
    "var": Spec((NEW,)), "array": Spec((NEW, VAL)),          # declare; array name <n>i
    "store_var": Spec((REF, VAL, VT)),                       # value and variable type
    "copy_var": Spec((REF, REF)),                            # copy_var src dst [U order]
    "add_var": Spec((REF, VAL)), "sub_var": Spec((REF, VAL)),  # a = a op b
    "mul_var": Spec((REF, VAL)), "div_var": Spec((REF, VAL)), "alter_vartype": Spec((REF, VT)),
    "if": Spec((VAL, OP, VAL)), "elseif": Spec((VAL, OP, VAL)), "else": Spec(), "endif": Spec(),
    "loop": Spec((VAL, OP, VAL)), "endloop": Spec(), "breakloop": Spec(), "abort": Spec(),
    "pck_start": Spec(), "pck_add": Spec((REF,)), "pck_end": Spec(),
    "send_string": Spec((TEXT,)), "set_script_output": Spec((VAL,)),
    "timer_start": Spec(), "timer_get": Spec((REF,)),
    "set_int": Spec((VAL,)), "await_int": Spec(), "wait": Spec((VAL,)),
    "hibernate": Spec((VAL, VAL)),                           # wake-up sources, timer seconds
    # the front end (methodscript_frontend)
    "set_pgstat_chan": Spec((VAL,)), "set_pgstat_mode": Spec((VAL,)),
    "set_max_bandwidth": Spec((VAL,)), "set_acquisition_frac_autoadjust": Spec((VAL,)),
    "set_range": Spec((VT, VAL)), "set_range_minmax": Spec((VT, VAL, VAL)),
    "set_autoranging": Spec((VT, VAL, VAL)),
    "set_e": Spec((VAL,)), "set_i": Spec((VAL,)), "cell_off": Spec(),
    "meas": Spec((VAL, REF, VT)),                            # one-shot: meas t var ab|ba
    "cell_on": Spec((), options=("ocp",)), "set_acquisition_frac": Spec((VAL,)),  # ocp(E): on at E
    # arithmetic and arrays on the device (methodscript_values)
    "float_to_int": Spec((REF,)), "float_to_int_round": Spec((REF,)), "int_to_float": Spec((REF,)),
    "pow_var": Spec((REF, VAL)), "mod_var": Spec((REF, VAL)), "log_var": Spec((REF,)),
    **{f"bit_{op}_var": Spec((REF, VAL)) for op in ("and", "or", "xor", "lsl", "lsr")},
    "bit_inv_var": Spec((REF,)),
    "array_set": Spec((REF, VAL, VAL)), "array_get": Spec((REF, VAL, REF)),  # array index value|var
    "mean": Spec((REF, REF)), "linear_fit": Spec((REF, REF, REF, REF)),  # arrays in, results out
    "smooth": Spec((REF, VAL, VAL, VAL), optional=1),        # src [count] dst strength
    "peak_detect": Spec((REF, VAL, REF, REF, VAL, VAL)),     # data count indices heights dir min_h
    # peripherals (methodscript_peripherals): answered as docs/instruments.md says
    "set_gpio_cfg": Spec((VAL, VAL)), "set_gpio": Spec((VAL,)), "set_gpio_msk": Spec((VAL, VAL)),
    "set_gpio_pullup": Spec((VAL, VAL)), "get_gpio": Spec((REF,)), "get_gpio_msk": Spec((REF, VAL)),
    "beep": Spec((VAL, VAL, VAL)), "notify_led": Spec((VAL,)), "set_e_aux": Spec((VAL,)),
    "file_open": Spec((TEXT, VAL)), "file_close": Spec(),
    "rtc_get": Spec((REF,) * 6),                             # year month day hour minute second
    "mux_config": Spec((VAL, VAL)), "mux_get_channel_count": Spec((REF,)),  # type options; count
    "mux_set_channel": Spec((VAL,)),                         # 1 .. count
    "display_clear": Spec(), "display_draw": Spec(), "display_text": Spec((TEXT, VAL)),  # EmStat4T
    "display_btns": Spec((REF, TEXT, TEXT)), "display_progress": Spec((VAL,)),
    "display_icon": Spec((VAL,)), "display_inp_num": Spec((TEXT, REF, VAL)),
    "display_scroll_add": Spec((TEXT,)), "display_scroll_get": Spec((TEXT, REF)),
    "qr_scan": Spec((REF, REF)),                             # values array, count (< 0: none)
    # the techniques of methodscript_techniques (argument lists: outputs first, then inputs)
    "meas_loop_lsp": Spec((REF, REF, VAL, VAL, VAL, VAL), 0x000F),  # E I I_begin I_end I_step rate
    "meas_loop_dpv": Spec((REF, REF, *[VAL] * 6), 0x0001),   # E I E_begin E_end E_step E_pulse t_pulse rate
    "meas_loop_swv": Spec((*[REF] * 4, *[VAL] * 5), 0x0002),  # E I I_fwd I_rev E_begin E_end E_step E_amp f
    "meas_loop_npv": Spec((REF, REF, *[VAL] * 5), 0x0003),   # E I E_begin E_end E_step t_pulse rate
    "meas_loop_acv": Spec((*[REF] * 6, *[VAL] * 6), 0x0004),  # E_dc I_dc E_ac I_ac Z' Z'' E_begin E_end ..
    "meas_loop_pad": Spec((REF, REF, *[VAL] * 6), 0x0008),   # E I E_dc E_pulse t_pulse t_int t_run mode
    "meas_loop_lsv": Spec((REF, REF, VAL, VAL, VAL, VAL), 0x0000),  # E I E_begin E_end step rate
    "meas_loop_cv": Spec((REF, REF, VAL, VAL, VAL, VAL, VAL), 0x0005, ("nscans",)),  # .. vtx1 vtx2 ..
    "meas_loop_ca": Spec(_HOLD, 0x0007),                     # E I E_dc t_int t_run
    "meas_loop_cp": Spec(_HOLD, 0x000A),                     # E I I_dc t_int t_run
    "meas_loop_ocp": Spec((REF, VAL, VAL), 0x000B),          # E t_int t_run
    "meas_loop_eis": Spec(_EIS, 0x000D, ("eis_tdd", "eis_opt")),  # f Zre Zim E_ac f_start f_end n E_dc
    "meas_loop_geis": Spec(_EIS, 0x000E),                    # f Zre Zim I_ac f_start f_end n I_dc
    # ... and methodscript_mux: the channel readings go to an array (I[] for CA, E[] for CP, OCP);
    # ids 0x11-0x13 from a third-party table citing the manual's [R]
    "meas_loop_ca_alt_mux": Spec(_MUX_HOLD, 0x0011),         # E I[] E_dc t_int t_run first last
    "meas_loop_cp_alt_mux": Spec(_MUX_HOLD, 0x0012),         # E[] I I_dc t_int t_run first last
    "meas_loop_ocp_alt_mux": Spec((REF, *[VAL] * 4), 0x0013),  # E[] t_int t_run first last
}  # fmt: skip
