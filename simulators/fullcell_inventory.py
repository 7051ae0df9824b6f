"""The lithium inventory of the anode-less full cell: its state, EMF and bookkeeping.

Where the Li is (cathode state of charge, seed alloys, plated metal, first SEI), what the EMF
is for it, how passing charge moves it, how much of the deposit a cycle loses and how much a
given stripping rate can reach (cell-physics.md §4(f), §7; docs/simulator.md).
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
    """What the cell remembers between segments; everything else is a function of it.

    The last three fields came with the protocol-dependent CE and short onset; `FullCell` reads a
    checkpoint written without them with these defaults (m = 1, intact contact, no short).
    """

    soc: float = 0.0  # cathode: delithiated fraction of its first-charge capacity
    anode_As: float = 0.0  # Li on the negative side: alloyed in the seeds + plated metal
    plated_total_As: float = 0.0  # all charge ever plated (the first SEI saturates with it)
    deposit_As: float = 0.0  # anode Li when plating last stopped (void-limited stripping)
    v1_V: float = 0.0
    last_dir: int = 0  # sign of the last cell current: picks the hysteresis branch at rest
    last_step: int = 0  # sign of the last charge/discharge step asked for: counts cycles
    cycle: int = 0  # completed charge/discharge cycles (formation is cycle 0)
    plate_A_per_m2: float = 0.0  # fastest constant-current plating of this cycle; 0: none (held)
    contact_loss: float = 0.0  # fraction of the Li | LPSCl interface lost to stripping voids
    short_cycle: int | None = None  # the cycle in which the cell shorted; None while it has not


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
    q_ref_As: float  # E8's deposit: the SEI charge per cycle is a share of its loss
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
            q_ref_As=p.reference_deposit_Ah_per_m2 * to_As,
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
            anode = st.anode_As + (dq * (1 + self.loss_fraction(st) / f) if direction < 0 else 0 * dq)
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
        if dq < 0:  # orphans the cycle's loss fraction of the deposit, spread over what f reaches
            anode = st.anode_As + dq * (1 + self.loss_fraction(st) / f)
            return replace(st, soc=soc, anode_As=anode, v1_V=v1_V, last_dir=-1)
        return replace(st, v1_V=v1_V)

    def loss_fraction(self, st: FullCellState) -> float:
        """Fraction of the deposit that the strip of `st`'s cycle orphans (SEI and dead Li).

        Formation (cycle 0) loses 1 - ce: its first SEI is solved against ICE at 0.1C
        (`for_area`), so ICE is the paper's at any formation charge rate. Later cycles split the
        reference loss 1 - ce (E8: plating at j_ref, a deposit Q_ref of 2 mAh/cm²) as the half
        cell does: a share s is an SEI charge per cycle, s·(1 - ce)·Q_ref, spread over the
        deposit D (Li above the trapped seed floor when plating stopped); the rest is dead Li,
        d = (1 - s)(1 - ce) of the deposit. Both scale with the deposit's surface,
        m = j_plate / j_ref (nuclei are smaller and denser at higher overpotential, Pei et al.
        2017):

            loss = s·(1 - ce)·m·Q_ref / D + 1 - (1 - d)^m

        so CE falls with the plating current density and, at a fixed one, rises with areal
        capacity (the SEI charge is spread over more Li), and it falls as the inventory fades.
        A cycle plated only at a held voltage counts as m = 1.
        """
        p = self.params
        if st.cycle <= 0:
            return 1.0 - p.ce
        j = st.plate_A_per_m2
        m = j / p.reference_current_A_per_m2 if j > 0 else 1.0
        deposit = max(st.deposit_As - self.floor_As, self.void_As)
        dead = (1.0 - p.sei_loss_share) * (1.0 - p.ce)
        sei = p.sei_loss_share * (1.0 - p.ce) * m * self.q_ref_As / deposit
        return min(sei - math.expm1(m * math.log1p(-dead)), 1.0)

    def reference_strips(self, cycles: float) -> float:
        """Charge (in nominal capacities Q) the first `cycles` cycles after formation strip in E8.

        E8 plates and strips at j_ref: each cycle strips the accessible fraction f of its
        deposit D_n and loses a + d·D_n of it (`loss_fraction` at m = 1, a = s·(1 - ce)·Q_ref).
        So D_1 = Q, D_n+1 = (1 - d)·D_n - a, and the sum of the first x deposits is geometric:
        (1 + r)(1 - (1 - d)^x)/d - r·x in units of Q with r = a/(d·Q), up to the cycle where
        the deposit is gone. Fractional `cycles` interpolate smoothly.
        """
        p = self.params
        c_rate = p.reference_current_A_per_m2 / p.capacity_Ah_per_m2
        f = self.rate_fraction(-c_rate * self.nominal_capacity_Ah)
        x = max(cycles, 0.0)
        dead = (1.0 - p.sei_loss_share) * (1.0 - p.ce)
        if dead <= 0:  # ce = 1: nothing fades
            return f * x
        r = p.sei_loss_share / (1.0 - p.sei_loss_share) * self.q_ref_As / self.q_nom_As
        if r > 0:  # the deposit is gone after ~x_end cycles, where the sum stops growing
            log_keep = math.log1p(-dead)
            x = min(x, math.log(r * dead / ((1.0 + r) * -log_keep)) / log_keep)
        return f * ((1.0 + r) * -math.expm1(x * math.log1p(-dead)) / dead - r * x)

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
