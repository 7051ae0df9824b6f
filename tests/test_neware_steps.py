"""Neware step files: cyclerd's encoder against aurora-unicycler's for the library protocols, read
back by one parser; the one-step plans the driver starts, and how their ends are read."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib.resources import files

import aurora_unicycler as uc
import pytest

from cyclerd.drivers.base import INTERRUPT, StepProgress
from cyclerd.drivers.neware_steps import (
    NewareStep,
    StepFile,
    StepFileError,
    StepType,
    host_conditions,
    neware_step,
    parse_step_file,
    plan_step,
    program_step_file,
    to_xml,
    why_ended,
)
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.protocols.program import (
    CurrentCommand,
    CurrentVoltageCommand,
    EndConditions,
    ImpedanceCommand,
    Loop,
    Node,
    Program,
    RecordRule,
    RestCommand,
    SafetyLimits,
    StepCommand,
    SweepCommand,
    VoltageCommand,
)

LIBRARY = sorted(
    p.name for p in files("cyclerd.protocols").joinpath("library").iterdir() if p.name.endswith(".yaml")
)


def library(name: str) -> Program:
    return compile_protocol(loads(files("cyclerd.protocols").joinpath("library", name).read_text("utf-8")))


def same(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a == pytest.approx(b, rel=1e-6))


@dataclass
class Unicycler:
    """The unicycler protocol built from a cyclerd program, and where each of our steps went."""

    method: list[object] = field(default_factory=list)
    numbers: dict[int, list[int]] = field(default_factory=dict)  # our command index -> their step numbers
    skipped: list[str] = field(default_factory=list)
    written: int = 0  # their steps so far (tags are not steps)

    def add(self, step: object, index: int | None = None) -> None:
        self.method.append(step)
        self.written += 1
        if index is not None:
            self.numbers.setdefault(index, []).append(self.written)


def to_unicycler(program: Program) -> tuple[uc.CyclingProtocol, Unicycler]:
    """What a unicycler user writes for the same protocol, as far as unicycler can say it.

    Unicycler has no capacity limit: a charge end of a constant current is given as the time it
    takes at that current (the same end). A cccv is its CC then its CV. EIS, sweeps and
    every-blocks have no Neware form in unicycler either.
    """
    built = Unicycler()

    def walk(nodes: tuple[Node, ...]) -> None:
        for node in nodes:
            if isinstance(node, Loop):
                tag = f"loop{node.index}"
                before = built.written
                built.method.append(uc.Tag(tag=tag))
                walk(node.body)
                if built.written == before:
                    built.method.pop()
                    continue
                built.add(uc.Loop(loop_to=tag, cycle_count=node.count or 1))
                continue
            if node.periodic is not None:
                built.skipped.append(f"{node.source}: every-block")
            step(node)

    def step(command: StepCommand) -> None:
        end = command.end
        match command:
            case RestCommand():
                built.add(uc.OpenCircuitVoltage(until_time_s=end.duration_s), command.index)
            case CurrentCommand():
                times = [t for t in (end.duration_s, charge_time(end, command.current_A)) if t is not None]
                stop = end.voltage_above_V if command.current_A > 0 else end.voltage_below_V
                built.add(
                    uc.ConstantCurrent(
                        current_mA=command.current_A * 1e3,
                        until_time_s=min(times, default=None),
                        until_voltage_V=stop,
                    ),
                    command.index,
                )
            case CurrentVoltageCommand():
                mA = command.current_A * 1e3
                built.add(uc.ConstantCurrent(current_mA=mA, until_voltage_V=command.voltage_V), command.index)
                floor = None if end.current_below_A is None else end.current_below_A * 1e3
                cv = uc.ConstantVoltage(
                    voltage_V=command.voltage_V, until_current_mA=floor, until_time_s=end.duration_s
                )
                built.add(cv, command.index)
            case VoltageCommand():
                floor = None if end.current_below_A is None else end.current_below_A * 1e3
                built.add(
                    uc.ConstantVoltage(
                        voltage_V=command.voltage_V, until_current_mA=floor, until_time_s=end.duration_s
                    ),
                    command.index,
                )
            case SweepCommand() | ImpedanceCommand():
                built.skipped.append(f"{command.source}: {command.kind} (no Neware step in either)")

    walk(program.body)
    safety, record = program.safety, program.record
    protocol = uc.CyclingProtocol(
        record=uc.RecordParams(
            time_s=record.every_s,
            voltage_V=record.voltage_change_V,
            current_mA=None if record.current_change_A is None else record.current_change_A * 1e3,
        ),
        safety=uc.SafetyParams(
            max_voltage_V=safety.voltage_max_V,
            min_voltage_V=safety.voltage_min_V,
            max_current_mA=None if safety.current_max_A is None else safety.current_max_A * 1e3,
            min_current_mA=None if safety.current_max_A is None else -safety.current_max_A * 1e3,
        ),
        method=built.method,
    )
    return protocol, built


def charge_time(end: EndConditions, current_A: float) -> float | None:
    return None if end.charge_As is None else end.charge_As / abs(current_A)


def compared(ours: NewareStep, theirs: list[NewareStep]) -> list[str]:
    """How our step differs from unicycler's for the same cyclerd step (empty: it does not)."""
    problems: list[str] = []

    def check(what: str, a: float | None, b: float | None) -> None:
        if not same(a, b):
            problems.append(f"{what}: ours {a}, unicycler's {b}")

    if ours.kind in (StepType.CCCV_CHARGE, StepType.CCCV_DISCHARGE):
        cc, cv = theirs  # one CC-CV step is their CC then CV; the time limit spans both in ours
        check("kind", ours.kind - 6, cc.kind)  # 7 -> 1: charge
        check("current", ours.current_A, cc.current_A)
        check("switch voltage", ours.voltage_V, cc.stop_voltage_V)
        check("hold voltage", ours.voltage_V, cv.voltage_V)
        check("hold current limit", ours.current_A, cv.current_A)
        check("current floor", ours.stop_current_A, cv.stop_current_A)
        return problems
    (their,) = theirs
    check("kind", ours.kind, their.kind)
    check("current", ours.current_A, their.current_A)
    check("cut-off", ours.stop_voltage_V, their.stop_voltage_V)
    check("voltage", ours.voltage_V, their.voltage_V)
    check("current floor", ours.stop_current_A, their.stop_current_A)
    if ours.capacity_As is None:
        check("time", ours.time_s, their.time_s)
    else:  # their time limit stands for our capacity (and our time, whichever comes first)
        assert ours.current_A is not None
        by_charge = ours.capacity_As / ours.current_A
        check("time or capacity", min(ours.time_s or by_charge, by_charge), their.time_s)
    return problems


