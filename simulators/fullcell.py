"""Anode-less full cell MgAgSn-Elastane | LPSCl | LiNbO3-NCM811 for experiments E7-E9.

A Thevenin model (OCV + R0 + R1‖C1) over an explicit lithium inventory, implementing
`CellModel`. The parameters live in `presets_fullcell`, the Li bookkeeping and EMF in
`fullcell_inventory`, the node-wise solution of held-voltage and shorted segments in
`fullcell_nodes`; `FullCell` explains how formation loss, fade and rate capability come out.
"""

from __future__ import annotations

import math
from dataclasses import replace

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
      and the dead Li of the first strip are lost: ICE = ice by construction.
    - Later cycles: stripping orphans (1 - ce)/f of the charge stripped at accessible fraction
      f, i.e. (1 - ce) of the deposit per cycle at any rate, and an anode-less cell has no
      excess Li to replace it: inventory n+1 = ce · inventory n, discharge capacity =
      f(rate) · inventory (the cathode, capacity/ice, never limits), so 0.5C retention at
      cycle 100 is ce ** 99.
    - Rate capability is on the Li side: at C-rate c only f(c) of the deposit can be stripped
      before voids cut the contact (above the stripping CCD of LPSCl at 25 °C). The rest stays
      plated and is reached at a lower rate or after a rest, like a real cell recovering.
    """

    LIVE = ("_state", "_noise_rng")  # the rest is set once, in __init__

    def __init__(self, params: FullCellParams, area_m2: float = 0.785e-4, seed: int = 0) -> None:
        if area_m2 <= 0:
            raise ValueError(f"FullCell: area_m2 must be positive, got {area_m2}")
        self.params = params
        self._area_m2 = area_m2
        self._seed = seed
        self._noise_rng = np.random.default_rng(seed)
        self._inventory = LithiumInventory.for_area(params, area_m2)
        self.nominal_capacity_Ah = self._inventory.nominal_capacity_Ah
        p = params
        self._r1_ohm = p.r1_ohm_m2 / area_m2
        self._c1_F = p.tau1_s / self._r1_ohm
        self._node_solver = NodeSolver(self._inventory, self._c1_F, p.tau1_s, self._r0(0))
        self.short_onset_cycle = p.short_n0 * float(np.random.default_rng([seed, 1]).weibull(p.short_k))
        self._state = FullCellState()

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
        r_ss = self._rss(st.cycle)
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
        if hold_voltage:
            e_rest = float(self._inventory.emf(st, 0.0, 0, 1.0))
            st = self._begin(st, int(np.sign(setpoint - e_rest - st.v1_V)))
            r_ss = self._rss(st.cycle)
            i_cell, end = self._node_solver.cell_current(st, setpoint, self._r0(st.cycle), t)
            return np.full_like(t, setpoint), i_cell + setpoint / r_ss, end
        direction = int(np.sign(setpoint))
        st = self._begin(st, direction)
        r_ss = self._rss(st.cycle)
        if math.isfinite(r_ss):  # leak in parallel: V = (I - I_cell) · R_ss
            i_cell, end = self._node_solver.cell_current(st, setpoint * r_ss, r_ss + self._r0(st.cycle), t)
            return (setpoint - i_cell) * r_ss, np.full_like(t, setpoint), end
        f = self._inventory.rate_fraction(setpoint)
        emf = self._inventory.emf(st, setpoint * t, direction, f)
        decay = np.exp(-t / self.params.tau1_s)
        v1 = st.v1_V * decay + setpoint * self._r1_ohm * (1 - decay)
        horizon = float(t[-1]) if t.size else 0.0
        end = self._inventory.after(st, setpoint * horizon, f, float(v1[-1]) if t.size else st.v1_V)
        return emf + setpoint * self._r0(st.cycle) + v1, np.full_like(t, setpoint), end

    def _begin(self, st: FullCellState, direction: int) -> FullCellState:
        """A charge after a discharge starts the next cycle (R0 growth, short evolution)."""
        if direction > 0 and st.last_step < 0:
            return replace(st, cycle=st.cycle + 1, last_step=direction)
        return replace(st, last_step=direction or st.last_step)

    def _r0(self, cycle: int) -> float:
        return self.params.r0_ohm_m2 * (1 + self.params.r0_growth_per_cycle * cycle) / self._area_m2

    def _rss(self, cycle: int) -> float:
        """Leak resistance (Ω) in parallel with the cell during `cycle`; inf before the onset."""
        p = self.params
        first = math.ceil(self.short_onset_cycle)
        if cycle < first:
            return math.inf
        spread = p.short_spread * float(np.random.default_rng([self._seed, 2, cycle]).normal())
        r = max(p.short_hard_ohm_m2, p.short_soft_ohm_m2 * p.short_decay_per_cycle ** (cycle - first))
        return r * math.exp(spread) / self._area_m2

    def _shorted(self, st: FullCellState) -> bool:
        return st.cycle >= math.ceil(self.short_onset_cycle)

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
