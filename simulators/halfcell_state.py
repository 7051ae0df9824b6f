"""What a seed | LPSCl | Li half-cell remembers between steps, and what one segment runs with.

Plain frozen values: the cell's state (checkpointed field by field as `HalfCell._state`) and
the direction and per-cycle resistances of one constant-drive segment.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Direction(Enum):
    """Which way Li moves in the working electrode (chooses the plateau branch)."""

    PLATE = "plate"
    STRIP = "strip"
    REST = "rest"


@dataclass(frozen=True)
class HalfCellState:
    """What the electrode remembers between steps.

    `x_As` is the Li the electrode can still give back: reversible seed alloy and plated Li.
    Below zero it is blocking charge drawn after both ran out, refilled first on plating.
    """

    x_As: float
    seed_filled_As: float = 0.0  # progress of the first (partly irreversible) seed lithiation
    cycle: int = 0  # 0 until the first plating; +1 whenever plating follows a strip
    in_strip_phase: bool = True  # a driven strip happened since the last cycle began
    last_direction: Direction = Direction.STRIP
    li_peak_As: float = 0.0  # plated Li when the present strip began (void term)
    sei_As: float = 0.0  # charge this cycle's plating has spent on SEI so far
    contact_loss: float = 0.0  # fraction of the interface lost to voids left by stripping
    short_cycle: int = 0  # the cycle in which the cell shorted; 0 while it has not


@dataclass(frozen=True)
class Segment:
    """The cell under one constant drive: the direction Li moves and this cycle's values."""

    direction: Direction
    cycle: int
    new_cycle: bool
    loss_fraction: float  # of the Li plated in this cycle beyond its SEI charge (dead Li)
    sei_charge_As: float  # SEI this cycle's plating forms on the fresh deposit
    sei_done_As: float  # ... of which earlier segments of the cycle formed this much
    r_contact_ohm_per_As: float  # R_CT rise per A·s of Li plated (contact lost under it)
    short_cycle: int  # onset of the short this segment runs with (0: healthy)
    r_b_ohm: float
    r_sei_ohm: float
    r_ct_ohm: float  # of the Li-free electrode
    r_ss_ohm: float  # parallel leakage; inf for a healthy cell
    li_peak_As: float