@pytest.mark.parametrize("name", LIBRARY)
def test_our_step_file_says_what_unicyclers_says_for_the_library_protocols(name: str) -> None:
    program = library(name)
    ours = program_step_file(program)
    protocol, built = to_unicycler(program)
    theirs = parse_step_file(protocol.to_neware_xml(sample_name="cell"))
    mine = parse_step_file(to_xml(ours.file))
    problems: list[str] = []
    for index, number in ours.numbers.items():
        found = compared(mine.steps[number - 1], [theirs.steps[n - 1] for n in built.numbers[index]])
        problems += [f"step {number} (command {index}): {p}" for p in found]
    # Loops: the same counts, going back to the same cyclerd step.
    back = {n: index for index, numbers in built.numbers.items() for n in numbers[:1]}
    our_loops = [(s.loop_count, s.loop_to) for s in mine.steps if s.kind is StepType.CYCLE]
    their_loops = [(s.loop_count, s.loop_to) for s in theirs.steps if s.kind is StepType.CYCLE]
    ours_back = [(count, _index_of(ours.numbers, to)) for count, to in our_loops]
    assert ours_back == [(count, back[to]) for count, to in their_loops]
    assert not problems, problems
    for f in dataclasses.fields(mine.protection):
        assert same(getattr(mine.protection, f.name), getattr(theirs.protection, f.name)), f.name
    for f in ("every_s", "voltage_change_V", "current_change_A"):
        assert same(getattr(mine.record, f), getattr(theirs.record, f)), f
    # What neither file says, both leave out: every skipped step is in our list of what is left out.
    for skipped in built.skipped:
        source = skipped.split(":")[0]
        assert any(item.startswith(source) for item in ours.left_out), (skipped, ours.left_out)
    assert mine.steps[-1].kind is theirs.steps[-1].kind is StepType.END


