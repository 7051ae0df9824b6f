"""Seed layer | LPSCl | Li half-cell: voltage, current, coulombic bookkeeping and impedance.

The state is the Li the working electrode can give back (reversible seed alloy plus plated
Li) and a few cycle counters. Voltage = seed plateaus or Li at 0 V, plus a linear interface
resistance, with a parallel leakage once the cell shorts (cell-physics.md §4 (a)–(e)).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from cyclerd.simulators.cell import ComplexArray, FloatArray, LiveState
from cyclerd.simulators.halfcell_state import Direction, HalfCellState, Segment
from cyclerd.simulators.impedance import CircuitParams, circuit_impedance
from cyclerd.simulators.presets_halfcell import HalfCellParams, ShortSchedule, preset
from cyclerd.simulators.seed_electrode import SeedElectrode

_GRID = 8192  # points of the charge grid when the cell current must be integrated
_RATE_FLOOR_A = 1e-15  # below this the cell is at equilibrium: the time to move is ~forever
_MIN_RCT_FACTOR = 0.2  # keeps R_ct(n) positive for the fast-growing seeds before cycle 5


class HalfCell(LiveState):
    """A seeded current collector vs Li on LPSCl; implements `CellModel`.

    Positive current strips Li off the working electrode; the voltage is WE vs Li.
    Coulombic efficiency is not imposed on the data: plating loses a fraction of its Li
    (and, in cycle 1, part of the seed alloy stays lithiated), and stripping can only return
    what is left, so CE is whatever charge the cut-off lets through.
    """

    LIVE = ("_state", "_cycle_rng", "_noise_rng", "_ce_jitter")  # the rest is set once, in __init__

    def __init__(self, params: HalfCellParams | str, area_m2: float = 0.785e-4, seed: int = 0) -> None:
        self.params = preset(params) if isinstance(params, str) else params
        p = self.params
        self._area_m2 = area_m2
        self.electrode = SeedElectrode.for_area(p, area_m2)
        # Separate streams: cycle outcomes must not depend on how often the voltage is read.
        short_rng, self._cycle_rng, self._noise_rng = np.random.default_rng(seed).spawn(3)
        self.short = ShortSchedule.draw(p, short_rng)
        self._ce_jitter: list[float] = []
        self._state = HalfCellState(x_As=self.electrode.pristine_x_As)

    @property
    def area_m2(self) -> float:
        return self._area_m2

    @property
    def state(self) -> HalfCellState:
        return self._state

    # --- CellModel --------------------------------------------------------------------------

    def voltage_at_current(self, current_A: float, t_s: FloatArray) -> FloatArray:
        t = np.asarray(t_s, dtype=np.float64)
        seg = self._segment_at_current(current_A)
        x = self._path(seg, self._charge_at_current(seg, current_A, t))
        if seg.direction is Direction.REST:
            rest_V = current_A * seg.r_ss_ohm if math.isfinite(seg.r_ss_ohm) else self._rest_V()
            v = np.full(t.shape, rest_V)
        else:
            i_cell = self._cell_current_cc(seg, current_A, x)
            v = self._potential(seg.direction, x) + i_cell * self._r_int(seg, seg.direction, x)
        return v + self._voltage_noise(seg.cycle, t)

    def advance_at_current(self, current_A: float, duration_s: float) -> None:
        seg = self._segment_at_current(current_A)
        p_end = self._charge_at_current(seg, current_A, np.array([duration_s]))[0]
        self._commit(seg, float(p_end), driven_strip=current_A > 0)

    def current_at_voltage(self, voltage_V: float, t_s: FloatArray) -> FloatArray:
        t = np.asarray(t_s, dtype=np.float64)
        seg = self._segment_at_voltage(voltage_V)
        # The current is the slope of the charge actually passed, so it integrates to it.
        _, speed_A = self._charge_at_voltage(seg, voltage_V, t)
        sign = -1.0 if seg.direction is Direction.PLATE else 1.0
        x0 = np.array([self._state.x_As])
        r_eff = 1.0 / (1.0 / self._r_int(seg, seg.direction, x0)[0] + 1.0 / seg.r_ss_ohm)
        leak_A = voltage_V / seg.r_ss_ohm
        current_A: FloatArray = sign * speed_A + leak_A + self._voltage_noise(seg.cycle, t) / r_eff
        return current_A

    def advance_at_voltage(self, voltage_V: float, duration_s: float) -> None:
        seg = self._segment_at_voltage(voltage_V)
        p_end = self._charge_at_voltage(seg, voltage_V, np.array([duration_s]))[0][0]
        self._commit(seg, float(p_end), driven_strip=seg.direction is Direction.STRIP)

    def impedance(self, frequencies_Hz: FloatArray) -> ComplexArray:
        st, p = self._state, self.params
        seg = self._segment(st.last_direction, new_cycle=False)
        r_interface = self._r_int(seg, st.last_direction, np.array([st.x_As]))[0]
        circuit = CircuitParams(
            r_b_ohm=seg.r_b_ohm,
            r_sei_ohm=seg.r_sei_ohm,
            q_sei=p.q_sei_per_m2 * self._area_m2,
            alpha_sei=p.alpha_sei,
            r_ct_ohm=float(r_interface) - seg.r_b_ohm - seg.r_sei_ohm,  # incl. voids
            q_dl=p.q_dl_per_m2 * self._area_m2,
            alpha_dl=p.alpha_dl,
            sigma_w_ohm_per_sqrt_s=p.sigma_w_ohm_m2_per_sqrt_s / self._area_m2,
            inductance_H=p.inductance_H,
            shunt_ohm=seg.r_ss_ohm,
        )
        z = circuit_impedance(frequencies_Hz, circuit)
        shape = z.shape
        noise = self._noise_rng.normal(size=shape) + 1j * self._noise_rng.normal(size=shape)
        return z + p.eis_noise_fraction * np.abs(z) * noise

    # --- which way, and with which cycle's values --------------------------------------------

    def _segment(self, direction: Direction, new_cycle: bool) -> Segment:
        st, p, a = self._state, self.params, self._area_m2
        n = st.cycle + 1 if new_cycle else st.cycle
        growth = max(1.0 + p.r_ct_growth_per_cycle * (n - 5), _MIN_RCT_FACTOR)
        li_peak = st.li_peak_As
        if direction is Direction.STRIP and st.last_direction is not Direction.STRIP:
            li_peak = max(st.x_As - self.electrode.cap_As, 0.0)
        return Segment(
            direction=direction,
            cycle=n,
            new_cycle=new_cycle,
            loss_fraction=self._loss_fraction(n),
            r_b_ohm=p.r_b_ohm_m2 * (1.0 + p.r_b_growth_per_cycle * n) / a,
            r_sei_ohm=(p.r_sei_ohm_m2 + p.r_sei_growth_ohm_m2_per_cycle * n) / a,
            r_ct_ohm=p.r_ct5_ohm_m2 * growth / a,
            r_ss_ohm=self.short.leakage_ohm_m2(n, p.r_ss_onset_ohm_m2) / a,
            li_peak_As=li_peak,
        )

    def _segment_at_current(self, current_A: float) -> Segment:
        """Li moves with the current, except a shorted cell may sit still or self-discharge."""
        new_cycle = current_A < 0 and self._state.in_strip_phase
        trial = self._segment(Direction.PLATE, new_cycle)
        if not math.isfinite(trial.r_ss_ohm):
            if current_A == 0:
                return self._segment(Direction.REST, False)
            return trial if current_A < 0 else self._segment(Direction.STRIP, False)
        x0 = np.array([self._state.x_As])
        if self._cell_current_cc(trial, current_A, x0)[0] < 0:
            return trial
        trial = self._segment(Direction.STRIP, new_cycle)
        if self._cell_current_cc(trial, current_A, x0)[0] > 0:
            return trial
        return self._segment(Direction.REST, new_cycle)

    def _segment_at_voltage(self, voltage_V: float) -> Segment:
        """Plate below the lithiation branch, strip above the delithiation one, else hold."""
        x0 = np.array([self._state.x_As])
        if voltage_V < self._potential(Direction.PLATE, x0)[0]:
            return self._segment(Direction.PLATE, self._state.in_strip_phase)
        if voltage_V > self._potential(Direction.STRIP, x0)[0]:
            return self._segment(Direction.STRIP, False)
        return self._segment(Direction.REST, False)

    def _commit(self, seg: Segment, p_end_As: float, driven_strip: bool) -> None:
        st = self._state
        x_end = float(self._path(seg, np.array([p_end_As]))[0])
        filled = st.seed_filled_As
        if seg.direction is Direction.PLATE:
            filled = self.electrode.seed_filled_after(st, p_end_As)
        moved = seg.direction is not Direction.REST
        self._state = HalfCellState(
            x_As=x_end,
            seed_filled_As=filled,
            cycle=seg.cycle,
            in_strip_phase=driven_strip or (st.in_strip_phase and not seg.new_cycle),
            last_direction=seg.direction if moved else st.last_direction,
            li_peak_As=seg.li_peak_As,
        )

    # --- coulombic bookkeeping ---------------------------------------------------------------

    def _loss_fraction(self, cycle: int) -> float:
        """Fraction of the Li plated in `cycle` that stripping will never see again.

        Solved from the reference protocol (plate Q_ref, strip to 1.0 V) so that the CE of
        that protocol equals the target: cycle 1 keeps f_rev·Q_seed of the seed charge and
        loses the pristine blocking charge, later cycles re-fill the reversible seed Li
        without loss, so CE_n·Q_ref = f_rev·Q_seed + (1 − loss)·(Q_ref − f_rev·Q_seed).
        """
        p = self.params
        q_ref, q_seed = p.reference_plate_Ah_per_m2, p.q_seed_Ah_per_m2
        if cycle <= 1:
            li_plated = q_ref - q_seed - p.pristine_blocking_Ah_per_m2
            kept = (p.ice * q_ref - p.f_rev * q_seed) / li_plated
        else:
            while len(self._ce_jitter) < cycle - 1:
                self._ce_jitter.append(float(self._cycle_rng.normal(0.0, p.ce_jitter)))
            conditioning = p.ce_conditioning * math.exp(-(cycle - 1) / p.ce_conditioning_cycles)
            ce = p.ce_steady - conditioning + self._ce_jitter[cycle - 2]
            kept = (ce * q_ref - p.f_rev * q_seed) / (q_ref - p.f_rev * q_seed)
        return min(max(1.0 - kept, 0.0), 1.0)

    # --- potentials and resistances ----------------------------------------------------------

    def _potential(self, direction: Direction, x: FloatArray) -> FloatArray:
        """The WE's potential on the branch Li moves along; at rest, the last one moved along."""
        if direction is Direction.REST:
            rest_dir = self._state.last_direction
            branch = rest_dir if rest_dir is not Direction.REST else Direction.STRIP
            return self.electrode.potential(branch, x, dip=False)
        return self.electrode.potential(direction, x)

    def _rest_V(self) -> float:
        return float(self._potential(Direction.REST, np.array([self._state.x_As]))[0])

    def _r_int(self, seg: Segment, direction: Direction, x: FloatArray) -> FloatArray:
        return self.electrode.r_interface_ohm(seg, direction, x)

    def _path(self, seg: Segment, p_As: FloatArray) -> FloatArray:
        return self.electrode.path(self._state, seg, p_As)

    # --- currents and charge -------------------------------------------------------------------

    def _signed(self, seg: Segment, i_cell: FloatArray) -> FloatArray:
        """Li moves one way within a segment; at equilibrium the cell current stops."""
        if seg.direction is Direction.PLATE:
            return np.minimum(i_cell, 0.0)
        if seg.direction is Direction.STRIP:
            return np.maximum(i_cell, 0.0)
        return np.zeros_like(i_cell)

    def _cell_current_cc(self, seg: Segment, current_A: float, x: FloatArray) -> FloatArray:
        """Share of a constant current that goes through the electrode (not the short)."""
        if not math.isfinite(seg.r_ss_ohm):
            return self._signed(seg, np.full(x.shape, current_A))
        u = self._potential(seg.direction, x)
        r = self._r_int(seg, seg.direction, x)
        return self._signed(seg, (current_A * seg.r_ss_ohm - u) / (seg.r_ss_ohm + r))

    def _cell_current_cv(self, seg: Segment, voltage_V: float, x: FloatArray) -> FloatArray:
        u = self._potential(seg.direction, x)
        return self._signed(seg, (voltage_V - u) / self._r_int(seg, seg.direction, x))

    def _charge_at_current(self, seg: Segment, current_A: float, t: FloatArray) -> FloatArray:
        if seg.direction is Direction.REST:
            return np.zeros(t.shape)
        if not math.isfinite(seg.r_ss_ohm):
            return abs(current_A) * t  # the whole current passes: exact, no integration
        drive_V = abs(current_A) * seg.r_ss_ohm + self.params.blocking_V
        bound_A = drive_V / (seg.r_ss_ohm + seg.r_b_ohm)
        charge_As, _ = self._integrate(seg, lambda x: self._cell_current_cc(seg, current_A, x), t, bound_A)
        return charge_As

    def _charge_at_voltage(
        self, seg: Segment, voltage_V: float, t: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        if seg.direction is Direction.REST:
            return np.zeros(t.shape), np.zeros(t.shape)
        bound_A = (abs(voltage_V) + self.params.blocking_V + self.params.nucleation_V) / seg.r_b_ohm
        return self._integrate(seg, lambda x: self._cell_current_cv(seg, voltage_V, x), t, bound_A)

    def _integrate(
        self,
        seg: Segment,
        cell_current: Callable[[FloatArray], FloatArray],
        t: FloatArray,
        bound_A: float,
    ) -> tuple[FloatArray, FloatArray]:
        """Charge passed by times t, and its rate, when the cell current depends on the state.

        dp/dt = |i(x(p))| is autonomous, so t(p) = ∫dp/|i| on a charge grid, inverted by
        interpolation: vectorised, and a split segment follows the same trajectory. A second
        pass refines the grid to the charge actually reached. The rate is the slope of that
        interpolant, so it falls to zero where the cell reaches equilibrium.
        """
        t_end = float(t.max()) if t.size else 0.0
        p_max = bound_A * t_end
        if p_max <= 0.0:
            return np.zeros(t.shape), np.zeros(t.shape)
        grid = t_grid = np.zeros(1)
        for _ in range(2):
            grid = np.linspace(0.0, p_max, _GRID)
            inv = 1.0 / np.maximum(np.abs(cell_current(self._path(seg, grid))), _RATE_FLOOR_A)
            t_grid = np.concatenate(([0.0], np.cumsum((inv[1:] + inv[:-1]) * (grid[1] / 2.0))))
            p_max = min(p_max, float(np.interp(t_end, t_grid, grid)) * 1.02 + 2.0 * grid[1])
        cell = np.clip(np.searchsorted(t_grid, t, side="right") - 1, 0, _GRID - 2)
        speed_A = grid[1] / (t_grid[cell + 1] - t_grid[cell])
        return np.interp(t, t_grid, grid), speed_A

    def _voltage_noise(self, cycle: int, t: FloatArray) -> FloatArray:
        """0.2 mV rms normally; 1–5 mV once shorted, plus telegraph flicker while soft."""
        shorted = cycle >= self.short.onset_cycle
        sigma = self.short.noise_V if shorted else self.params.noise_V
        noise = self._noise_rng.normal(0.0, sigma, t.shape)
        if self.short.is_soft(cycle) and t.size:
            dt = np.diff(t, prepend=0.0)
            flips = self._noise_rng.poisson(self.params.telegraph_rate_per_s * np.maximum(dt, 0.0))
            level = (self._noise_rng.integers(0, 2) + np.cumsum(flips)) % 2
            noise = noise + sigma * (2.0 * level - 1.0)
        out: FloatArray = noise
        return out
