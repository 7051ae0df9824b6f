"""Open-circuit potentials for the simulated cells: the NCM811 cathode and the seed alloys.

Plain vectorised functions of the state of charge, so any cell model can share them; the
formulas and their sources are in shared/cell-physics.md (§3.1 for NCM811, §1.1-1.5 and §4(b)
for the seeds).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from cyclerd.simulators.cell import FloatArray

# Stoichiometry window of the NCM811 fit that the full cell's SOC 0..1 maps onto (§3.1).
X_AT_EMPTY = 0.90
X_SPAN = 0.62
# End-of-discharge tail added to the fit, which has no steep drop of its own (§3.1).
TAIL_V = 1.2
TAIL_SOC = 0.015

# MgAgSn seeds fill in the paper's order Sn -> Mg -> Ag (§1.4). Each row is a lithiation
# plateau: potential vs Li (V) and its share of the seed capacity. Sn's 1/3 is split by the
# Li per Sn of each Huggins step (0.4, 0.6, 1.33, 0.17, 0.1, 0.9, then 0.9 on the slope).
_SN_STEPS = ((0.76, 0.4), (0.66, 0.6), (0.53, 1.33), (0.485, 0.17), (0.42, 0.1), (0.38, 0.9))
_SN_SLOPE = (0.22, 0.9)
MGAGSN_LITHIATION: tuple[tuple[float, float], ...] = (
    *((u, n / 4.4 / 3.0) for u, n in (*_SN_STEPS, _SN_SLOPE)),
    (0.09, 1.0 / 3.0),  # Li-Mg
    (0.07, 1.0 / 6.0),  # Li-Ag
    (0.035, 1.0 / 6.0),  # Li-Ag, Li-rich
)
# Edge smoothing of the plateaus, tanh(Δq / 0.005 mAh/cm²) on a 0.15 mAh/cm² layer (§4(b)).
SEED_EDGE = 0.005 / 0.15


def nmc811_chen2020(x: ArrayLike) -> FloatArray:
    """PyBaMM's `nmc_LGM50_ocp_Chen2020` (V vs Li) at Li stoichiometry `x` of the cathode."""
    x = np.asarray(x, dtype=np.float64)
    return np.asarray(
        -0.8090 * x
        + 4.4875
        - 0.0428 * np.tanh(18.5138 * (x - 0.5542))
        - 17.7326 * np.tanh(15.7890 * (x - 0.3117))
        + 17.5842 * np.tanh(15.9308 * (x - 0.3120)),
        dtype=np.float64,
    )


def ncm811_ocv(soc: ArrayLike) -> FloatArray:
    """Cathode OCV (V vs Li) at SOC 0..1: x = 0.90 - 0.62·SOC plus the low-SOC tail.

    SOC is clipped at -0.05 so that a cell driven far past empty reads a very low voltage
    instead of overflowing.
    """
    soc = np.maximum(np.asarray(soc, dtype=np.float64), -0.05)
    return nmc811_chen2020(X_AT_EMPTY - X_SPAN * soc) - TAIL_V * np.exp(-soc / TAIL_SOC)


def seed_potential(
    fill: ArrayLike,
    hysteresis_V: float = 0.0,
    plateaus: tuple[tuple[float, float], ...] = MGAGSN_LITHIATION,
    edge: float = SEED_EDGE,
) -> FloatArray:
    """Seed-layer potential (V vs Li) against the filled fraction of the seeds.

    A descending staircase of alloying plateaus, 0 V (Li metal) once the seeds are full.
    `hysteresis_V` lifts the curve while the seeds give Li back (delithiation sits above
    lithiation), but not the Li-metal level beyond a full layer.
    """
    fill = np.asarray(fill, dtype=np.float64)
    u = np.zeros_like(fill)
    levels = [p[0] for p in plateaus] + [0.0]
    end = 0.0
    for i, (_, share) in enumerate(plateaus):
        end += share
        step = levels[i] - levels[i + 1] + (hysteresis_V if i == len(plateaus) - 1 else 0.0)
        u = u + step * 0.5 * (1.0 + np.tanh((end - fill) / edge))
    return u
