"""Printing a compiled protocol's plan for a person at a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from cyclerd.protocols.plan import plan
from cyclerd.protocols.program import Program
from cyclerd.protocols.units import SECONDS_PER_HOUR, duration_text, engineering


def _window(lo: float | None, hi: float | None, unit: str) -> str:
    low = "−∞" if lo is None else f"{lo:g} {unit}"
    high = "∞" if hi is None else f"{hi:g} {unit}"
    return f"[{low}, {high}]"


def render_plan(console: Console, program: Program) -> None:
    """The steps with their durations, charge per cycle and what the instrument must do."""
    p = plan(program)
    console.print(f"  [bold]{program.name}[/bold]")
    if program.description:
        console.print(f"  {program.description.strip()}", markup=False)
    cell = []
    if program.area_m2 is not None:
        cell.append(f"area {program.area_m2 * 1e4:g} cm²")
    if program.capacity_As is not None:
        cell.append(f"capacity {engineering(program.capacity_As / SECONDS_PER_HOUR, 'Ah')}")
    cell.extend(f"{key} {value}" for key, value in program.metadata.items())
    if cell:
        console.print("  cell: " + ", ".join(cell), markup=False)
    s = program.safety
    safety = [f"V in {_window(s.voltage_min_V, s.voltage_max_V, 'V')}"]
    if s.current_max_A is not None:
        safety.append(f"|I| ≤ {engineering(s.current_max_A, 'A')}")
    if s.temperature_max_K is not None:
        safety.append(f"T ≤ {s.temperature_max_K - 273.15:g} °C")
    if s.duration_max_s is not None:
        safety.append(f"run ≤ {duration_text(s.duration_max_s)}")
    console.print("  safety: " + ", ".join(safety), markup=False)

    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False, padding=(0, 1))
    table.add_column("  step")
    table.add_column("time", justify="right", no_wrap=True)
    for line in p.lines:
        table.add_row("  " + "   " * line.depth + line.text, line.span.text())
    console.print(table)

    console.print(f"  total: {p.total.text()}", markup=False)
    for cycle in p.cycles:
        if cycle.text():
            console.print(f"  per cycle of {cycle.loop}: {cycle.text()}", markup=False)
    needs = program.needs()
    wants = [", ".join(sorted(needs.kinds)), f"|I| up to {engineering(needs.current_max_A, 'A')}"]
    if needs.voltage_range_V is not None:
        wants.append(f"V {needs.voltage_range_V[0]:g} to {needs.voltage_range_V[1]:g} V")
    if needs.eis_modes:
        lo, hi = needs.frequency_range_Hz or (0.0, 0.0)
        modes = ", ".join(sorted(needs.eis_modes))
        wants.append(f"EIS ({modes}, {engineering(lo, 'Hz')}–{engineering(hi, 'Hz')})")
    console.print("  instrument must do: " + "; ".join(wants), markup=False)
    console.print()
