"""Turning per-area currents, areal charges and C-rates into amperes and coulombs for one cell."""

from __future__ import annotations

from dataclasses import dataclass

from cyclerd.protocols.units import SECONDS_PER_HOUR, Amount, Basis


@dataclass(frozen=True)
class CellScale:
    """What a cell contributes to units: its electrode area and nominal capacity (SI)."""

    area_m2: float | None = None
    capacity: Amount | None = None

    @property
    def capacity_As(self) -> float | None:
        """Nominal capacity in A·s, if it can be known."""
        if self.capacity is None:
            return None
        return self._absolute(self.capacity)

    def _absolute(self, amount: Amount) -> float | None:
        if amount.basis is Basis.ABSOLUTE:
            return amount.value
        if amount.basis is Basis.AREAL:
            return None if self.area_m2 is None else amount.value * self.area_m2
        capacity = self.capacity_As
        return None if capacity is None else amount.value * capacity / SECONDS_PER_HOUR

    def resolve(self, amount: Amount) -> float | None:
        """Amperes (for a current) or A·s (for a charge), or None when the cell data is missing."""
        return self._absolute(amount)

    def needs(self, amount: Amount) -> str | None:
        """What the cell must state before `amount` can be resolved, or None."""
        if self._absolute(amount) is not None:
            return None
        if amount.basis is Basis.AREAL:
            return "the electrode area (cell.area or --area)"
        if self.capacity is None:
            return "the nominal capacity (cell.capacity or --capacity)"
        return "the electrode area (cell.area or --area), to scale the areal capacity"
