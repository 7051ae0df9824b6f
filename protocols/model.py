"""The protocol language: the one pydantic model of what an experimentalist writes.

A protocol file is YAML; each step is a mapping with one key naming its kind
(`- plate: {current: 1 mA/cm^2, until: {charge: 1 mAh/cm^2}}`) or a PyBaMM step string
(`- Charge at 0.1C until 4.25 V`). Both are normalised into the same step models here.
Values carry units as text and are SI floats (or `Amount`s awaiting a cell) after loading.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from cyclerd.protocols import step_strings
from cyclerd.protocols.units import (
    VOLTAGE,
    Amount,
    Area,
    Charge,
    Current,
    Duration,
    Fraction,
    Frequency,
    Mass,
    ScanRate,
    SpecificCharge,
    Temperature,
    Voltage,
    parse,
    parse_current,
)


class Strict(BaseModel):
    """Unknown keys are errors: a typo must never silently drop a limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _metadata_value(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """One error saying what a value may be, rather than one per member of the union."""
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError(
            "metadata_value",
            "a metadata value is one piece of text, a number or true/false; "
            "write a list or mapping as text, e.g. 'binder: Elastane 5 %'",
        ) from None


MetadataValue = Annotated[str | int | float | bool | None, WrapValidator(_metadata_value)]


class Cell(Strict):
    """The cell under test; area, capacity and active mass turn per-area and per-mass currents
    and C-rates into amperes."""

    area: Area | None = Field(
        None, description="Electrode area (a 10 mm pellet is 0.785 cm^2).", examples=["0.785 cm^2"]
    )
    capacity: Charge | None = Field(
        None,
        description="Nominal capacity, absolute, per area or per gram; 1C is this charge per hour.",
        examples=["1.57 mAh", "2 mAh/cm^2"],
    )
    active_mass: Mass | None = Field(
        None,
        description="Mass of active material, absolute or per electrode area (a loading); "
        "values per gram ('100 mA/g', '195 mAh/g') are scaled by it.",
        examples=["10.3 mg", "10.3 mg/cm^2"],
    )
    specific_capacity: SpecificCharge | None = Field(
        None,
        description="Capacity per gram of active material; with active_mass it gives the nominal "
        "capacity when 'capacity' is not given (and must agree with it, within 1 %, when it is).",
        examples=["195 mAh/g"],
    )
    metadata: dict[str, MetadataValue] = Field(
        default_factory=dict,
        description="Free-form facts stored with the run (seed, binder, electrolyte, ...).",
        examples=[{"seed": "MgAgSn", "binder": "Elastane"}],
    )


class Safety(Strict):
    """Limits checked on every sample; crossing one makes the cell safe and ends the run."""

    voltage_min: Voltage | None = Field(None, examples=["-0.5 V"])
    voltage_max: Voltage | None = Field(None, examples=["4.3 V"])
    current_max: Current | None = Field(
        None, description="Largest |current| allowed.", examples=["5 mA", "3 mA/cm^2", "2C"]
    )
    temperature_max: Temperature | None = Field(None, examples=["60 degC"])
    duration_max: Duration | None = Field(
        None, description="Longest the whole run may take.", examples=["600 h"]
    )


class Record(Strict):
    """When to log a sample: after `every`, or sooner when V or I moved by the given change."""

    every: Duration | None = Field(None, examples=["10 s"])
    voltage_change: Voltage | None = Field(None, examples=["1 mV"])
    current_change: Current | None = Field(None, examples=["0.01 mA"])


class Until(Strict):
    """Step end conditions: the step ends when any one of them holds."""

    duration: Duration | None = Field(
        None, description="Step time (periodic blocks not counted).", examples=["1 h"]
    )
    voltage_above: Voltage | None = Field(None, examples=["4.25 V"])
    voltage_below: Voltage | None = Field(None, examples=["2.5 V"])
    current_below: Current | None = Field(
        None, description="|I| below this (CV holds).", examples=["C/20", "0.05 mA"]
    )
    charge: Charge | None = Field(
        None, description="|charge| passed in this step.", examples=["1 mAh/cm^2", "1.57 mAh"]
    )
    dvdt_below: ScanRate | None = Field(None, description="|dV/dt| below this.", examples=["1 mV/h"])

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in type(self).model_fields)