def _index_of(numbers: dict[int, int], step: int | None) -> int:
    return next(index for index, number in numbers.items() if number == step)


def test_the_library_step_files_skip_eis_sweeps_and_every_blocks_and_say_so() -> None:
    left = {name: program_step_file(library(name)).left_out for name in LIBRARY}
    assert any("sweep" in item for item in left["cv.yaml"])
    assert sum("eis step" in item for item in left["eis_after_cycling.yaml"]) == 2
    assert sum("every-block" in item for item in left["insitu_eis.yaml"]) == 2
    assert all("until limits" in item for item in left["plating_stripping.yaml"])


@pytest.mark.parametrize("name", LIBRARY)
def test_a_step_file_reads_back_as_written(name: str) -> None:
    written = program_step_file(library(name)).file
    read = parse_step_file(to_xml(written))
    assert len(read.steps) == len(written.steps)
    for a, b in zip(read.steps, written.steps, strict=True):
        for f in dataclasses.fields(NewareStep):
            x, y = getattr(a, f.name), getattr(b, f.name)
            assert same(x, y) if isinstance(x, float) or isinstance(y, float) else x == y, (f.name, a, b)
    assert read.remark == written.remark


def test_units_in_the_file_are_mA_tenths_of_mV_ms_and_mAs() -> None:
    step = CurrentCommand(
        index=1,
        label="",
        source="s",
        kind="cc",
        current_A=1.5e-3,
        end=EndConditions(voltage_above_V=4.2, duration_s=3600.0, charge_As=3.6),
        record=RecordRule(every_s=10.0),
    )
    text = to_xml(StepFile((neware_step(step, record=step.record), NewareStep(StepType.END))))
    for element in (
        '<Curr Value="1.500000" />',
        '<Stop_Volt Value="42000.000000" />',
        '<Time Value="3600000.000000" />',
        '<Cap Value="3600.000000" />',
        '<Time Value="10000.000000" />',
        'Step_Type="6"',
    ):
        assert element in text


def cc(current_A: float, **end: float) -> CurrentCommand:
    return CurrentCommand(
        index=1,
        label="",
        source="steps[0]",
        kind="cc",
        current_A=current_A,
        end=EndConditions(**end),
        record=RecordRule(),
    )


def test_a_constant_voltage_step_holds_toward_its_voltage() -> None:
    hold = VoltageCommand(
        index=2,
        label="",
        source="s",
        voltage_V=3.0,
        current_limit_A=None,
        end=EndConditions(current_below_A=1e-5),
        record=RecordRule(),
    )
    down = neware_step(hold, charging=False, current_limit_A=2e-3)
    assert (down.kind, down.current_A, down.voltage_V, down.stop_current_A) == (
        StepType.CV_DISCHARGE,
        2e-3,
        3.0,
        1e-5,
    )
    assert neware_step(hold).kind is StepType.CV_CHARGE
    cccv = CurrentVoltageCommand(
        index=3,
        label="",
        source="s",
        current_A=-1e-3,
        voltage_V=2.5,
        end=EndConditions(duration_s=60.0),
        record=RecordRule(),
    )
    assert neware_step(cccv).kind is StepType.CCCV_DISCHARGE


