"""The seeded working electrode of a half-cell: potential, interface resistance, Li path.

Fixed once from a preset and the electrode area: the seed's plateau staircase with its
nucleation dip and blocking rise, R_b + R_SEI + R_ct with voids, and where passed charge goes
(cell-physics.md §4 (a)–(c)). The changing state comes in as a `HalfCellState`. Beyond the
pristine state the Li-free electrode is a capacitor: no Li, no stripping current.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cyclerd.simulators.cell import FloatArray
from cyclerd.simulators.halfcell_state import Direction, HalfCellState, Segment
from cyclerd.simulators.presets_halfcell import HalfCellParams

AS_PER_AH = 3600.0
SATURATED = 20.0  # tanh(x) is exactly ±1.0 in float64 beyond |x| = 19.1


def _plateau_steps(
    plateaus: list[tuple[float, float]],
) -> tuple[FloatArray, FloatArray]:
    """(potential, width) plateaus -> levels (ending at Li, 0 V) and the edges between them."""
    levels = np.array([v for v, _ in plateaus] + [0.0])
    edges = np.cumsum([w for _, w in plateaus]) / sum(w for _, w in plateaus)
    return levels, edges


def staircase(u: FloatArray, levels: FloatArray, edges: FloatArray, width: float) -> FloatArray:
    """Plateaus along the seed-filling fraction u, each edge smoothed with tanh(Δu/width).

    Only the edges within reach of this stretch of u are evaluated: past SATURATED widths an
    edge has fully risen (or not at all) for every sample, exactly so in floating point. Once
    the seed is filled, that is every edge, and a cycle costs no tanh at all.
    """
    steps = np.diff(levels)
    risen = (u.min() - edges) / width > SATURATED
    near = ~risen & ((u.max() - edges) / width >= -SATURATED)
    out: FloatArray = np.full(len(u), levels[0] + steps[risen].sum())
    if not near.any():
        return out
    rising = np.diff(u)
    if (rising >= 0).all():
        _add_edges_in_order(out, u, edges[near], steps[near], width)
    elif (rising <= 0).all():
        _add_edges_in_order(out[::-1], u[::-1], edges[near], steps[near], width)
    else:
        rise = (1.0 + np.tanh((u[:, None] - edges[None, near]) / width)) / 2.0
        out += rise @ steps[near]
    return out


def _add_edges_in_order(
    out: FloatArray, u: FloatArray, edges: FloatArray, steps: FloatArray, width: float
) -> None:
    """Add the edges to `out` along a rising u: tanh only where an edge is not yet saturated.

    A step under constant current moves u one way, so the samples within SATURATED widths of
    an edge are one slice; beyond it the edge adds exactly 0 or its whole step. tanh therefore
    runs over those slices only, not over every sample times every edge, which matters on a
    plating step that crosses all of the seed's plateaus.
    """
    lo = np.searchsorted(u, edges - SATURATED * width, side="left")
    hi = np.searchsorted(u, edges + SATURATED * width, side="right")
    for a, b, edge, step in zip(lo.tolist(), hi.tolist(), edges.tolist(), steps.tolist(), strict=True):
        if b > a:
            out[a:b] += step * ((1.0 + np.tanh((u[a:b] - edge) / width)) / 2.0)
        out[b:] += step  # from here on the edge has risen fully


@dataclass(frozen=True, eq=False)  # eq=False: the plateau arrays have no single truth value
class SeedElectrode:
    """A seeded current collector of a given area: everything about it that never changes.

    Charges are in A·s on this electrode; `cap_As` is the reversible seed Li, above which
    the electrode holds plated Li. Build one with `for_area`.
    """

    params: HalfCellParams
    q_seed_As: float
    cap_As: float  # reversible seed Li
    q_cover_As: float
    q_nuc_As: float
    w_block_As: float
    w_u: float  # plateau edge width, as a fraction of the seed capacity
    r_void_ohm: float
    c_block_F: float  # double layer of the Li-free electrode (the blocking EIS tail too)
    lith: tuple[FloatArray, FloatArray]  # in the order the first lithiation meets them
    delith: tuple[FloatArray, FloatArray]  # last to empty sits highest
    u_top: float  # top of the delithiation branch, where the blocking rise starts
    pristine_x_As: float  # blocking charge of the pristine seed, as negative x

    @classmethod
    def for_area(cls, params: HalfCellParams, area_m2: float) -> SeedElectrode:
        p = params
        per_m2 = AS_PER_AH * area_m2  # A·h/m² -> A·s on this electrode
        q_seed_As = p.q_seed_Ah_per_m2 * per_m2
        w_u = p.plateau_width_Ah_per_m2 / p.q_seed_Ah_per_m2
        lith = [
            (v, share * w / sum(seed.lithiation_weights))
            for seed, share in p.seeds
            for v, w in zip(seed.lithiation_V, seed.lithiation_weights, strict=True)
        ]
        delith = [
            (v, share / len(seed.delithiation_V)) for seed, share in p.seeds for v in seed.delithiation_V
        ]
        delith_steps = _plateau_steps(sorted(delith, reverse=True))
        return cls(
            params=p,
            q_seed_As=q_seed_As,
            cap_As=p.f_rev * q_seed_As,
            q_cover_As=p.q_cover_Ah_per_m2 * per_m2,
            q_nuc_As=p.q_nucleation_Ah_per_m2 * per_m2,
            w_block_As=p.blocking_width_Ah_per_m2 * per_m2,
            w_u=w_u,
            r_void_ohm=p.r_void_ohm_m2 / area_m2,
            c_block_F=p.c_block_F_per_m2 * area_m2,
            lith=_plateau_steps(lith),
            delith=delith_steps,
            u_top=float(staircase(np.zeros(1), *delith_steps, w_u)[0]),
            pristine_x_As=-p.pristine_blocking_Ah_per_m2 * per_m2,
        )

    def potential(self, direction: Direction, x: FloatArray, dip: bool = True) -> FloatArray:
        """Equilibrium-ish potential of the WE on a branch: lithiation while plating (with the
        nucleation dip unless `dip` is False), delithiation while stripping."""
        p = self.params
        levels, edges = self.lith if direction is Direction.PLATE else self.delith
        u = staircase(x / self.cap_As, levels, edges, self.w_u)
        if direction is Direction.PLATE and dip:
            li = np.maximum(x - self.cap_As, 0.0) / self.q_nuc_As
            u = u - p.nucleation_V * li * np.exp(1.0 - li)
        blocked = x < 0  # only a pristine seed has blocking charge left: its tanh only there
        if blocked.any():  # u is this call's own array (the staircase's, or after the dip)
            below = x[blocked]
            rise = self.u_top + (p.blocking_V - self.u_top) * np.tanh(-below / self.w_block_As)
            # Past the pristine state there is no Li and nothing left to oxidise: only the
            # double layer charges, so the potential climbs as q/C and the current dies away,
            # until the electrolyte itself oxidises and carries a forced current (a soft minimum).
            charged = rise + np.maximum(self.pristine_x_As - below, 0.0) / self.c_block_F
            ox, width = p.oxidation_V, p.oxidation_width_V
            u[blocked] = ox - width * np.logaddexp(0.0, (ox - charged) / width)
        out: FloatArray = u
        return out

    @property
    def feature_As(self) -> float:
        """The narrowest charge over which the potential changes shape: a plateau edge, the
        nucleation dip or the blocking rise. A grid finer than this resolves the potential."""
        return min(self.w_u * self.cap_As, self.q_nuc_As, self.w_block_As)

    def li_held_As(self, st: HalfCellState) -> float:
        """Li in the electrode: strippable (plated, reversible seed alloy) and trapped in alloys."""
        return max(st.x_As, 0.0) + (1.0 - self.params.f_rev) * st.seed_filled_As

    def r_interface_ohm(self, seg: Segment, direction: Direction, x: FloatArray) -> FloatArray:
        """R_b + R_SEI + R_ct(n, covering Li) + contact lost under the deposit (+ void
        constriction while stripping), in Ω.

        The deposit pushes the seed layer apart as it grows (1 mAh/cm² is ~5 µm of Li on a
        5 µm layer); whatever contact the binder cannot keep stays lost until the cycle ends,
        so the term follows the plated Li while plating and its peak while stripping.
        """
        f = self.params.r_ct_li_fraction
        li = np.maximum(x - self.cap_As, 0.0)
        r = seg.r_b_ohm + seg.r_sei_ohm + seg.r_ct_ohm * (f + (1 - f) * np.exp(-li / self.q_cover_As))
        if direction is Direction.STRIP:
            gone = 1.0 - li / seg.li_peak_As if seg.li_peak_As > 0 else np.ones_like(li)
            r = r + self.r_void_ohm * np.clip(gone, 0.0, 1.0) ** 4 + seg.r_contact_ohm_per_As * seg.li_peak_As
        else:
            r = r + seg.r_contact_ohm_per_As * li
        out: FloatArray = r
        return out

    def _plating_stages(self, st: HalfCellState, seg: Segment) -> tuple[float, float, float, float, float]:
        """Charge (from the segment's start) where each stage of plating ends, and x there:
        (p_a, x_a) refilled blocking charge and reversible seed Li, (p_b, x_b) the first seed
        fill done, p_c this cycle's SEI formed (x stays x_b)."""
        f = self.params.f_rev
        x_a = max(st.x_As, f * st.seed_filled_As)
        p_a = x_a - st.x_As
        fill = self.q_seed_As - st.seed_filled_As
        p_b, x_b = p_a + fill, x_a + f * fill
        p_c = p_b + max(seg.sei_charge_As - seg.sei_done_As, 0.0)
        return p_a, x_a, p_b, x_b, p_c

    def path(self, st: HalfCellState, seg: Segment, p_As: FloatArray) -> FloatArray:
        """x after the cell passed charge p: stripping takes 1:1; plating first refills blocking
        charge and reversible seed Li, then finishes the first seed fill (only f_rev of it stays
        recoverable), then forms this cycle's SEI on the fresh deposit, then plates Li of which
        `loss_fraction` is lost (dead Li)."""
        x0 = st.x_As
        if seg.direction is Direction.STRIP:
            return x0 - p_As
        if seg.direction is Direction.REST:
            return np.full(p_As.shape, x0)
        p_a, x_a, p_b, x_b, p_c = self._plating_stages(st, seg)
        kept = 1.0 - seg.loss_fraction
        li = np.where(p_As < p_c, x_b, x_b + kept * (p_As - p_c))
        first_fill = np.where(p_As < p_b, x_a + self.params.f_rev * (p_As - p_a), li)
        return np.where(p_As < p_a, x0 + p_As, first_fill)

    def sei_after(self, st: HalfCellState, seg: Segment, plated_As: float) -> float:
        """This cycle's SEI charge after a plating segment that passed `plated_As`."""
        _, _, p_b, _, p_c = self._plating_stages(st, seg)
        return seg.sei_done_As + min(max(plated_As - p_b, 0.0), p_c - p_b)

    def seed_filled_after(self, st: HalfCellState, plated_As: float) -> float:
        """Progress of the first seed fill after plating `plated_As` from `st`."""
        into_seed = max(plated_As - max(self.params.f_rev * st.seed_filled_As - st.x_As, 0.0), 0.0)
        return min(st.seed_filled_As + into_seed, self.q_seed_As)