class CycleUntil(Strict):
    """Loop end conditions, checked after each cycle from the cycle summary."""

    duration: Duration | None = Field(None, description="Total time of the loop.", examples=["500 h"])
    coulombic_efficiency_below: Fraction | None = Field(None, examples=["95 %"])
    capacity_retention_below: Fraction | None = Field(
        None, description="Versus the loop's first cycle.", examples=["70 %"]
    )
    short_circuit: bool = Field(False, description="Stop when a short circuit is detected.")


class _Step(Strict):
    label: str | None = Field(None, description="Your name for this step, shown in plans and data.")


class _Sourcing(_Step):
    """A step that passes charge: it can end on conditions, log its own way, and be interrupted."""

    until: Until = Field(default_factory=Until)
    record: Record | None = Field(None, description="Logging rules for this step only.")
    every: Every | None = Field(None, description="A sub-schedule run periodically during this step.")


class Rest(_Sourcing):
    """Open circuit (zero current), measuring the voltage."""

    kind: SkipJsonSchema[Literal["rest"]] = "rest"


class ConstantCurrent(_Sourcing):
    """Constant current; positive charges the cell. By current, current density or C-rate."""

    kind: SkipJsonSchema[Literal["cc"]] = "cc"
    current: Current = Field(examples=["1 mA", "-1 mA/cm^2", "0.5C", "-C/2"])


class Plate(_Sourcing):
    """Half-cell plating: lithium onto the working electrode, i.e. negative current."""

    kind: SkipJsonSchema[Literal["plate"]] = "plate"
    current: Current = Field(description="Magnitude; the sign is implied.", examples=["1 mA/cm^2"])


class Strip(_Sourcing):
    """Half-cell stripping: lithium off the working electrode, i.e. positive current."""

    kind: SkipJsonSchema[Literal["strip"]] = "strip"
    current: Current = Field(description="Magnitude; the sign is implied.", examples=["1 mA/cm^2"])


class ConstantVoltage(_Sourcing):
    """Constant-voltage hold, usually until the current has decayed."""

    kind: SkipJsonSchema[Literal["cv"]] = "cv"
    voltage: Voltage = Field(examples=["4.25 V"])
    current_limit: Current | None = Field(None, description="Compliance |I|.", examples=["1C"])


class ConstantCurrentConstantVoltage(_Sourcing):
    """Constant current to `voltage`, then hold it until an end condition (e.g. current_below)."""

    kind: SkipJsonSchema[Literal["cccv"]] = "cccv"
    current: Current = Field(examples=["0.5C"])
    voltage: Voltage = Field(examples=["4.25 V"])


def _voltage_or_current(value: object, voltage_example: str) -> float | Amount:
    if isinstance(value, str) and "V" in value:
        return parse(value, VOLTAGE)
    try:
        return parse_current(value)
    except PydanticCustomError as exc:
        # The current's message alone would hide that a voltage (the usual choice) is allowed.
        raise PydanticCustomError(
            "quantity", f"{exc.message()}; or write a voltage such as '{voltage_example}'"
        ) from None


def _parse_dc_level(value: object) -> str | float | Amount:
    if value == "ocv":
        return "ocv"
    return _voltage_or_current(value, "3.7 V' or 'ocv")


def _parse_amplitude(value: object) -> float | Amount:
    return _voltage_or_current(value, "10 mV")


