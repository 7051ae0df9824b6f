"""Half-cell presets: seed-layer electrodes (Mg, Ag, Sn, MgAgSn; Elastane or PVDF binder) vs Li.

One frozen dataclass per preset, numbers from cell-physics.md §7 written in the literature's
units and converted to SI by the unit constants, so the table reads like the note. Every
value is overridable with `HalfCellParams.with_overrides`, which refuses unknown names.
`ShortSchedule` is one cell's draw from a preset's short-circuit distribution. Which figures
are calibrated to the paper and which follow from the model: docs/simulator.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

# One literature unit expressed in SI, so that `30 * OHM_CM2` reads as "30 Ω·cm²".
OHM_CM2 = 1e-4  # Ω·m²
MAH_PER_CM2 = 10.0  # A·h/m²
PER_CM2 = 1e4  # 1/m² (for CPE coefficients quoted per cm²)
MV = 1e-3  # V
MA_PER_CM2 = 10.0  # A/m²


class UnknownPresetError(LookupError):
    """A preset name that is not in `PRESETS`."""


class UnknownParameterError(TypeError):
    """An override for a parameter the half-cell model does not have."""


class InvalidParametersError(ValueError):
    """Parameters that cannot describe a cell (e.g. an ICE the seed losses alone exceed)."""


@dataclass(frozen=True)
class SeedAlloy:
    """One lithiophilic seed: its alloying plateaus on first lithiation and on delithiation.

    Lithiation plateaus are listed in the order they appear as the potential falls, with
    relative widths (Li per host atom for Sn, after Wang/Raistrick/Huggins); delithiation
    plateaus share the seed's reversible Li equally and sit above them by the hysteresis.
    """

    name: str
    lithiation_V: tuple[float, ...]
    lithiation_weights: tuple[float, ...]
    delithiation_V: tuple[float, ...]


# The last three Sn steps stand in for the Li7Sn2 -> Li22Sn5 slope (~0.35 -> 0.1 V).
SN = SeedAlloy(
    "Sn",
    lithiation_V=(0.76, 0.66, 0.53, 0.485, 0.42, 0.38, 0.30, 0.20, 0.12),
    lithiation_weights=(0.4, 0.6, 1.33, 0.17, 0.1, 0.9, 0.3, 0.3, 0.3),
    delithiation_V=(0.45, 0.59, 0.72, 0.80),
)
# Mg: one α+β two-phase plateau; its solid-solution slope to 0 V is the edge into Li plating.
MG = SeedAlloy("Mg", lithiation_V=(0.09,), lithiation_weights=(1.0,), delithiation_V=(0.15,))
AG = SeedAlloy(
    "Ag",
    lithiation_V=(0.07, 0.035),
    lithiation_weights=(1.0, 1.0),
    delithiation_V=(0.12, 0.18, 0.27),
)


@dataclass(frozen=True)
class HalfCellParams:
    """Everything the half-cell model needs, SI units (areal values per m² of electrode).

    The first block differs between presets (the §7 table); the rest are shared defaults.

    Calibrated to the paper [paper]: `ice`, `ce_steady` (MgAgSn) and `short_n0_cycles` are the
    outcomes of the *reference protocol* only: plate `reference_plate_Ah_per_m2` at
    `reference_current_A_per_m2` (1 mA/cm², 1 mAh/cm²), strip at 1 mA/cm² to 1.0 V vs Li.
    Under any other protocol CE and the short onset follow from the model (docs/simulator.md):

    - Li lost per cycle = SEI on the fresh deposit (a charge per cycle) + dead Li (a fraction
      of what is plated), both scaled by the plating current density (more, smaller nuclei,
      more surface: Pei et al., Nano Lett. 2017 [lit]); so CE falls with current density and
      rises with areal capacity.
    - Stripping faster than Li creep refills the interface (`critical_strip_A_per_m2`) leaves
      voids in proportion to the charge stripped; the contact lost raises the local plating
      current density, and the cell shorts once that exceeds the critical current density
      `ccd_A_per_m2` (Kasemchainan et al., Nat. Mater. 2019 [lit]; Raj et al. 2020 [src]).
      The per-cell void rate is the Weibull draw at the reference protocol.
    """

    name: str
    binder: str
    seeds: tuple[tuple[SeedAlloy, float], ...]  # (seed, share of q_seed), in lithiation order
    ice: float  # CE of cycle 1
    ce_steady: float  # CE_ss; CE_n = CE_ss − conditioning·exp(−(n−1)/τ) + jitter
    short_n0_cycles: float  # Weibull characteristic cycle of the short onset
    f_rev: float  # fraction of first-lithiation seed Li released again on stripping
    nucleation_V: float  # extra dip at the onset of Li plating (at 1 mA/cm²)
    r_ct5_ohm_m2: float  # R_ct of the Li-free electrode after 5 cycles
    r_ct10_ohm_m2: float  # ... and after 10 cycles; fixes the linear growth k
    r_void_ohm_m2: float  # extra constriction resistance at the end of stripping
    alpha_dl: float
    r_sei_ohm_m2: float = 0.0  # resolved SEI arc (PVDF only)
    r_sei_growth_ohm_m2_per_cycle: float = 0.0
    q_seed_Ah_per_m2: float = 0.15 * MAH_PER_CM2  # seed capacity filled in the first lithiation
    r_b_ohm_m2: float = 30 * OHM_CM2  # LPSCl 600 µm at 2 mS/cm
    r_b_growth_per_cycle: float = 0.001
    q_sei_per_m2: float = 1e-6 * PER_CM2
    alpha_sei: float = 0.85
    q_dl_per_m2: float = 2e-5 * PER_CM2
    sigma_w_ohm_m2_per_sqrt_s: float = 5 * OHM_CM2
    inductance_H: float = 0.0
    r_ct_li_fraction: float = 0.5  # R_ct,Li / R_ct,0 once plated Li covers the seeds
    q_cover_Ah_per_m2: float = 0.05 * MAH_PER_CM2  # plated Li over which extra R_ct e-folds
    q_nucleation_Ah_per_m2: float = 0.003 * MAH_PER_CM2  # where the nucleation dip peaks
    plateau_width_Ah_per_m2: float = 0.005 * MAH_PER_CM2  # tanh smoothing of plateau edges
    blocking_V: float = 1.5  # where the emptied electrode's potential rises to
    blocking_width_Ah_per_m2: float = 0.0005 * MAH_PER_CM2  # charge that rise takes
    pristine_blocking_Ah_per_m2: float = 0.001 * MAH_PER_CM2  # pristine OCV -> first plateau
    reference_plate_Ah_per_m2: float = 1.0 * MAH_PER_CM2
    ce_conditioning: float = 0.015
    ce_conditioning_cycles: float = 5.0
    ce_jitter: float = 0.0005
    short_shape: float = 3.0
    r_ss_onset_ohm_m2: float = 1e5 * OHM_CM2
    r_ss_soft_ohm_m2: tuple[float, float] = (10 * OHM_CM2, 50 * OHM_CM2)
    r_ss_hard_ohm_m2: tuple[float, float] = (0.5 * OHM_CM2, 2 * OHM_CM2)
    soft_fall_cycles: tuple[int, int] = (1, 3)  # cycles for R_ss to fall to the soft level
    soft_hold_cycles: tuple[int, int] = (2, 5)  # cycles spent soft before the hard short
    noise_V: float = 0.2 * MV
    short_noise_V: tuple[float, float] = (1 * MV, 5 * MV)
    telegraph_rate_per_s: float = 0.1  # switching rate of the soft short's telegraph noise
    eis_noise_fraction: float = 1e-3  # rms of Z noise relative to |Z|
    # --- how outcomes answer the protocol (docs/simulator.md) ---
    reference_current_A_per_m2: float = 1.0 * MA_PER_CM2  # the protocol ice/ce/n0 refer to
    ccd_A_per_m2: float = 2.5 * MA_PER_CM2  # plating CCD of the intact interface (Ag-C: 2.5)
    critical_strip_A_per_m2: float = 0.2 * MA_PER_CM2  # below it Li creep refills voids
    sei_loss_share: float = 0.5  # of the reference Li loss that is per-cycle SEI, not dead Li
    c_block_F_per_m2: float = 1e-3 * PER_CM2  # double layer of the Li-free (blocking) electrode
    oxidation_V: float = 2.5  # LPSCl oxidises above ~2.3-2.5 V vs Li [lit]: the blocking rise ends
    oxidation_width_V: float = 0.05  # how sharply it ends there
    reservoir_window_V: float = 0.1  # held Li acts as a capacitance Q_Li / this (EIS tail)
    r_ct_plating_rise_ohm_m2: float = 0.5 * OHM_CM2  # contact loss per reference capacity plated

    def __post_init__(self) -> None:
        if not self.seeds or self.q_seed_Ah_per_m2 <= 0:
            raise InvalidParametersError(f"{self.name}: a half-cell preset needs seed capacity")
        if not 0 < self.f_rev <= 1:
            raise InvalidParametersError(f"{self.name}: f_rev must be in (0, 1], not {self.f_rev}")
        for label, ce in (("ice", self.ice), ("ce_steady", self.ce_steady)):
            if not 0 < ce <= 1:
                raise InvalidParametersError(f"{self.name}: {label} must be in (0, 1], not {ce}")
        if not self.reference_current_A_per_m2 < self.ccd_A_per_m2:
            raise InvalidParametersError(
                f"{self.name}: the reference current density must lie below the critical current "
                f"density ({self.ccd_A_per_m2 / MA_PER_CM2:g} mA/cm²), or the reference protocol "
                "shorts in its first cycle"
            )
        if not 0 <= self.sei_loss_share < 1:
            raise InvalidParametersError(f"{self.name}: sei_loss_share must be in [0, 1)")
        seed_losses = (1 - self.f_rev) * self.q_seed_Ah_per_m2 + self.pristine_blocking_Ah_per_m2
        if (1 - self.ice) * self.reference_plate_Ah_per_m2 < seed_losses:
            raise InvalidParametersError(
                f"{self.name}: ICE {self.ice:.3f} is higher than the trapped seed Li allows; "
                "raise f_rev or lower q_seed_Ah_per_m2"
            )

    @property
    def r_ct_growth_per_cycle(self) -> float:
        """k in R_ct(n) = R_ct,5·(1 + k·(n − 5)), from the cycle-5 and cycle-10 values."""
        return (self.r_ct10_ohm_m2 / self.r_ct5_ohm_m2 - 1.0) / 5.0

    def with_overrides(self, **overrides: Any) -> HalfCellParams:
        """A copy with some values changed; a misspelt name is an error, not a silent no-op."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UnknownParameterError(
                f"unknown half-cell parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return dataclasses.replace(self, **overrides)


