"""Anode-less full cell MgAgSn-Elastane | LPSCl | LiNbO3-NCM811 for experiments E7-E9.

A Thevenin model (OCV + R0 + R1‖C1) over an explicit lithium inventory, implementing
`CellModel`. The defaults are the full-cell table of shared/cell-physics.md §7, in one frozen
dataclass; `FullCell` explains how formation loss, fade and rate capability come out of it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

from cyclerd.simulators.cell import ComplexArray, FloatArray, LiveState
from cyclerd.simulators.ocp import ncm811_ocv, seed_potential

MAH_PER_CM2 = 10.0  # Ah/m² in one mAh/cm²
OHM_CM2 = 1e-4  # Ω·m² in one Ω·cm²
_NODE_CHARGE = 0.002  # fraction of the capacity passed between linearisation nodes


@dataclass(frozen=True)
class FullCellParams:
    """Everything the full cell needs, area-specific and in SI units (comments give lab units).

    [paper]: ICE, 70 % after 100 cycles at 0.5C, 1C = 2 mA/cm². The rest is [assumed] in
    cell-physics.md and is meant to be overridden per experiment with `with_overrides`.
    """

    name: str = "ncm811-anodeless"
    capacity_Ah_per_m2: float = 2.0 * MAH_PER_CM2  # reversible at 0.1C; defines 1C (2 mA/cm²)
    ice: float = 0.85  # formation CE at 0.1C; first charge spans capacity / ice of the cathode
    ce: float = 0.9964  # later cycles: Li inventory n+1 = ce · inventory n (0.7 ** (1 / 99))
    v_min_V: float = 2.5  # voltage window, for drivers and protocols
    v_max_V: float = 4.25
    r0_ohm_m2: float = 40 * OHM_CM2  # pellet + contacts + charge transfer
    r0_growth_per_cycle: float = 0.005
    r1_ohm_m2: float = 30 * OHM_CM2  # slow cathode / solid-diffusion polarisation
    tau1_s: float = 600.0
    rate_C: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0)  # accessible fraction vs C-rate, log-interp
    rate_fraction: tuple[float, ...] = (1.0, 0.95, 0.87, 0.75)
    seed_capacity_Ah_per_m2: float = 0.15 * MAH_PER_CM2  # Mg + Ag + Sn, 0.05 mAh/cm² each
    seed_reversible_fraction: float = 0.6  # the rest stays trapped in the alloys after cycle 1
    seed_hysteresis_V: float = 0.1  # delithiation sits above lithiation
    sei_scale_Ah_per_m2: float = 0.5 * MAH_PER_CM2  # plated charge over which first SEI forms
    void_width_Ah_per_m2: float = 0.004 * MAH_PER_CM2  # sharpness of the stripping collapse
    short_n0: float = 400.0  # Weibull onset, characteristic cycle
    short_k: float = 3.0
    short_soft_ohm_m2: float = 5e4 * OHM_CM2  # leak at onset: 0.04C at 4.25 V
    short_hard_ohm_m2: float = 2 * OHM_CM2  # hard short it decays to over ~10 cycles
    short_decay_per_cycle: float = 0.35
    short_spread: float = 0.3  # lognormal σ of the leak from cycle to cycle
    noise_V: float = 2e-4
    noise_A_per_m2: float = 5e-3  # 0.5 µA/cm² current noise under constant voltage
    short_noise_V: float = 3e-3  # extra Gaussian + telegraph noise once shorted
    r_ct_ohm_m2: float = 10 * OHM_CM2  # the part of R0 that shows as a semicircle in EIS
    q_dl_F_per_m2: float = 2e-5 / 1e-4  # CPE Q in F·s^(α-1)/m² (2e-5 per cm²)
    alpha_dl: float = 0.85
    warburg_ohm_m2_sqrt_s: float = 5 * OHM_CM2  # σ_W of the diffusion tail (DC limit stays R1)
    impedance_noise: float = 2e-3  # relative, per frequency point

    def __post_init__(self) -> None:
        rates, frac = self.rate_C, self.rate_fraction
        checks = (
            (self.capacity_Ah_per_m2 > 0 and self.seed_capacity_Ah_per_m2 >= 0, "capacities > 0"),
            (0 < self.ice <= 1 and 0 < self.ce <= 1, "ice and ce in (0, 1]"),
            (len(rates) == len(frac) > 0, "rate_C and rate_fraction of equal, non-zero length"),
            (all(a < b for a, b in itertools.pairwise((0.0, *rates))), "rate_C rising, > 0"),
            (all(0 < f <= 1 for f in frac), "rate_fraction in (0, 1]"),
            (0 <= self.seed_reversible_fraction <= 1, "seed_reversible_fraction in [0, 1]"),
            (min(self.r1_ohm_m2, self.tau1_s, self.short_n0, self.short_k) > 0, "r1, tau1, n0, k > 0"),
            (0 <= self.r_ct_ohm_m2 < self.r0_ohm_m2, "0 <= r_ct_ohm_m2 < r0_ohm_m2 (R_ct is in R0)"),
        )
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError(f"full-cell parameters {self.name!r} need: " + "; ".join(problems))

    def with_overrides(self, **changes: object) -> FullCellParams:
        """A copy with some values changed; unknown names are an error, not silently ignored."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown full-cell parameter(s) {unknown}; known: {sorted(known)}")
        return replace(self, **changes)  # type: ignore[arg-type]