class Impedance(_Step):
    """An impedance spectrum. A voltage amplitude makes it potentiostatic, a current galvanostatic."""

    kind: SkipJsonSchema[Literal["eis"]] = "eis"
    frequency_start: Frequency = Field(examples=["7 MHz"])
    frequency_stop: Frequency = Field(examples=["0.1 Hz"])
    points_per_decade: int = Field(10, gt=0, le=100)
    amplitude: Annotated[float | Amount, BeforeValidator(_parse_amplitude, json_schema_input_type=str)] = (
        Field(
            description="Excitation: a voltage (potentiostatic) or a current (galvanostatic).",
            examples=["10 mV", "10 uA"],
        )
    )
    dc_level: Annotated[
        str | float | Amount, BeforeValidator(_parse_dc_level, json_schema_input_type=str)
    ] = Field(
        "ocv",
        description="'ocv' (around the open-circuit voltage), a voltage, or a current.",
        examples=["ocv", "3.7 V", "0 A"],
    )

    @property
    def galvanostatic(self) -> bool:
        return isinstance(self.amplitude, Amount)


def _parse_sweep_start(value: object) -> str | float:
    if value == "ocv":
        return "ocv"
    try:
        return parse(value, VOLTAGE)
    except PydanticCustomError as exc:
        raise PydanticCustomError("quantity", f"{exc.message()}; or write 'ocv'") from None


class Sweep(_Step):
    """Cyclic voltammetry: from `start` through each vertex in turn, `scans` times.

    From `start: ocv` (the open-circuit voltage when the step begins) each scan also returns
    to that voltage: OCV -> vertices -> OCV.
    """

    kind: SkipJsonSchema[Literal["sweep"]] = "sweep"
    start: Annotated[
        float | Literal["ocv"], BeforeValidator(_parse_sweep_start, json_schema_input_type=str)
    ] = Field(
        description="A voltage, or 'ocv': the open-circuit voltage measured when the step begins "
        "(each scan then returns to it).",
        examples=["1 V", "ocv"],
    )
    vertices: list[Voltage] = Field(min_length=1, examples=[["0 V", "1 V"]])
    scan_rate: ScanRate = Field(examples=["0.1 mV/s"])
    scans: int = Field(1, gt=0, le=10_000)
    record: Record | None = None


class Repeat(Strict):
    """A loop; one pass of the innermost loop is one cycle."""

    kind: SkipJsonSchema[Literal["repeat"]] = "repeat"
    label: str | None = None
    count: int | None = Field(None, gt=0, description="Number of cycles at most.", examples=[100])
    until: CycleUntil = Field(default_factory=CycleUntil)
    retention_reference: int | None = Field(
        None,
        gt=0,
        description="The run's cycle this loop's capacity retention is measured against"
        " (default: the loop's own first cycle).",
        examples=[2],
    )
    steps: list[Step] = Field(min_length=1)


class Every(Strict):
    """A periodic sub-schedule inside a step, e.g. EIS every 10 min while plating.

    Its own time does not count towards the interrupted step's duration or charge.
    """

    interval: Duration = Field(examples=["10 min"])
    at_start: bool = Field(False, description="Also run it when the step starts.")
    at_end: bool = Field(description="Also run it when the step ends (say true or false).")
    steps: list[Step] = Field(min_length=1)


STEP_KINDS: dict[str, type[Strict]] = {
    "rest": Rest,
    "cc": ConstantCurrent,
    "plate": Plate,
    "strip": Strip,
    "cv": ConstantVoltage,
    "cccv": ConstantCurrentConstantVoltage,
    "eis": Impedance,
    "sweep": Sweep,
    "repeat": Repeat,
}