def test_what_a_step_file_cannot_say_is_left_to_the_host() -> None:
    assert host_conditions(cc(1e-3, voltage_above_V=4.2, charge_As=1.0)) == EndConditions()
    assert host_conditions(cc(1e-3, voltage_below_V=2.0, dvdt_below_V_per_s=1e-6)) == EndConditions(
        voltage_below_V=2.0, dvdt_below_V_per_s=1e-6
    )
    rest = RestCommand(
        index=1,
        label="",
        source="s",
        end=EndConditions(duration_s=60, voltage_above_V=1.0),
        record=RecordRule(),
    )
    assert host_conditions(rest) == EndConditions(voltage_above_V=1.0)


def test_a_step_taken_up_again_runs_its_remainder() -> None:
    command = cc(-1e-3, duration_s=3600.0, charge_As=3.0)
    plan = plan_step(command, StepProgress(600.0, -1.0, 0.0), SafetyLimits(current_max_A=2e-3))
    step = plan.file.steps[0]
    assert (step.kind, step.time_s, step.capacity_As) == (StepType.CC_DISCHARGE, 3000.0, 2.0)
    assert plan.file.protection.current_max_A == 2e-3
    assert plan.file.protection.current_min_A == -2e-3
    assert plan.time_reason == "duration"
    assert plan_step(command, StepProgress(0.0), SafetyLimits(), pause_at_s=900.0).time_reason == INTERRUPT
    assert plan_step(command, StepProgress(3600.0, -1.0), SafetyLimits()).over == "duration"
    assert plan_step(command, StepProgress(10.0, -3.0), SafetyLimits()).over == "charge"


def test_the_end_is_read_off_the_last_record() -> None:
    step = neware_step(cc(-1e-3, voltage_below_V=0.3, duration_s=600.0, charge_As=0.5))
    assert why_ended(step, 120.0, 0.2995, -1e-3, 0.12, "duration") == "voltage_below"
    assert why_ended(step, 500.0, 0.35, -1e-3, 0.5, "duration") == "charge"
    assert why_ended(step, 499.0, 0.35, -1e-3, 0.499, "duration") is None
    assert why_ended(step, 600.0, 0.35, -1e-3, 0.45, INTERRUPT) == INTERRUPT
    hold = neware_step(
        CurrentVoltageCommand(
            index=1,
            label="",
            source="s",
            current_A=1e-3,
            voltage_V=4.2,
            end=EndConditions(current_below_A=5e-5),
            record=RecordRule(),
        )
    )
    assert why_ended(hold, 900.0, 4.2, 4.99e-5, 0.8, "duration") == "current_below"


def test_a_step_file_cyclerd_cannot_run_is_refused_with_the_reason() -> None:
    scan = uc.CyclingProtocol(
        record=uc.RecordParams(time_s=1.0),
        method=[uc.VoltageScan(start_voltage_V=0.0, end_voltage_V=1.0, scan_rate_mV_per_s=1.0)],
    )
    with pytest.raises(StepFileError, match="step type '25'"):
        parse_step_file(scan.to_neware_xml(sample_name="cell"))
    with pytest.raises(StepFileError, match="not well-formed"):
        parse_step_file("<root><config>")
    eis = next(c for c in library("eis_after_cycling.yaml").commands() if isinstance(c, ImpedanceCommand))
    with pytest.raises(StepFileError, match="no eis step"):
        neware_step(eis)


def test_a_loop_is_a_cycle_step_back_to_its_first_step() -> None:
    program = library("plating_stripping.yaml")
    file = program_step_file(program).file
    kinds = [s.kind for s in file.steps]
    assert kinds == [StepType.REST, StepType.CC_DISCHARGE, StepType.CC_CHARGE, StepType.CYCLE, StepType.END]
    assert (file.steps[3].loop_to, file.steps[3].loop_count) == (2, 250)