PRESETS = MappingProxyType({"ncm811-anodeless": FullCellParams()})


@dataclass(frozen=True)
class _State:
    """What the cell remembers between segments; everything else is a function of it."""

    soc: float = 0.0  # cathode: delithiated fraction of its first-charge capacity
    anode_As: float = 0.0  # Li on the negative side: alloyed in the seeds + plated metal
    plated_total_As: float = 0.0  # all charge ever plated (the first SEI saturates with it)
    deposit_As: float = 0.0  # anode Li when plating last stopped (void-limited stripping)
    v1_V: float = 0.0
    last_dir: int = 0  # sign of the last cell current: picks the hysteresis branch at rest
    last_step: int = 0  # sign of the last charge/discharge step asked for: counts cycles
    cycle: int = 0  # completed charge/discharge cycles (formation is cycle 0)


class _Node(NamedTuple):
    """A stretch of a constant-voltage or shorted segment over which the EMF is linear."""

    current_A: float  # at its start
    f: float  # accessible fraction while stripping
    r_ohm: float  # effective series resistance (r_s plus any feedback through f)
    emf_V: float
    slope_V_per_As: float
    charge_As: float  # how much charge it may pass


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
        p, to_As = params, area_m2 * 3600.0
        self.nominal_capacity_Ah = p.capacity_Ah_per_m2 * area_m2
        self._q_nom_As = p.capacity_Ah_per_m2 * to_As
        self._q_cat_As = self._q_nom_As / p.ice
        self._q_seed_As = p.seed_capacity_Ah_per_m2 * to_As
        self._floor_As = (1 - p.seed_reversible_fraction) * self._q_seed_As
        self._void_As = p.void_width_Ah_per_m2 * to_As
        self._sei_scale_As = p.sei_scale_Ah_per_m2 * to_As
        needed = self._q_cat_As - self._floor_As - self._q_nom_As * (2 - p.ce)
        saturation = -math.expm1(-self._q_cat_As / self._sei_scale_As)
        self._sei_As = max(needed, 0.0) / saturation
        if self._sei_As >= self._sei_scale_As:
            raise ValueError(
                f"FullCell {p.name!r}: the first SEI ({self._sei_As / to_As / MAH_PER_CM2:.3f} "
                "mAh/cm²) would take more Li than is plated; raise sei_scale_Ah_per_m2 or ice"
            )
        self._r1_ohm = p.r1_ohm_m2 / area_m2
        self._c1_F = p.tau1_s / self._r1_ohm
        self.short_onset_cycle = p.short_n0 * float(np.random.default_rng([seed, 1]).weibull(p.short_k))
        self._state = _State()

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
    ) -> tuple[FloatArray, FloatArray, _State]:
        """Voltage, current and the state at t_s[-1] for one constant-current/voltage segment."""
        t = np.asarray(t_s, dtype=np.float64)
        if t.size and (t[0] < 0 or np.any(np.diff(t) < 0)):
            raise ValueError("FullCell: times must be >= 0 and increasing (seconds from now)")
        st = self._state
        if hold_voltage:
            e_rest = float(self._emf(st, 0.0, 0, 1.0))
            st = self._begin(st, int(np.sign(setpoint - e_rest - st.v1_V)))
            r_ss = self._rss(st.cycle)
            i_cell, end = self._nodes(st, setpoint, self._r0(st.cycle), t)
            return np.full_like(t, setpoint), i_cell + setpoint / r_ss, end
        direction = int(np.sign(setpoint))
        st = self._begin(st, direction)
        r_ss = self._rss(st.cycle)
        if math.isfinite(r_ss):  # leak in parallel: V = (I - I_cell) · R_ss
            i_cell, end = self._nodes(st, setpoint * r_ss, r_ss + self._r0(st.cycle), t)
            return (setpoint - i_cell) * r_ss, np.full_like(t, setpoint), end
        f = self._rate_fraction(setpoint)
        emf = self._emf(st, setpoint * t, direction, f)
        decay = np.exp(-t / self.params.tau1_s)
        v1 = st.v1_V * decay + setpoint * self._r1_ohm * (1 - decay)
        horizon = float(t[-1]) if t.size else 0.0
        end = self._after(st, setpoint * horizon, f, float(v1[-1]) if t.size else st.v1_V)
        return emf + setpoint * self._r0(st.cycle) + v1, np.full_like(t, setpoint), end

    def _nodes(self, st: _State, v_src: float, r_s: float, t: FloatArray) -> tuple[FloatArray, _State]:
        """Cell current on `t` for I = (v_src - EMF - V1)/r_s, and the state at t[-1].

        Serves constant voltage (v_src = V, r_s = R0) and a shorted cell under constant current
        (Norton-to-Thevenin of the leak). Within a node the EMF is linear in charge, so the
        two-state ODE (charge, V1) is solved exactly; nodes pass ~0.2 % of the capacity, so a
        1 h hold takes a few dozen of them instead of 3600 time steps. While plating, each
        node's line starts where the last one ended (continuous, monotonic current) and aims at
        the true EMF one node ahead (errors do not accumulate); while stripping, the current
        is solved with the rate-dependent reach at every node (`_strip_node`).
        """
        c1, tau = self._c1_F, self.params.tau1_s
        # EMF errors matter as error/r_s: behind a large leak resistance nodes can be longer.
        node_As = _NODE_CHARGE * self._q_nom_As * min((r_s / self._r0(0)) ** 0.5, 20.0)
        horizon = float(t[-1]) if t.size else 0.0
        # While plating, the EMF depends only on the charge passed: tabulate it once so that
        # the node loop reads plain Python floats (q < 0 once the table no longer applies).
        h = max(1.25 - st.soc, 0.05) * self._q_cat_As / 4000
        table = self._emf(st, h * np.arange(4001.0), 1, 1.0).tolist()
        rows: list[tuple[float, float, float, float, float, float, float]] = []
        t0, q, i_end = 0.0, 0.0, 0.0
        e = float(self._emf(st, 0.0, 0, 1.0))
        while True:
            if q < 0:  # off the table, the carried line says nothing: start from the state
                e = float(self._emf(st, 0.0, 0, 1.0))
            i_now = (v_src - e - st.v1_V) / r_s
            node: _Node | None = None
            if i_now < 0:
                node = self._strip_node(st, v_src, r_s, i_end or i_now, node_As)
            elif i_now > 0:
                # Aim at least one node's charge ahead: a chord over a tiny step would turn
                # the small error carried in `e` into a huge slope.
                aim = max(i_now * min(max(node_As / i_now, 1.0), 300.0), node_As)
                if q >= 0 and (q + aim) / h < 4000:
                    ends = [_lookup(table, q / h), _lookup(table, (q + aim) / h)]
                else:
                    q, ends = -1.0, self._emf(st, np.array([0.0, aim]), 1, 1.0).tolist()
                e = e if rows and q >= 0 else ends[0]
                i_now = (v_src - e - st.v1_V) / r_s
                g = max((ends[1] - e) / aim, 1e-12)  # the EMF never falls with charge
                node = _Node(i_now, 1.0, r_s, e, g, node_As) if i_now > 0 else None
            if node is None:  # neither plating nor stripping can flow: open circuit
                node, q = _Node(0.0, 1.0, 1e12, e, 1e-12, node_As), -1.0
            i_now, f, r, e, g, node_q = node
            step = min(max(node_q / abs(i_now), 1.0), 300.0) if i_now else 300.0
            drive = i_now * r + st.v1_V  # I = (drive - g·Δq - V1) / r within the node
            lam1, lam2 = _eigen(g, r, c1, tau)
            rows.append((t0, drive, g, st.v1_V, lam1, lam2, r))
            step = min(step, horizon - t0)
            if step <= 0:
                break
            dq_a, v1_a = _linear_solution(step, drive, g, st.v1_V, lam1, lam2, r, c1, tau)
            dq, v1 = float(dq_a), float(v1_a)
            i_end = (drive - g * dq - v1) / r
            st = self._after(st, dq, f, v1)
            q = q + dq if q >= 0 and dq > 0 else -1.0
            e += g * dq
            t0 = t0 + step if horizon - t0 - step > 1e-9 else horizon
        rows_a = np.array(rows)
        k = np.clip(np.searchsorted(rows_a[:, 0], t, side="right") - 1, 0, len(rows) - 1)
        t_k, drive_k, g_k, v1_k, l1, l2, r_k = rows_a[k].T
        dq_t, v1_t = _linear_solution(t - t_k, drive_k, g_k, v1_k, l1, l2, r_k, c1, tau)
        return (drive_k - g_k * dq_t - v1_t) / r_k, st

    def _strip_node(self, st: _State, v_src: float, r_s: float, guess: float, node_As: float) -> _Node | None:
        """A node while stripping, or None if no Li can be stripped at this voltage."""
        solved = self._stripping(st, v_src, r_s, guess)
        if solved is None:
            return None
        i_now, f, de_di = solved
        # Tangent, not chord: the EMF bends too sharply near the end of reach, so nodes walk
        # through that knee in small steps and stride where it is flat.
        tiny, void = -1e-3 * self._void_As, self._void_As
        e, e_tiny = self._emf(st, np.array([0.0, tiny]), -1, f).tolist()
        g = max((e_tiny - e) / tiny, 1e-12)
        node_q = min(max(0.005 / g, 0.25 * void), 20 * node_As)
        reach = st.anode_As - self._floor_As - (1 - f) * (st.deposit_As - self._floor_As)
        if de_di > r_s:  # pinned at the edge of reach, f following I: watch I instead
            node_q = max(node_q, min(0.05 * abs(i_now) * (r_s + de_di) / g, 20 * node_As))
            reach = st.anode_As - self._floor_As  # the knee that ends it, at f = 1
        if reach > -4 * void:
            node_q = min(node_q, max(reach - 4 * void, 0.25 * void))
        return _Node(i_now, f, r_s + de_di, e, g, node_q)  # the feedback acts as resistance

    def _stripping(
        self, st: _State, v_src: float, r_s: float, guess: float
    ) -> tuple[float, float, float] | None:
        """Current I < 0, accessible fraction f(I) and dEMF/dI with I = (v_src - EMF(f(I)) - V1)/r_s.

        The residual EMF(f(I)) + I·r_s + V1 - v_src rises with I, so the root is unique in
        [I at f = 1, 0] (None if there is none): safeguarded Newton from `guess`.
        """

        def emf(i: float) -> float:
            return float(self._emf(st, 0.0, -1, self._rate_fraction(i)))

        low, high = (v_src - emf(0.0) - st.v1_V) / r_s, -1e-15
        if low >= 0:
            return None
        if self._rate_fraction(low) == 1.0:  # slow enough to reach everything: no feedback
            return low, 1.0, 0.0
        i, slope = min(max(guess, low), high), r_s
        for _ in range(40):
            residual = emf(i) + i * r_s + st.v1_V - v_src
            if abs(residual) < 1e-9:
                break
            low, high = (i, high) if residual < 0 else (low, i)
            di = 1e-4 * i
            slope = (emf(i + di) - emf(i)) / di + r_s
            i = i - residual / slope
            if not low < i < high:
                i = 0.5 * (low + high)
        return i, self._rate_fraction(i), slope - r_s

    def _emf(self, st: _State, dq: float | FloatArray, direction: int, f: float) -> FloatArray:
        """EMF after passing charge `dq` (signed, As) in `direction` from `st`."""
        p = self.params
        dq = np.asarray(dq, dtype=np.float64)
        if direction > 0:
            lost = np.exp(-st.plated_total_As / self._sei_scale_As) - np.exp(
                -(st.plated_total_As + dq) / self._sei_scale_As
            )
            anode = st.anode_As + dq - self._sei_As * lost
        else:
            anode = st.anode_As + (dq * (1 + (1 - p.ce) / f) if direction < 0 else 0 * dq)
        stripping = direction < 0 or (direction == 0 and st.last_dir < 0)
        e = ncm811_ocv(st.soc + dq / self._q_cat_As)
        fill = anode / max(self._q_seed_As, 1e-30)
        if np.min(fill, initial=np.inf) < 1.3:  # beyond, the seed curve is 0 V to < 1e-8 V
            e = e - seed_potential(fill, p.seed_hysteresis_V if stripping else 0.0)
        if stripping:  # no reachable Li, no EMF: the cell collapses instead of running on
            reach = anode - self._floor_As - (1 - f) * (st.deposit_As - self._floor_As)
            e = e * 0.5 * (1 + np.tanh(reach / (2 * self._void_As)))
        return e

    def _after(self, st: _State, dq: float, f: float, v1_V: float) -> _State:
        """The state after passing `dq` (As) at accessible fraction `f`, V1 ending at `v1_V`."""
        soc = st.soc + dq / self._q_cat_As
        if dq > 0:
            total = st.plated_total_As + dq
            lost = self._sei_As * (
                math.exp(-st.plated_total_As / self._sei_scale_As) - math.exp(-total / self._sei_scale_As)
            )
            anode = st.anode_As + dq - lost
            return replace(
                st, soc=soc, anode_As=anode, plated_total_As=total, deposit_As=anode, v1_V=v1_V, last_dir=1
            )
        if dq < 0:
            anode = st.anode_As + dq * (1 + (1 - self.params.ce) / f)
            return replace(st, soc=soc, anode_As=anode, v1_V=v1_V, last_dir=-1)
        return replace(st, v1_V=v1_V)

    def _begin(self, st: _State, direction: int) -> _State:
        """A charge after a discharge starts the next cycle (R0 growth, short evolution)."""
        if direction > 0 and st.last_step < 0:
            return replace(st, cycle=st.cycle + 1, last_step=direction)
        return replace(st, last_step=direction or st.last_step)

    def _rate_fraction(self, current_A: float) -> float:
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

    def _shorted(self, st: _State) -> bool:
        return st.cycle >= math.ceil(self.short_onset_cycle)

    def _noise(self, n: int, shorted: bool, sigma: float, ohm: float = 1.0) -> FloatArray:
        """Gaussian noise; once shorted, more of it (short_noise_V / `ohm`) and telegraph jumps."""
        if not shorted:
            return self._noise_rng.normal(0.0, sigma, n) if sigma > 0 else np.zeros(n)
        extra = self.params.short_noise_V / ohm
        telegraph = np.cumsum(self._noise_rng.random(n) < 0.02) % 2 - 0.5
        return self._noise_rng.normal(0.0, sigma + extra, n) + 2 * extra * telegraph


