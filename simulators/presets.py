"""Simulated cells by name ("mgagsn", "ncm811-anodeless", ...), with parameters overridable.

Overrides come as `name=value` texts from the command line or as a YAML/JSON mapping in a
file; values are numbers in the parameter's own (SI) unit, checked by the model's
`with_overrides`, so a misspelt name is an error rather than a silent default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from cyclerd.simulators.cell import CellModel
from cyclerd.simulators.fullcell import PRESETS as FULL_CELL_PRESETS
from cyclerd.simulators.fullcell import FullCell
from cyclerd.simulators.halfcell import HalfCell
from cyclerd.simulators.presets_halfcell import PRESETS as HALF_CELL_PRESETS

DEFAULT_AREA_M2 = 0.785e-4  # a 10 mm pellet


class PresetError(ValueError):
    """An unknown preset or a bad parameter override; the message lists what is known."""


def names() -> list[str]:
    return [*HALF_CELL_PRESETS, *FULL_CELL_PRESETS]


def parse_overrides(pairs: Iterable[str], file: Path | None = None) -> dict[str, Any]:
    """`['r_b_ohm_m2=0.004', ...]` and/or a YAML/JSON file -> a mapping of parameter values."""
    values: dict[str, Any] = {}
    if file is not None:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8"))  # YAML reads JSON too
        if not isinstance(loaded, dict):
            raise PresetError(f"{file}: expected a mapping of parameter names to values")
        values.update(loaded)
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise PresetError(f"override {pair!r}: write NAME=VALUE, e.g. ce_steady=0.995")
        try:
            values[name.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise PresetError(f"override {pair!r}: cannot read the value {text!r}") from None
    return values


def make_cell(
    name: str, seed: int = 0, area_m2: float | None = None, overrides: Mapping[str, Any] | None = None
) -> CellModel:
    """The simulated cell called `name`, with `overrides` applied and its own seeded randomness."""
    area = DEFAULT_AREA_M2 if area_m2 is None else area_m2
    key = name.lower()
    try:
        if key in HALF_CELL_PRESETS:
            params = HALF_CELL_PRESETS[key].with_overrides(**dict(overrides or {}))
            return HalfCell(params, area_m2=area, seed=seed)
        if key in FULL_CELL_PRESETS:
            full = FULL_CELL_PRESETS[key].with_overrides(**dict(overrides or {}))
            return FullCell(full, area_m2=area, seed=seed)
    except (TypeError, ValueError) as exc:
        raise PresetError(f"preset {name!r}: {exc}") from None
    raise PresetError(f"no simulated cell called {name!r}; choose one of {', '.join(names())}")
