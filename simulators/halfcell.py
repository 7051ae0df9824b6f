"""Seed layer | LPSCl | Li half-cell: voltage, current, coulombic bookkeeping and impedance.

The state is the Li the working electrode can give back (reversible seed alloy plus plated
Li), the contact voids have taken and a few cycle counters. Voltage = seed plateaus or Li at
0 V, plus a linear interface resistance, with a parallel leakage once the cell shorts
(cell-physics.md §4 (a)–(e)). How CE and the short onset answer the protocol's current density
and areal capacity is in docs/simulator.md.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import numpy as np

from cyclerd.simulators.cell import ComplexArray, FloatArray, LiveState
from cyclerd.simulators.halfcell_state import Direction, HalfCellState, Segment
from cyclerd.simulators.impedance import CircuitParams, circuit_impedance
from cyclerd.simulators.presets_halfcell import HalfCellParams, ShortSchedule, preset
from cyclerd.simulators.seed_electrode import AS_PER_AH, SeedElectrode

_GRID = 8192  # most points of the charge grid when the cell current must be integrated
_MIN_GRID = 512  # fewest: a short hold spans a sliver of one plateau
_POINTS_PER_FEATURE = 16  # grid points across the narrowest feature of the potential

Trajectory = tuple[FloatArray, FloatArray]  # (charge grid, time to reach each charge)
_RATE_FLOOR_A = 1e-15  # below this the cell is at equilibrium: the time to move is ~forever
_MIN_RCT_FACTOR = 0.2  # keeps R_ct(n) positive for the fast-growing seeds before cycle 5
_HOLD_STRIP_MIN_Ah_per_m2 = 0.01  # 0.001 mAh/cm²: less, and a held voltage is no strip step


class HalfCell(LiveState):
    """A seeded current collector vs Li on LPSCl; implements `CellModel`.

    Positive current strips Li off the working electrode; the voltage is WE vs Li.
    Coulombic efficiency is not imposed on the data: plating loses a fraction of its Li
    (and, in cycle 1, part of the seed alloy stays lithiated), and stripping can only return
    what is left, so CE is whatever charge the cut-off lets through. The short starts when
    plating meets an interface whose voids have raised the local current density above the
    CCD; each cell's void rate comes from its Weibull draw (`ShortSchedule`).

    Random streams derive from (seed, preset name): two presets with one seed draw apart.
    """

    LIVE = ("_state", "_cycle_rng", "_noise_rng", "_ce_jitter")  # the rest is set once, in __init__
    CACHES = ("_last_hold",)

    def __init__(self, params: HalfCellParams | str, area_m2: float = 0.785e-4, seed: int = 0) -> None:
        self.params = preset(params) if isinstance(params, str) else params
        p = self.params
        self._area_m2 = area_m2
        self.electrode = SeedElectrode.for_area(p, area_m2)
        # Separate streams: cycle outcomes must not depend on how often the voltage is read.
        root = np.random.default_rng([seed, zlib.crc32(p.name.encode())])
        short_rng, self._cycle_rng, self._noise_rng = root.spawn(3)
        self.short = ShortSchedule.draw(p, short_rng)
        self._void_rate = self._void_rate_for(self.short.reference_onset_cycle)
        self._ce_jitter: list[float] = []
        self._last_hold: tuple[HalfCellState, float, float, Trajectory | None] | None = None
        self._state = HalfCellState(x_As=self.electrode.pristine_x_As)

    @property
    def area_m2(self) -> float:
        return self._area_m2

    @property
    def state(self) -> HalfCellState:
        return self._state

    @property
    def short_onset_cycle(self) -> int | None:
        """The cycle in which this cell shorted, or None while it has not."""
        return self._state.short_cycle or None

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
        return v + self._voltage_noise(seg, t)

    def advance_at_current(self, current_A: float, duration_s: float) -> None:
        seg = self._segment_at_current(current_A)
        p_end = self._charge_at_current(seg, current_A, np.array([duration_s]))[0]
        self._commit(seg, float(p_end), duration_s, driven_strip=current_A > 0)

    def current_at_voltage(self, voltage_V: float, t_s: FloatArray) -> FloatArray:
        t = np.asarray(t_s, dtype=np.float64)
        seg = self._segment_at_voltage(voltage_V)
        # The current is the slope of the charge actually passed, so it integrates to it.
        _, speed_A = self._charge_at_voltage(seg, voltage_V, t)
        sign = -1.0 if seg.direction is Direction.PLATE else 1.0
        x0 = np.array([self._state.x_As])
        r_eff = 1.0 / (1.0 / self._r_int(seg, seg.direction, x0)[0] + 1.0 / seg.r_ss_ohm)
        leak_A = voltage_V / seg.r_ss_ohm
        current_A: FloatArray = sign * speed_A + leak_A + self._voltage_noise(seg, t) / r_eff
        return current_A

    def advance_at_voltage(self, voltage_V: float, duration_s: float) -> None:
        seg = self._segment_at_voltage(voltage_V)
        p_end = self._charge_at_voltage(seg, voltage_V, np.array([duration_s]))[0][0]
        # A hold that strips next to nothing (an EIS at the OCV) does not end a plating phase.
        q_min_As = _HOLD_STRIP_MIN_Ah_per_m2 * self._area_m2 * AS_PER_AH
        driven = seg.direction is Direction.STRIP and p_end > q_min_As
        self._commit(seg, float(p_end), duration_s, driven_strip=driven)

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
            # Li behind the interface is a reservoir: without it the tail is the blocking
            # double layer; trapped alloy Li moves that turn below the measured window.
            reservoir_F=self.electrode.c_block_F + self.electrode.li_held_As(st) / p.reservoir_window_V,
        )
        z = circuit_impedance(frequencies_Hz, circuit)
        shape = z.shape
        noise = self._noise_rng.normal(size=shape) + 1j * self._noise_rng.normal(size=shape)
        return z + p.eis_noise_fraction * np.abs(z) * noise

    # --- which way, and with which cycle's values --------------------------------------------

    def _segment(self, direction: Direction, new_cycle: bool, j_A_per_m2: float = 0.0) -> Segment:
        """The cell under one drive; `j_A_per_m2` is the plating current density it is driven at
        (0 when held at a voltage: then plating loses as at the reference current and cannot
        start a short)."""
        st, p, a = self._state, self.params, self._area_m2
        n = st.cycle + 1 if new_cycle else st.cycle
        growth = max(1.0 + p.r_ct_growth_per_cycle * (n - 5), _MIN_RCT_FACTOR)
        li_peak = st.li_peak_As
        if direction is Direction.STRIP and st.last_direction is not Direction.STRIP:
            li_peak = max(st.x_As - self.electrode.cap_As, 0.0)
        short_cycle = st.short_cycle
        # Voids concentrate the plating current on the contact left: a dendrite starts once
        # the local current density reaches the critical one (Kasemchainan 2019).
        local_A_per_m2 = j_A_per_m2 / max(1.0 - st.contact_loss, 1e-12)
        if direction is Direction.PLATE and not short_cycle and 0 < p.ccd_A_per_m2 <= local_A_per_m2:
            short_cycle = max(n, 1)
        sei_As, loss = self._losses(n, j_A_per_m2 if direction is Direction.PLATE else 0.0)
        q_ref_As = p.reference_plate_Ah_per_m2 * a * AS_PER_AH
        return Segment(
            direction=direction,
            cycle=n,
            new_cycle=new_cycle,
            loss_fraction=loss,
            sei_charge_As=sei_As,
            sei_done_As=0.0 if new_cycle else st.sei_As,
            r_contact_ohm_per_As=p.r_ct_plating_rise_ohm_m2 / a / q_ref_As,
            short_cycle=short_cycle,
            r_b_ohm=p.r_b_ohm_m2 * (1.0 + p.r_b_growth_per_cycle * n) / a,
            r_sei_ohm=(p.r_sei_ohm_m2 + p.r_sei_growth_ohm_m2_per_cycle * n) / a,
            r_ct_ohm=p.r_ct5_ohm_m2 * growth / a,
            r_ss_ohm=self.short.leakage_ohm_m2(n, short_cycle, p.r_ss_onset_ohm_m2) / a,
            li_peak_As=li_peak,
        )

    def _segment_at_current(self, current_A: float) -> Segment:
        """Li moves with the current, except a shorted cell may sit still or self-discharge."""
        new_cycle = current_A < 0 and self._state.in_strip_phase
        j = -current_A / self._area_m2 if current_A < 0 else 0.0
        trial = self._segment(Direction.PLATE, new_cycle, j)
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
            # No current density to judge by: the CCD is a galvanostatic criterion, and a held
            # step's first instant (a staircase CV's) says nothing of sustained plating.
            return self._segment(Direction.PLATE, self._state.in_strip_phase)
        if voltage_V > self._potential(Direction.STRIP, x0)[0]:
            return self._segment(Direction.STRIP, False)
        return self._segment(Direction.REST, False)

    def _commit(self, seg: Segment, p_end_As: float, duration_s: float, driven_strip: bool) -> None:
        st = self._state
        x_end = float(self._path(seg, np.array([p_end_As]))[0])
        filled, sei, contact_loss = st.seed_filled_As, seg.sei_done_As, st.contact_loss
        if seg.direction is Direction.PLATE:
            filled = self.electrode.seed_filled_after(st, p_end_As)
            sei = self.electrode.sei_after(st, seg, p_end_As)
        elif seg.direction is Direction.STRIP and duration_s > 0:
            contact_loss += self._voids(p_end_As, p_end_As / duration_s / self._area_m2)
        moved = seg.direction is not Direction.REST
        self._state = HalfCellState(
            x_As=x_end,
            seed_filled_As=filled,
            cycle=seg.cycle,
            in_strip_phase=driven_strip or (st.in_strip_phase and not seg.new_cycle),
            last_direction=seg.direction if moved else st.last_direction,
            li_peak_As=seg.li_peak_As,
            sei_As=sei,
            contact_loss=contact_loss,
            short_cycle=seg.short_cycle if moved else st.short_cycle,
        )

    # --- how the protocol wears the interface ------------------------------------------------

    def _strip_factor(self, j_A_per_m2: float) -> float:
        """Voids per stripped charge at current density j, relative to the reference current.

        Li creep and diffusion refill the interface at up to `critical_strip_A_per_m2`; what
        is stripped faster leaves voids, the share 1 − j_cs/j of the charge (Kasemchainan 2019).
        """
        p = self.params
        share = max(1.0 - p.critical_strip_A_per_m2 / max(j_A_per_m2, 1e-30), 0.0)
        return share / (1.0 - p.critical_strip_A_per_m2 / p.reference_current_A_per_m2)

    def _voids(self, stripped_As: float, j_A_per_m2: float) -> float:
        """Contact fraction lost by stripping `stripped_As` at current density j."""
        q_ref_As = self.params.reference_plate_Ah_per_m2 * self._area_m2 * AS_PER_AH
        return self._void_rate * stripped_As / q_ref_As * self._strip_factor(j_A_per_m2)

    def _void_rate_for(self, onset_cycle: int) -> float:
        """Contact lost per reference capacity stripped, such that the reference protocol
        shorts in `onset_cycle`: its plating meets the CCD after cycles 1..n−1 stripped about
        ICE + (n − 2)·CE_ss reference capacities (half a cycle of margin either way)."""
        p = self.params
        allowed = 1.0 - p.reference_current_A_per_m2 / p.ccd_A_per_m2
        strips = p.ice + (max(onset_cycle, 2) - 2.5) * p.ce_steady
        return allowed / max(strips, 0.1)

    # --- coulombic bookkeeping ---------------------------------------------------------------

    def _loss_fraction(self, cycle: int) -> float:
        """Fraction of the Li plated in `cycle` that the reference protocol never gets back.

        Solved from the reference protocol (plate Q_ref, strip to 1.0 V) so that the CE of
        that protocol equals the target: cycle 1 keeps f_rev·Q_seed of the seed charge and
        loses the pristine blocking charge, later cycles re-fill the reversible seed Li
        without loss, so CE_n·Q_ref = f_rev·Q_seed + (1 − loss)·(Q_ref − f_rev·Q_seed).
        """
        p = self.params
        q_ref, q_seed = p.reference_plate_Ah_per_m2, p.q_seed_Ah_per_m2
        if cycle <= 1:
            kept = (p.ice * q_ref - p.f_rev * q_seed) / self._li_plated_Ah_per_m2(cycle)
        else:
            while len(self._ce_jitter) < cycle - 1:
                self._ce_jitter.append(float(self._cycle_rng.normal(0.0, p.ce_jitter)))
            conditioning = p.ce_conditioning * math.exp(-(cycle - 1) / p.ce_conditioning_cycles)
            ce = p.ce_steady - conditioning + self._ce_jitter[cycle - 2]
            kept = (ce * q_ref - p.f_rev * q_seed) / self._li_plated_Ah_per_m2(cycle)
        return min(max(1.0 - kept, 0.0), 1.0)

    def _li_plated_Ah_per_m2(self, cycle: int) -> float:
        """Li metal plated in a cycle of the reference protocol (after the seed charge)."""
        p = self.params
        if cycle <= 1:
            return p.reference_plate_Ah_per_m2 - p.q_seed_Ah_per_m2 - p.pristine_blocking_Ah_per_m2
        return p.reference_plate_Ah_per_m2 - p.f_rev * p.q_seed_Ah_per_m2

    def _losses(self, cycle: int, j_A_per_m2: float) -> tuple[float, float]:
        """(SEI charge in A·s, dead-Li fraction) of a cycle plated at current density j.

        The reference loss is split into an SEI charge formed on the fresh deposit once per
        cycle (`sei_loss_share` of it) and a fraction of the rest: so CE rises with areal
        capacity. Both scale with the deposit's surface, which grows with the plating current
        density (nucleus size ∝ 1/η, Pei et al. 2017): m = j/j_ref, the dead-Li fraction as
        1 − (1 − f)^m so that it stays below 1. Held-voltage plating counts as j_ref.
        """
        p = self.params
        loss = self._loss_fraction(cycle)
        li_As = self._li_plated_Ah_per_m2(cycle) * self._area_m2 * AS_PER_AH
        sei_As = p.sei_loss_share * loss * li_As
        dead = (loss * li_As - sei_As) / (li_As - sei_As)
        m = j_A_per_m2 / p.reference_current_A_per_m2 if j_A_per_m2 > 0 else 1.0
        return sei_As * m, 1.0 - (1.0 - dead) ** m

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
        t_end = float(t.max()) if t.size else 0.0
        # A hold is asked for its current and then advanced over the same time (every point of
        # a sweep is): the second question has the first one's answer.
        key = (self._state, voltage_V, t_end)
        if self._last_hold is not None and self._last_hold[0] is key[0] and self._last_hold[1:3] == key[1:]:
            return _on_trajectory(self._last_hold[3], t)
        u0 = abs(float(self._potential(seg.direction, np.array([self._state.x_As]))[0]))
        bound_A = (abs(voltage_V) + max(u0, self.params.blocking_V) + self.params.nucleation_V) / seg.r_b_ohm
        trajectory = self._trajectory(seg, lambda x: self._cell_current_cv(seg, voltage_V, x), t_end, bound_A)
        self._last_hold = (*key, trajectory)
        return _on_trajectory(trajectory, t)

    def _integrate(
        self,
        seg: Segment,
        cell_current: Callable[[FloatArray], FloatArray],
        t: FloatArray,
        bound_A: float,
    ) -> tuple[FloatArray, FloatArray]:
        """Charge passed by times t, and its rate, when the cell current depends on the state."""
        t_end = float(t.max()) if t.size else 0.0
        return _on_trajectory(self._trajectory(seg, cell_current, t_end, bound_A), t)

    def _trajectory(
        self,
        seg: Segment,
        cell_current: Callable[[FloatArray], FloatArray],
        t_end: float,
        bound_A: float,
    ) -> Trajectory | None:
        """The charge grid and the time to reach each charge, up to t_end; None if nothing passes.

        dp/dt = |i(x(p))| is autonomous, so t(p) = ∫dp/|i| on a charge grid, inverted by
        interpolation: vectorised, and a split segment follows the same trajectory. A coarse
        pass over everything the bound allows finds about where t_end is reached; the grid is
        then laid, as fine as the potential's features need, up to just past that charge (and
        widened should the charge run on past it). The rate is the slope of the interpolant, so
        it falls to zero where the cell reaches equilibrium.
        """
        ceiling = bound_A * t_end
        if ceiling <= 0.0:
            return None
        p_max, points, fine = ceiling, _MIN_GRID, False
        while True:
            grid = np.linspace(0.0, p_max, points)
            inv = 1.0 / np.maximum(np.abs(cell_current(self._path(seg, grid))), _RATE_FLOOR_A)
            t_grid = np.concatenate(([0.0], np.cumsum((inv[1:] + inv[:-1]) * (grid[1] / 2.0))))
            if fine and (t_grid[-1] >= t_end or p_max >= ceiling):
                return grid, t_grid
            reached = float(np.interp(t_end, t_grid, grid))
            p_max = min(ceiling, 2.0 * p_max if fine else reached * 1.02 + 2.0 * grid[1])
            wanted = _POINTS_PER_FEATURE * p_max / self.electrode.feature_As
            points, fine = int(min(max(wanted, _MIN_GRID), _GRID)), True

    def _voltage_noise(self, seg: Segment, t: FloatArray) -> FloatArray:
        """0.2 mV rms normally; 1–5 mV once shorted, plus telegraph flicker while soft."""
        shorted = 0 < seg.short_cycle <= seg.cycle
        sigma = self.short.noise_V if shorted else self.params.noise_V
        noise = self._noise_rng.normal(0.0, sigma, t.shape)
        if self.short.is_soft(seg.cycle, seg.short_cycle) and t.size:
            dt = np.diff(t, prepend=0.0)
            flips = self._noise_rng.poisson(self.params.telegraph_rate_per_s * np.maximum(dt, 0.0))
            level = (self._noise_rng.integers(0, 2) + np.cumsum(flips)) % 2
            noise = noise + sigma * (2.0 * level - 1.0)
        out: FloatArray = noise
        return out


def _on_trajectory(trajectory: Trajectory | None, t: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Charge passed by times t along a `_trajectory`, and its rate (the interpolant's slope)."""
    if trajectory is None:
        return np.zeros(t.shape), np.zeros(t.shape)
    grid, t_grid = trajectory
    cell = np.clip(np.searchsorted(t_grid, t, side="right") - 1, 0, len(grid) - 2)
    speed_A = grid[1] / (t_grid[cell + 1] - t_grid[cell])
    return np.interp(t, t_grid, grid), speed_A