# Average CE over cycles 2..235 of CE_n = CE_ss − 1.5 %·exp(−(n−1)/5) is
# CE_ss − 1.5 %·(1/234)·Σ_{m=1}^{234} e^(−m/5) = CE_ss − 1.5 %·(4.51666/234)
# = CE_ss − 0.02895 %, so the paper's mean of 99.62 % needs CE_ss = 99.649 %.
MGAGSN_CE_STEADY = 0.99649

# cell-physics.md §7. Resistances in Ω·cm², capacities in mAh/cm², potentials in V vs Li.
# ice, ce_steady (MgAgSn) and short_n0_cycles are calibrated to the paper's 1 mA/cm², 1 mAh/cm²
# (the single seeds' CE_ss and n0 are [assumed] within "single seeds short early"). The CCDs
# are [assumed]: single seeds at the 2.5 mA/cm² above which an Ag-C interlayer no longer stops
# dendrites (Spencer-Jolly 2023 [src]); MgAgSn above the 2 mA/cm² (1C) its full cell runs at;
# PVDF between. The plating rise of R_CT is [assumed] from the binder: an elastic network keeps
# contact while ~5 µm of Li (1 mAh/cm²) grows under it, a rigid one does not (paper, Fig. 4, S15).
PRESETS: Mapping[str, HalfCellParams] = MappingProxyType({
    "mg": HalfCellParams(
        name="mg", binder="elastane", seeds=((MG, 1.0),),
        ice=0.685, ce_steady=0.988, short_n0_cycles=30, f_rev=0.4, nucleation_V=3 * MV,
        r_ct5_ohm_m2=20 * OHM_CM2, r_ct10_ohm_m2=35 * OHM_CM2, r_void_ohm_m2=20 * OHM_CM2,
        alpha_dl=0.80,
    ),
    "ag": HalfCellParams(
        name="ag", binder="elastane", seeds=((AG, 1.0),),
        ice=0.762, ce_steady=0.992, short_n0_cycles=60, f_rev=0.6, nucleation_V=2 * MV,
        r_ct5_ohm_m2=18 * OHM_CM2, r_ct10_ohm_m2=30 * OHM_CM2, r_void_ohm_m2=15 * OHM_CM2,
        alpha_dl=0.80,
    ),
    "sn": HalfCellParams(
        name="sn", binder="elastane", seeds=((SN, 1.0),),
        ice=0.727, ce_steady=0.990, short_n0_cycles=40, f_rev=0.5, nucleation_V=10 * MV,
        r_ct5_ohm_m2=25 * OHM_CM2, r_ct10_ohm_m2=45 * OHM_CM2, r_void_ohm_m2=25 * OHM_CM2,
        alpha_dl=0.80,
    ),
    "mgagsn": HalfCellParams(
        name="mgagsn", binder="elastane", seeds=((SN, 1 / 3), (MG, 1 / 3), (AG, 1 / 3)),
        ice=0.845, ce_steady=MGAGSN_CE_STEADY, short_n0_cycles=800, f_rev=0.6,
        nucleation_V=2 * MV,
        r_ct5_ohm_m2=10 * OHM_CM2, r_ct10_ohm_m2=11 * OHM_CM2, r_void_ohm_m2=5 * OHM_CM2,
        alpha_dl=0.85, ccd_A_per_m2=4.0 * MA_PER_CM2,
    ),
    "mgagsn-pvdf": HalfCellParams(
        name="mgagsn-pvdf", binder="pvdf", seeds=((SN, 1 / 3), (MG, 1 / 3), (AG, 1 / 3)),
        ice=0.80, ce_steady=0.993, short_n0_cycles=150, f_rev=0.5, nucleation_V=4 * MV,
        r_ct5_ohm_m2=15 * OHM_CM2, r_ct10_ohm_m2=18 * OHM_CM2, r_void_ohm_m2=20 * OHM_CM2,
        alpha_dl=0.85, r_sei_ohm_m2=15 * OHM_CM2, r_sei_growth_ohm_m2_per_cycle=0.3 * OHM_CM2,
        ccd_A_per_m2=3.0 * MA_PER_CM2, r_ct_plating_rise_ohm_m2=15 * OHM_CM2,
    ),
})  # fmt: skip


