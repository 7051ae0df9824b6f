"""What the paper reports for each preset (Oh, Sohn & Choi 2025; experiments.md), for comparison."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reported:
    ice: float | None = None  # first-cycle CE
    average_ce: float | None = None  # cycles 2..end
    cycles: str | None = None
    hours: str | None = None
    retention_100: float | None = None
    note: str = ""


PAPER: dict[str, Reported] = {
    "mgagsn": Reported(ice=0.845, average_ce=0.9962, cycles="> 230", hours="> 470", note="E1, Elastane"),
    "mg": Reported(ice=0.685, note="E1; short-circuits early"),
    "ag": Reported(ice=0.762, note="E1; short-circuits early"),
    "sn": Reported(ice=0.727, note="E1; short-circuits early"),
    "mgagsn-pvdf": Reported(note="E6: lower CE and shorter life than Elastane"),
    "ncm811-anodeless": Reported(ice=0.85, retention_100=0.70, note="E7 formation at 0.1C, E8 at 0.5C"),
}