def _normalise_entry(value: Any) -> Any:
    """`{plate: {...}}`, `{rest: 10 min}` or a PyBaMM string -> a dict tagged with `kind`."""
    if isinstance(value, str):
        try:
            return step_strings.parse(value)
        except step_strings.StepStringError as exc:
            raise PydanticCustomError("step_string", str(exc)) from None
    kinds = ", ".join(STEP_KINDS)
    if not isinstance(value, dict) or not value:
        raise PydanticCustomError(
            "step_entry",
            f"a step is a mapping with one key naming its kind ({kinds}) or a step string "
            "such as 'Rest for 10 minutes'",
        )
    if len(value) != 1:
        keys = ", ".join(map(str, value))
        # Two kinds in one entry is a missing '- '; one kind plus settings is missing indentation.
        several = sum(key in STEP_KINDS for key in value) > 1
        advice = (
            "start each step on its own line with '- '"
            if several
            else "indent the step's settings under its kind"
        )
        raise PydanticCustomError(
            "step_entry",
            f"a step has exactly one key naming its kind ({kinds}), found {keys}; {advice}",
        )
    ((kind, body),) = value.items()
    if kind not in STEP_KINDS:
        close = difflib.get_close_matches(str(kind), STEP_KINDS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise PydanticCustomError("step_kind", f"unknown step kind '{kind}'; {hint}step kinds are {kinds}")
    if kind == "rest" and isinstance(body, str | int | float) and not isinstance(body, bool):
        return {"kind": "rest", "until": {"duration": body}}
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise PydanticCustomError(
            "step_body", f"the settings of '{kind}' must be a mapping of keys to values"
        )
    if "kind" in body:
        raise PydanticCustomError("step_body", f"'kind' is not a setting of '{kind}'")
    return {"kind": kind, **body}


AnyStep = Annotated[
    Rest
    | ConstantCurrent
    | Plate
    | Strip
    | ConstantVoltage
    | ConstantCurrentConstantVoltage
    | Impedance
    | Sweep
    | Repeat,
    Field(discriminator="kind"),
]


class _RestEntry(Strict):
    rest: Rest | str


class _CcEntry(Strict):
    cc: ConstantCurrent


class _PlateEntry(Strict):
    plate: Plate


class _StripEntry(Strict):
    strip: Strip


class _CvEntry(Strict):
    cv: ConstantVoltage


class _CccvEntry(Strict):
    cccv: ConstantCurrentConstantVoltage


class _EisEntry(Strict):
    eis: Impedance


class _SweepEntry(Strict):
    sweep: Sweep


class _RepeatEntry(Strict):
    repeat: Repeat


# What a protocol file may hold where a step goes; used for the JSON Schema editors read.
_StepInput = (
    _RestEntry
    | _CcEntry
    | _PlateEntry
    | _StripEntry
    | _CvEntry
    | _CccvEntry
    | _EisEntry
    | _SweepEntry
    | _RepeatEntry
    | Annotated[str, Field(description="A PyBaMM step, e.g. 'Charge at 0.1C until 4.25 V'.")]
)

Step = Annotated[AnyStep, BeforeValidator(_normalise_entry, json_schema_input_type=_StepInput)]


class Protocol(Strict):
    """A whole test: the cell, its safety limits, default logging and the steps."""

    name: str = Field(min_length=1, examples=["E1 plating/stripping, MgAgSn"])
    description: str = ""
    cell: Cell = Field(default_factory=Cell)
    safety: Safety = Field(default_factory=Safety)
    record: Record = Field(default_factory=lambda: Record.model_validate({"every": "1 min"}))
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _no_schema_key(cls, data: Any) -> Any:
        # Editors put `$schema` in files to find our schema; it is not part of the protocol.
        if isinstance(data, dict) and "$schema" in data:
            data = {k: v for k, v in data.items() if k != "$schema"}
        return data


# Steps nest (repeat and every hold steps), so the models are finished once all exist.
_RECURSIVE: tuple[type[BaseModel], ...] = (Repeat, Every, _Sourcing, Rest, ConstantCurrent, Plate, Strip)
_FINISH: tuple[type[BaseModel], ...] = (
    ConstantVoltage,
    ConstantCurrentConstantVoltage,
    _RepeatEntry,
    Protocol,
)
for _model in _RECURSIVE + _FINISH:
    _model.model_rebuild()
