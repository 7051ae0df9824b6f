"""Anode-less full cell MgAgSn-Elastane | LPSCl | LiNbO3-NCM811 for experiments E7-E9.

A Thevenin model (OCV + R0 + R1‖C1) over an explicit lithium inventory, implementing
`CellModel`. The parameters live in `presets_fullcell`, the Li bookkeeping and EMF in
`fullcell_inventory`, the node-wise solution of held-voltage and shorted segments in
`fullcell_nodes`; `FullCell` explains how formation loss, fade, rate capability and the short
come out. Which figures are calibrated to the paper and which follow from the model:
docs/simulator.md.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

import numpy as np

from cyclerd.simulators.cell import ComplexArray, FloatArray, LiveState
from cyclerd.simulators.fullcell_inventory import FullCellState, LithiumInventory
from cyclerd.simulators.fullcell_nodes import NodeSolver
from cyclerd.simulators.presets_fullcell import PRESETS, FullCellParams

__all__ = ["PRESETS", "FullCell", "FullCellParams"]


class FullCell(LiveState):
    """Anode-less NCM811 full cell. Positive current charges (plates Li on the collector).

    EMF = U_NCM811(SOC) - U_neg. U_neg is the seed staircase while the seeds fill and 0 V on
    plated Li; while stripping, the EMF collapses to 0 once the Li that can be reached at this
    current is gone (the collector has nothing left to give). Li bookkeeping (§4(f)):

    - Formation: the cathode gives capacity/ice on the first charge; of that, the trapped seed
      Li, a first SEI (sized from the parameters so that the 0.1C discharge returns `capacity`)
      and the dead Li of the first strip (1 - ce of the deposit) are lost: ICE = ice by
      construction, at any formation charge rate.
    - Later cycles: the strip orphans L/f per stripped charge at accessible fraction f, i.e.
      a fraction L of the deposit per cycle at any stripping rate, and an anode-less cell has no
      excess Li to replace it. L is an SEI charge per cycle spread over the deposit plus a
      dead-Li fraction, both scaled by the cycle's constant-current plating density
      (`LithiumInventory.loss_fraction`): at E8's 1 mA/cm² L is 1 - ce of a full deposit
      and grows as the deposit fades; `ce` is calibrated so that E8 retains 70 % at cycle
      100. Faster charging loses more; the discharge capacity is f(rate) · inventory (the
      cathode, capacity/ice, never limits).
    - Rate capability is on the Li side: at C-rate c only f(c) of the deposit can be stripped
      before voids cut the contact (above the stripping CCD of LPSCl at 25 °C). The rest stays
      plated and is reached at a lower rate or after a rest, like a real cell recovering.
    - Short circuit: each strip faster than Li creep refills the interface (j_cs) removes
      contact in proportion to the charge stripped; constant-current plating whose local
      density j / (1 - contact_loss) reaches the CCD starts the short in that cycle, and from
      then on a leak R_ss in parallel falls from a soft to a hard level. The cell's void rate
      comes from its Weibull draw (`reference_onset_cycle`): E8 shorts in about that cycle, a
      harsher protocol earlier, a gentler one later or never. Held-voltage plating neither
      starts a short nor scales the loss.

    Random streams derive from (seed, preset name): two presets with one seed draw apart.
    """

    LIVE = ("_state", "_noise_rng")  # the rest is set once, in __init__

    def __init__(self, params: FullCellParams, area_m2: float = 0.785e-4, seed: int = 0) -> None:
        if area_m2 <= 0:
            raise ValueError(f"FullCell: area_m2 must be positive, got {area_m2}")
        self.params = params
        self._area_m2 = area_m2
        # Separate streams: what happens to the cell must not depend on how often it is read.
        root = np.random.SeedSequence([seed, zlib.crc32(params.name.encode())])
        short_seq, noise_seq, leak_seq = root.spawn(3)
        self._noise_rng = np.random.default_rng(noise_seq)
        self._leak_key = tuple(int(word) for word in leak_seq.generate_state(2))  # per-cycle spread
        self._inventory = LithiumInventory.for_area(params, area_m2)
        self.nominal_capacity_Ah = self._inventory.nominal_capacity_Ah
        p = params
        self._r1_ohm = p.r1_ohm_m2 / area_m2
        self._c1_F = p.tau1_s / self._r1_ohm
        self._node_solver = NodeSolver(self._inventory, self._c1_F, p.tau1_s, self._r0(0))
        draw = p.short_n0 * float(np.random.default_rng(short_seq).weibull(p.short_k))
        self.reference_onset_cycle = max(1, math.ceil(draw))  # the cycle E8 would short in
        self._void_rate = self._void_rate_for(self.reference_onset_cycle)
        self._state = FullCellState()

    @property
    def short_onset_cycle(self) -> int | None:
        """The cycle in which this cell shorted, or None while it has not."""
        return self._state.short_cycle

    @property
    def state(self) -> FullCellState:
        return self._state

    def restore_live_state(self, state: Mapping[str, Any]) -> None:
        """As `LiveState`, and a checkpoint written before the state had all its fields loads
        with their defaults: m = 1 for the cycle under way, intact contact, no short yet."""
        stored = state.get("_state")
        if isinstance(stored, Mapping):
            fresh = FullCellState()
            added = {f.name: getattr(fresh, f.name) for f in fields(fresh) if f.name not in stored}
            known = {f.name for f in fields(fresh)}
            if added and set(stored) <= known:  # an older state, not another model's
                state = {**state, "_state": {**stored, **added}}
        super().restore_live_state(state)

    # -- CellModel -------------------------------------------------------------------------

    @property
    def area_m2(self) -> float:
        return self._area_m2

    @property
    def cycle(self) -> int:
        return self._state.cycle

    def voltage_at_current(self, current_A: float, t_s: FloatArray) -> FloatArray:
        voltage, _, st = self._simulate(current_A, False, t_s)
        return voltage + self._noise(voltage.size, self._shorted(st), self.params.noise_V)

    def advance_at_current(self, current_A: float, duration_s: float) -> None:
        self._state = self._simulate(current_A, False, np.array([duration_s]))[2]

    def current_at_voltage(self, voltage_V: float, t_s: FloatArray) -> FloatArray:
        _, current, st = self._simulate(voltage_V, True, t_s)
        sigma = self.params.noise_A_per_m2 * self._area_m2
        return current + self._noise(current.size, self._shorted(st), sigma, self._r0(st.cycle))

    def advance_at_voltage(self, voltage_V: float, duration_s: float) -> None:
        self._state = self._simulate(voltage_V, True, np.array([duration_s]))[2]

    def impedance(self, frequencies_Hz: FloatArray) -> ComplexArray:
        """R_b + (R_ct‖CPE) + finite Warburg; ‖ R_ss once shorted; R_b, R_ct grow like R0.

        The Warburg's DC limit is R1 (its time constant follows from σ_W), so the spectrum and
        the time-domain model agree at DC. Before any Li reaches the collector the electrode
        blocks: a CPE replaces the Warburg.
        """
        p, st, area = self.params, self._state, self._area_m2
        jw = (2j * np.pi * np.asarray(frequencies_Hz, dtype=np.float64)).astype(np.complex128)
        growth = 1 + p.r0_growth_per_cycle * st.cycle
        r_ct = p.r_ct_ohm_m2 * growth / area
        z = (p.r0_ohm_m2 - p.r_ct_ohm_m2) * growth / area + _r_cpe(
            r_ct, p.q_dl_F_per_m2 * area, p.alpha_dl, jw
        )
        if st.anode_As <= 0:  # blocking collector: CPE, Q = 1e-3 F·s^(α-1)/cm², α = 0.9 (§2.2)
            z = z + 1 / (10.0 * area * jw**0.9)
        else:
            root = np.sqrt(jw * (p.r1_ohm_m2 / p.warburg_ohm_m2_sqrt_s) ** 2)
            z = z + self._r1_ohm * np.tanh(root) / root
        r_ss = self._rss(st)
        z = z * r_ss / (z + r_ss) if math.isfinite(r_ss) else z
        if p.impedance_noise > 0:
            scatter = self._noise_rng.normal(size=(2, z.size))
            z = z * (1 + p.impedance_noise * (scatter[0] + 1j * scatter[1]))
        return np.asarray(z, dtype=np.complex128)

    # -- segment physics -------------------------------------------------------------------

    def _simulate(
        self, setpoint: float, hold_voltage: bool, t_s: FloatArray
    ) -> tuple[FloatArray, FloatArray, FullCellState]:
        """Voltage, current and the state at t_s[-1] for one constant-current/voltage segment."""
        t = np.asarray(t_s, dtype=np.float64)
        if t.size and (t[0] < 0 or np.any(np.diff(t) < 0)):
            raise ValueError("FullCell: times must be >= 0 and increasing (seconds from now)")
        st = self._state
        horizon = float(t[-1]) if t.size else 0.0
        if hold_voltage:
            e_rest = float(self._inventory.emf(st, 0.0, 0, 1.0))
            st = self._begin(st, int(np.sign(setpoint - e_rest - st.v1_V)), 0.0)
            r_ss = self._rss(st)
            i_cell, end = self._node_solver.cell_current(st, setpoint, self._r0(st.cycle), t)
            return np.full_like(t, setpoint), i_cell + setpoint / r_ss, self._worn(st, end, horizon)
        direction = int(np.sign(setpoint))
        st = self._begin(st, direction, max(setpoint, 0.0) / self._area_m2)
        r_ss = self._rss(st)
        if math.isfinite(r_ss):  # leak in parallel: V = (I - I_cell) · R_ss
            i_cell, end = self._node_solver.cell_current(st, setpoint * r_ss, r_ss + self._r0(st.cycle), t)
            return (setpoint - i_cell) * r_ss, np.full_like(t, setpoint), self._worn(st, end, horizon)
        f = self._inventory.rate_fraction(setpoint)
        emf = self._inventory.emf(st, setpoint * t, direction, f)
        decay = np.exp(-t / self.params.tau1_s)
        v1 = st.v1_V * decay + setpoint * self._r1_ohm * (1 - decay)
        end = self._inventory.after(st, setpoint * horizon, f, float(v1[-1]) if t.size else st.v1_V)
        voltage = emf + setpoint * self._r0(st.cycle) + v1
        return voltage, np.full_like(t, setpoint), self._worn(st, end, horizon)

    def _begin(self, st: FullCellState, direction: int, plating_A_per_m2: float) -> FullCellState:
        """A charge after a discharge starts the next cycle (R0 growth, short evolution).

        `plating_A_per_m2` is the density of a constant-current charge (0 when the voltage is
        held): it sets the cycle's loss scale m, and dendrites start once the contact the voids
        left carries the critical current density (Kasemchainan 2019).
        """
        if direction > 0 and st.last_step < 0:
            st = replace(st, cycle=st.cycle + 1, last_step=direction, plate_A_per_m2=0.0)
        else:
            st = replace(st, last_step=direction or st.last_step)
        if plating_A_per_m2 <= 0:
            return st
        st = replace(st, plate_A_per_m2=max(st.plate_A_per_m2, plating_A_per_m2))
        local_A_per_m2 = plating_A_per_m2 / max(1.0 - st.contact_loss, 1e-12)
        if st.short_cycle is None and local_A_per_m2 >= self.params.ccd_A_per_m2:
            st = replace(st, short_cycle=st.cycle)
        return st

    def _worn(self, before: FullCellState, after: FullCellState, duration_s: float) -> FullCellState:
        """`after`, with the contact a strip from `before` removed (voids; none while plating)."""
        stripped_As = (before.soc - after.soc) * self._inventory.q_cat_As
        if stripped_As <= 0 or duration_s <= 0:
            return after
        j_A_per_m2 = stripped_As / duration_s / self._area_m2  # a held voltage: its mean
        voids = self._void_rate * stripped_As / self._inventory.q_nom_As * self._strip_factor(j_A_per_m2)
        return replace(after, contact_loss=after.contact_loss + voids)

    def _strip_factor(self, j_A_per_m2: float) -> float:
        """Voids per stripped charge at current density j, relative to E8's reference current.

        Li creep and diffusion refill the interface at up to `critical_strip_A_per_m2`; what is
        stripped faster leaves voids, the share 1 - j_cs/j of the charge (Kasemchainan 2019).
        """
        p = self.params
        share = max(1.0 - p.critical_strip_A_per_m2 / max(j_A_per_m2, 1e-30), 0.0)
        return share / (1.0 - p.critical_strip_A_per_m2 / p.reference_current_A_per_m2)

    def _void_rate_for(self, onset_cycle: int) -> float:
        """Contact lost per nominal capacity stripped at j_ref, such that E8 shorts in `onset_cycle`.

        E8 plates at j_ref, which meets the CCD once the contact lost reaches 1 - j_ref/CCD.
        Its 0.1C formation strip is at j_cs and leaves no voids, so the plating of cycle n
        follows the strips of cycles 1..n-1, of the fading deposit (`reference_strips`); n - 1.5
        of them leave half a cycle of margin either way. E8 cannot short before cycle 2.
        """
        p = self.params
        allowed = 1.0 - p.reference_current_A_per_m2 / p.ccd_A_per_m2
        strips = self._inventory.reference_strips(max(onset_cycle, 2) - 1.5)
        return allowed / max(strips, 0.1)

    def _r0(self, cycle: int) -> float:
        return self.params.r0_ohm_m2 * (1 + self.params.r0_growth_per_cycle * cycle) / self._area_m2

    def _rss(self, st: FullCellState) -> float:
        """Leak resistance (Ω) in parallel with the cell during `st.cycle`; inf before the onset."""
        p, first = self.params, st.short_cycle
        if first is None or st.cycle < first:
            return math.inf
        spread = p.short_spread * float(np.random.default_rng([*self._leak_key, st.cycle]).normal())
        r = max(p.short_hard_ohm_m2, p.short_soft_ohm_m2 * p.short_decay_per_cycle ** (st.cycle - first))
        return r * math.exp(spread) / self._area_m2

    def _shorted(self, st: FullCellState) -> bool:
        return st.short_cycle is not None and st.cycle >= st.short_cycle

    def _noise(self, n: int, shorted: bool, sigma: float, ohm: float = 1.0) -> FloatArray:
        """Gaussian noise; once shorted, more of it (short_noise_V / `ohm`) and telegraph jumps."""
        if not shorted:
            return self._noise_rng.normal(0.0, sigma, n) if sigma > 0 else np.zeros(n)
        extra = self.params.short_noise_V / ohm
        telegraph = np.cumsum(self._noise_rng.random(n) < 0.02) % 2 - 0.5
        return self._noise_rng.normal(0.0, sigma + extra, n) + 2 * extra * telegraph


def _r_cpe(r_ohm: float, q: float, alpha: float, jw: ComplexArray) -> ComplexArray:
    """R in parallel with a constant-phase element: R / (1 + R·Q·(jω)^α)."""
    return np.asarray(r_ohm / (1 + r_ohm * q * jw**alpha), dtype=np.complex128)