@dataclass(frozen=True)
class ShortSchedule:
    """How this cell shorts, drawn once from its seed (cell-physics.md §4(d)).

    `reference_onset_cycle` is the Weibull draw: the cycle in which the cell would short under
    the reference protocol. When it really shorts depends on the protocol (voids against the
    critical current density, `HalfCell`); from that onset cycle on, the leak follows the soft
    and hard levels drawn here.
    """

    reference_onset_cycle: int
    fall_cycles: int
    soft_ohm_m2: float
    hold_cycles: int
    hard_ohm_m2: float
    noise_V: float

    @classmethod
    def draw(cls, params: HalfCellParams, rng: np.random.Generator) -> ShortSchedule:
        """Weibull onset (shape k, characteristic cycle n0), then soft and hard levels."""
        onset = max(1, math.ceil(params.short_n0_cycles * rng.weibull(params.short_shape)))
        fall = int(rng.integers(params.soft_fall_cycles[0], params.soft_fall_cycles[1] + 1))
        soft = float(rng.uniform(*params.r_ss_soft_ohm_m2))
        hold = int(rng.integers(params.soft_hold_cycles[0], params.soft_hold_cycles[1] + 1))
        hard = float(rng.uniform(*params.r_ss_hard_ohm_m2))
        noise = float(rng.uniform(*params.short_noise_V))
        return cls(onset, fall, soft, hold, hard, noise)

    def leakage_ohm_m2(self, cycle: int, onset_cycle: int, onset_ohm_m2: float) -> float:
        """R_ss in cycle `cycle` of a cell that shorted in `onset_cycle` (0: it has not): ∞, then
        a log-linear fall to the soft level, then hard."""
        if onset_cycle <= 0 or cycle < onset_cycle:
            return math.inf
        done = cycle - onset_cycle
        if done >= self.fall_cycles + self.hold_cycles:
            return self.hard_ohm_m2
        f = min(done / self.fall_cycles, 1.0)
        return float(onset_ohm_m2 ** (1.0 - f) * self.soft_ohm_m2**f)

    def is_soft(self, cycle: int, onset_cycle: int) -> bool:
        """Soft shorts flicker (random-telegraph noise); hard ones just sit at ~1 Ω·cm²."""
        return onset_cycle > 0 and 0 <= cycle - onset_cycle < self.fall_cycles + self.hold_cycles


def preset(name: str) -> HalfCellParams:
    """The preset called `name` ("mg", "ag", "sn", "mgagsn", "mgagsn-pvdf")."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise UnknownPresetError(
            f"no half-cell preset {name!r}; choose one of {', '.join(PRESETS)}"
        ) from None
