"""What the paper reports (Oh, Sohn & Choi 2025; experiments.md), by experiment and cell, for comparison.

A figure of the paper is shown beside a run only when the run reproduces that experiment
(`cyclerd.analysis.experiments`: its protocol declares it and runs it under the library's
conditions) on the cell the paper reports it for (the simulator preset). Figures that describe
a whole run (average CE, life, retention after 100 cycles) also need the protocol to plan at
least as many cycles as the paper ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from cyclerd.analysis.experiments import Reproduced, program_of, reproduced


@dataclass(frozen=True)
class Reported:
    experiment: str
    ice: float | None = None  # first-cycle CE
    average_ce: float | None = None  # cycles 2..end
    cycles: str | None = None
    hours: str | None = None
    retention: float | None = None  # discharge capacity retention after `over_cycles`
    over_cycles: int | None = None  # the cycles that average CE, life and retention describe
    note: str = ""


SEEDS = ("mgagsn", "mg", "ag", "sn")  # the Elastane-bound seed layers of Fig. 2 and 3
FULL_CELL = "ncm811-anodeless"

_E4 = "R_CT grows with cycling for single seeds and stays lowest for MgAgSn (Fig. 3)"
_E10 = "alloying peaks of Li–Sn, Li–Mg and Li–Ag (Fig. S8; no potentials given)"

# By experiment, then by the cell (simulator preset) the paper reports it for.
PAPER: dict[str, dict[str, Reported]] = {
    "E1": {
        "mgagsn": Reported(
            "E1",
            ice=0.845,
            average_ce=0.9962,
            cycles="> 230",
            hours="> 470",
            over_cycles=230,
            note="E1, MgAgSn-Elastane",
        ),
        "mg": Reported("E1", ice=0.685, note="E1, Mg; single seeds short-circuit early"),
        "ag": Reported("E1", ice=0.762, note="E1, Ag; single seeds short-circuit early"),
        "sn": Reported("E1", ice=0.727, note="E1, Sn; single seeds short-circuit early"),
        # E6 is the E1 protocol on a PVDF-bound layer; the paper gives no figures for it.
        "mgagsn-pvdf": Reported("E6", note="E6: PVDF gives a lower CE and a shorter life than Elastane"),
    },
    "E4": {seed: Reported("E4", note=f"E4: {_E4}") for seed in SEEDS},
    "E5": {
        "mgagsn": Reported("E5", note="E5, Elastane: no R_SEI arc (Fig. 5)"),
        "mgagsn-pvdf": Reported(
            "E5", note="E5, PVDF: an R_SEI arc that grows during plating; larger R_CT after stripping"
        ),
    },
    "E7": {FULL_CELL: Reported("E7", ice=0.85, note="E7: formation at 0.1C")},
    "E8": {
        FULL_CELL: Reported(
            "E8", ice=0.85, retention=0.70, over_cycles=100, note="E8: 0.1C formation (E7), then 0.5C"
        )
    },
    "E9": {FULL_CELL: Reported("E9", note="E9: stable operation up to 1C (2 mA/cm²)")},
    "E10": {"mgagsn": Reported("E10", note=f"E10: {_E10}")},
}


def reported(experiment: str, preset: str) -> Reported | None:
    """The paper's figures for `experiment` on the cell `preset`, if it reports that combination."""
    return PAPER.get(experiment, {}).get(preset)


def reference(text: str, cell: Mapping[str, Any], source: Mapping[str, Any]) -> Reported | None:
    """What the paper reports that a run with this protocol text, cell and source can be compared with."""
    return reference_for(reproduced(program_of(text, cell)), source)


def reference_for(run: Reproduced | None, source: Mapping[str, Any]) -> Reported | None:
    if run is None:
        return None
    paper = reported(run.experiment, str(source.get("preset", "")))
    if paper is None or paper.over_cycles is None or run.plans_at_least(paper.over_cycles):
        return paper
    dropped = [
        name
        for name, value in (
            ("average CE", paper.average_ce),
            ("life", paper.cycles),
            ("retention", paper.retention),
        )
        if value is not None
    ]
    planned = f"this protocol plans {run.planned_cycles}" if run.planned_cycles else "this one has no loop"
    note = f"{paper.note} ({' and '.join(dropped)} over {paper.over_cycles} cycles; {planned})"
    return replace(paper, average_ce=None, cycles=None, hours=None, retention=None, note=note)
