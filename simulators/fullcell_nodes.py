"""Segments of the full cell whose current depends on its own EMF, solved node by node.

Constant voltage, and constant current into a shorted cell, make the cell current follow the
EMF. Over a short stretch of charge (a node) the EMF is linear, so the (charge, V1) system is
solved exactly there; `NodeSolver` strings the nodes together and samples any time grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from cyclerd.simulators.cell import FloatArray
from cyclerd.simulators.fullcell_inventory import FullCellState, LithiumInventory

_NODE_CHARGE = 0.002  # fraction of the capacity passed between linearisation nodes


class _Node(NamedTuple):
    """A stretch of a constant-voltage or shorted segment over which the EMF is linear."""

    current_A: float  # at its start
    f: float  # accessible fraction while stripping
    r_ohm: float  # effective series resistance (r_s plus any feedback through f)
    emf_V: float
    slope_V_per_As: float
    charge_As: float  # how much charge it may pass


@dataclass(frozen=True)
class NodeSolver:
    """Constant voltage, or constant current through a leak, node by node (see `cell_current`)."""

    inventory: LithiumInventory
    c1_F: float
    tau1_s: float
    r0_fresh_ohm: float  # R0 of cycle 0: the scale node lengths are set against

    def cell_current(
        self, st: FullCellState, v_src: float, r_s: float, t: FloatArray
    ) -> tuple[FloatArray, FullCellState]:
        """Cell current on `t` for I = (v_src - EMF - V1)/r_s, and the state at t[-1].

        Serves constant voltage (v_src = V, r_s = R0) and a shorted cell under constant current
        (Norton-to-Thevenin of the leak). Within a node the EMF is linear in charge, so the
        two-state ODE (charge, V1) is solved exactly; nodes pass ~0.2 % of the capacity, so a
        1 h hold takes a few dozen of them instead of 3600 time steps. While plating, each
        node's line starts where the last one ended (continuous, monotonic current) and aims at
        the true EMF one node ahead (errors do not accumulate); while stripping, the current
        is solved with the rate-dependent reach at every node (`_strip_node`).
        """
        c1, tau = self.c1_F, self.tau1_s
        # EMF errors matter as error/r_s: behind a large leak resistance nodes can be longer.
        node_As = _NODE_CHARGE * self.inventory.q_nom_As * min((r_s / self.r0_fresh_ohm) ** 0.5, 20.0)
        horizon = float(t[-1]) if t.size else 0.0
        # While plating, the EMF depends only on the charge passed: tabulate it once so that
        # the node loop reads plain Python floats (q < 0 once the table no longer applies).
        h = max(1.25 - st.soc, 0.05) * self.inventory.q_cat_As / 4000
        table = self.inventory.emf(st, h * np.arange(4001.0), 1, 1.0).tolist()
        rows: list[tuple[float, float, float, float, float, float, float]] = []
        t0, q, i_end = 0.0, 0.0, 0.0
        e = float(self.inventory.emf(st, 0.0, 0, 1.0))
        while True:
            if q < 0:  # off the table, the carried line says nothing: start from the state
                e = float(self.inventory.emf(st, 0.0, 0, 1.0))
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
                    q, ends = -1.0, self.inventory.emf(st, np.array([0.0, aim]), 1, 1.0).tolist()
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
            st = self.inventory.after(st, dq, f, v1)
            q = q + dq if q >= 0 and dq > 0 else -1.0
            e += g * dq
            t0 = t0 + step if horizon - t0 - step > 1e-9 else horizon
        rows_a = np.array(rows)
        k = np.clip(np.searchsorted(rows_a[:, 0], t, side="right") - 1, 0, len(rows) - 1)
        t_k, drive_k, g_k, v1_k, l1, l2, r_k = rows_a[k].T
        dq_t, v1_t = _linear_solution(t - t_k, drive_k, g_k, v1_k, l1, l2, r_k, c1, tau)
        return (drive_k - g_k * dq_t - v1_t) / r_k, st

    def _strip_node(
        self, st: FullCellState, v_src: float, r_s: float, guess: float, node_As: float
    ) -> _Node | None:
        """A node while stripping, or None if no Li can be stripped at this voltage."""
        solved = self._stripping(st, v_src, r_s, guess)
        if solved is None:
            return None
        i_now, f, de_di = solved
        # Tangent, not chord: the EMF bends too sharply near the end of reach, so nodes walk
        # through that knee in small steps and stride where it is flat.
        tiny, void = -1e-3 * self.inventory.void_As, self.inventory.void_As
        e, e_tiny = self.inventory.emf(st, np.array([0.0, tiny]), -1, f).tolist()
        g = max((e_tiny - e) / tiny, 1e-12)
        node_q = min(max(0.005 / g, 0.25 * void), 20 * node_As)
        reach = st.anode_As - self.inventory.floor_As - (1 - f) * (st.deposit_As - self.inventory.floor_As)
        if de_di > r_s:  # pinned at the edge of reach, f following I: watch I instead
            node_q = max(node_q, min(0.05 * abs(i_now) * (r_s + de_di) / g, 20 * node_As))
            reach = st.anode_As - self.inventory.floor_As  # the knee that ends it, at f = 1
        if reach > -4 * void:
            node_q = min(node_q, max(reach - 4 * void, 0.25 * void))
        return _Node(i_now, f, r_s + de_di, e, g, node_q)  # the feedback acts as resistance

    def _stripping(
        self, st: FullCellState, v_src: float, r_s: float, guess: float
    ) -> tuple[float, float, float] | None:
        """Current I < 0, accessible fraction f(I) and dEMF/dI with I = (v_src - EMF(f(I)) - V1)/r_s.

        The residual EMF(f(I)) + I·r_s + V1 - v_src rises with I, so the root is unique in
        [I at f = 1, 0] (None if there is none): safeguarded Newton from `guess`.
        """

        def emf(i: float) -> float:
            return float(self.inventory.emf(st, 0.0, -1, self.inventory.rate_fraction(i)))

        low, high = (v_src - emf(0.0) - st.v1_V) / r_s, -1e-15
        if low >= 0:
            return None
        if self.inventory.rate_fraction(low) == 1.0:  # slow enough to reach everything: no feedback
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
        return i, self.inventory.rate_fraction(i), slope - r_s


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