def _lookup(table: list[float], x: float) -> float:
    """Linear interpolation in `table` at fractional index `x`."""
    i = min(int(x), len(table) - 2)
    return table[i] + (table[i + 1] - table[i]) * (x - i)


def _eigen(g: float, r_s: float, c1: float, tau: float) -> tuple[float, float]:
    """Eigenvalues of the (charge, V1) system: real and distinct (an RC ladder cannot ring)."""
    trace = -g / r_s - 1 / (r_s * c1) - 1 / tau
    det = g / (r_s * tau)
    big = (trace - math.sqrt(max(trace * trace - 4 * det, 0.0))) / 2
    return big, det / big


def _linear_solution(
    dt: FloatArray | float,
    drive: FloatArray | float,
    g: FloatArray | float,
    v1_0: FloatArray | float,
    lam1: FloatArray | float,
    lam2: FloatArray | float,
    r_s: FloatArray | float,
    c1: float,
    tau: float,
) -> tuple[FloatArray, FloatArray]:
    """Charge passed and V1 after `dt` for dq/dt = (drive - g·q - V1)/r_s, dV1/dt = I/c1 - V1/tau.

    Exact (matrix exponential of the 2x2 system via its eigenvalues, both non-zero), so it is
    vectorised over any number of grid points and needs no time step.
    """
    a00, a01 = -g / r_s, -1 / r_s
    a10, a11 = a00 / c1, a01 / c1 - 1 / tau
    b0, b1 = drive / r_s, drive / (r_s * c1)
    e1, e2 = np.exp(lam1 * dt), np.exp(lam2 * dt)
    psi1, psi2 = np.expm1(lam1 * dt) / lam1, np.expm1(lam2 * dt) / lam2
    gap = lam1 - lam2
    c0, c_1 = (lam1 * e2 - lam2 * e1) / gap, (e1 - e2) / gap
    d0, d1 = (lam1 * psi2 - lam2 * psi1) / gap, (psi1 - psi2) / gap
    dq = c_1 * a01 * v1_0 + d0 * b0 + d1 * (a00 * b0 + a01 * b1)
    v1 = (c0 + c_1 * a11) * v1_0 + d0 * b1 + d1 * (a10 * b0 + a11 * b1)
    return np.asarray(dq, dtype=np.float64), np.asarray(v1, dtype=np.float64)


def _r_cpe(r_ohm: float, q: float, alpha: float, jw: ComplexArray) -> ComplexArray:
    """R in parallel with a constant-phase element: R / (1 + R·Q·(jω)^α)."""
    return np.asarray(r_ohm / (1 + r_ohm * q * jw**alpha), dtype=np.complex128)
