"""Turning per-area and per-mass currents and charges and C-rates into amperes and coulombs for one cell."""

from __future__ import annotations

from dataclasses import dataclass

from cyclerd.protocols.units import SECONDS_PER_HOUR, Amount, Basis

# A nominal capacity and specific capacity × active mass that differ by more than this disagree.
CAPACITY_TOLERANCE = 0.01

AREA_NEEDED = "the electrode area (cell.area or --area)"
MASS_NEEDED = "the active-material mass (cell.active_mass or --mass)"
CAPACITY_NEEDED = (
    "the nominal capacity (cell.capacity or --capacity, or cell.specific_capacity with the active mass)"
)


@dataclass(frozen=True)
class CellScale:
    """What a cell contributes to units: electrode area, nominal capacity, active mass (SI).

    `mass` is absolute (kg) or a loading per area (kg/m²); `specific_capacity` (A·s/kg) times
    the mass is the nominal capacity when `capacity` is not given.
    """

    area_m2: float | None = None
    capacity: Amount | None = None
    mass: Amount | None = None
    specific_capacity: Amount | None = None

    @property
    def mass_kg(self) -> float | None:
        """Active-material mass in kg, if it can be known."""
        if self.mass is None:
            return None
        if self.mass.basis is Basis.AREAL:
            return None if self.area_m2 is None else self.mass.value * self.area_m2
        return self.mass.value

    @property
    def nominal(self) -> Amount | None:
        """The capacity 1C refers to: the one given, else the specific capacity (per mass)."""
        return self.capacity if self.capacity is not None else self.specific_capacity

    @property
    def capacity_As(self) -> float | None:
        """Nominal capacity in A·s, if it can be known."""
        nominal = self.nominal
        return None if nominal is None or nominal.basis is Basis.C_RATE else self._absolute(nominal)

    def _absolute(self, amount: Amount) -> float | None:
        if amount.basis is Basis.ABSOLUTE:
            return amount.value
        if amount.basis is Basis.AREAL:
            return None if self.area_m2 is None else amount.value * self.area_m2
        if amount.basis is Basis.SPECIFIC:
            mass = self.mass_kg
            return None if mass is None else amount.value * mass
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
            return AREA_NEEDED
        if amount.basis is Basis.SPECIFIC:
            return self._mass_needs()
        nominal = self.nominal
        if nominal is None:
            return CAPACITY_NEEDED
        if nominal.basis is Basis.SPECIFIC:
            return self._mass_needs()
        return f"{AREA_NEEDED}, to scale the areal capacity"

    def _mass_needs(self) -> str:
        if self.mass is None:
            return MASS_NEEDED
        return f"{AREA_NEEDED}, to scale the areal active mass"

    def capacity_mismatch(self) -> tuple[float, float] | None:
        """(capacity, specific capacity × mass) when both are given and differ by more than 1 %.

        Compared per area when both are per area and the area is unknown.
        """
        if self.capacity is None or self.specific_capacity is None or self.mass is None:
            return None
        scale = self
        if self.area_m2 is None and self.capacity.basis is Basis.AREAL and self.mass.basis is Basis.AREAL:
            scale = CellScale(1.0, self.capacity, self.mass, self.specific_capacity)  # both per m²
        given, from_mass = scale._absolute(self.capacity), scale._absolute(self.specific_capacity)
        if given is None or from_mass is None or given <= 0:
            return None
        if abs(from_mass - given) <= CAPACITY_TOLERANCE * given:
            return None
        return given, from_mass
