"""The lithium inventory of the anode-less full cell: its state, EMF and bookkeeping.

Where the Li is (cathode state of charge, seed alloys, plated metal, first SEI), what the EMF
is for it, how passing charge moves it, and how much of the deposit a given stripping rate
can reach (cell-physics.md §4(f), §7).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from cyclerd.simulators.cell import FloatArray
from cyclerd.simulators.ocp import ncm811_ocv, seed_potential
from cyclerd.simulators.presets_fullcell import MAH_PER_CM2, FullCellParams


@dataclass(frozen=True)
class FullCellState:
    """What the cell remembers between segments; everything else is a function of it."""

    soc: float = 0.0  # cathode: delithiated fraction of its first-charge capacity
    anode_As: float = 0.0  # Li on the negative side: alloyed in the seeds + plated metal
    plated_total_As: float = 0.0  # all charge ever plated (the first SEI saturates with it)
    deposit_As: float = 0.0  # anode Li when plating last stopped (void-limited stripping)
    v1_V: float = 0.0
    last_dir: int = 0  # sign of the last cell current: picks the hysteresis branch at rest
    last_step: int = 0  # sign of the last charge/discharge step asked for: counts cycles
    cycle: int = 0  # completed charge/discharge cycles (formation is cycle 0)


@dataclass(frozen=True)
class LithiumInventory:
    """Where the full cell's Li is, and the EMF that follows from it; fixed once built.

    Charges are in A·s on this cell. The first SEI (`sei_As`, saturating with the charge ever
    plated over `sei_scale_As`) is sized so that the 0.1C formation discharge returns the
    nominal capacity; `floor_As` is the seed Li that stays trapped in the alloys. Build one
    with `for_area`.
    """

    params: FullCellParams
    nominal_capacity_Ah: float
    q_nom_As: float
    q_cat_As: float  # the cathode's first-charge capacity, capacity / ice
    q_seed_As: float
    floor_As: float
    void_As: float
    sei_scale_As: float
    sei_As: float

    @classmethod
    def for_area(cls, params: FullCellParams, area_m2: float) -> LithiumInventory:
        """The inventory of a cell of `area_m2`; ValueError if the first SEI cannot be formed."""
        p, to_As = params, area_m2 * 3600.0
        q_nom_As = p.capacity_Ah_per_m2 * to_As
        q_cat_As = q_nom_As / p.ice
        q_seed_As = p.seed_capacity_Ah_per_m2 * to_As
        floor_As = (1 - p.seed_reversible_fraction) * q_seed_As
        sei_scale_As = p.sei_scale_Ah_per_m2 * to_As
        needed = q_cat_As - floor_As - q_nom_As * (2 - p.ce)
        saturation = -math.expm1(-q_cat_As / sei_scale_As)
        sei_As = max(needed, 0.0) / saturation
        if sei_As >= sei_scale_As:
            raise ValueError(
                f"FullCell {p.name!r}: the first SEI ({sei_As / to_As / MAH_PER_CM2:.3f} "
                "mAh/cm²) would take more Li than is plated; raise sei_scale_Ah_per_m2 or ice"
            )
        return cls(
            params=p,
            nominal_capacity_Ah=p.capacity_Ah_per_m2 * area_m2,
            q_nom_As=q_nom_As,
            q_cat_As=q_cat_As,
            q_seed_As=q_seed_As,
            floor_As=floor_As,
            void_As=p.void_width_Ah_per_m2 * to_As,
            sei_scale_As=sei_scale_As,
            sei_As=sei_As,
        )

    def emf(self, st: FullCellState, dq: float | FloatArray, direction: int, f: float) -> FloatArray:
        """EMF after passing charge `dq` (signed, As) in `direction` from `st`."""
        p = self.params
        dq = np.asarray(dq, dtype=np.float64)
        if direction > 0:
            lost = np.exp(-st.plated_total_As / self.sei_scale_As) - np.exp(
                -(st.plated_total_As + dq) / self.sei_scale_As
            )
            anode = st.anode_As + dq - self.sei_As * lost
        else:
            anode = st.anode_As + (dq * (1 + (1 - p.ce) / f) if direction < 0 else 0 * dq)
        stripping = direction < 0 or (direction == 0 and st.last_dir < 0)
        e = ncm811_ocv(st.soc + dq / self.q_cat_As)
        fill = anode / max(self.q_seed_As, 1e-30)
        if np.min(fill, initial=np.inf) < 1.3:  # beyond, the seed curve is 0 V to < 1e-8 V
            e = e - seed_potential(fill, p.seed_hysteresis_V if stripping else 0.0)
        if stripping:  # no reachable Li, no EMF: the cell collapses instead of running on
            reach = anode - self.floor_As - (1 - f) * (st.deposit_As - self.floor_As)
            e = e * 0.5 * (1 + np.tanh(reach / (2 * self.void_As)))
        return e

    def after(self, st: FullCellState, dq: float, f: float, v1_V: float) -> FullCellState:
        """The state after passing `dq` (As) at accessible fraction `f`, V1 ending at `v1_V`."""
        soc = st.soc + dq / self.q_cat_As
        if dq > 0:
            total = st.plated_total_As + dq
            lost = self.sei_As * (
                math.exp(-st.plated_total_As / self.sei_scale_As) - math.exp(-total / self.sei_scale_As)
            )
            anode = st.anode_As + dq - lost
            return replace(
                st, soc=soc, anode_As=anode, plated_total_As=total, deposit_As=anode, v1_V=v1_V, last_dir=1
            )
        if dq < 0:
            anode = st.anode_As + dq * (1 + (1 - self.params.ce) / f)
            return replace(st, soc=soc, anode_As=anode, v1_V=v1_V, last_dir=-1)
        return replace(st, v1_V=v1_V)

    def rate_fraction(self, current_A: float) -> float:
        """Accessible fraction of the deposit when stripping at `current_A` (1 when plating)."""
        if current_A >= 0:
            return 1.0
        p = self.params
        log_c = math.log10(max(-current_A / self.nominal_capacity_Ah, 1e-12))
        logs = np.log10(p.rate_C)
        f = float(np.interp(log_c, logs, p.rate_fraction))
        if len(logs) > 1 and log_c > logs[-1]:  # extrapolate the last segment above the table
            slope = (p.rate_fraction[-1] - p.rate_fraction[-2]) / (logs[-1] - logs[-2])
            f = p.rate_fraction[-1] + slope * (log_c - logs[-1])
        return min(max(f, 0.05), 1.0)
