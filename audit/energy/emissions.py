"""Emissions from energy: ``gCO2e = kWh x grid carbon intensity x PUE``.

The grid intensity comes from the spec (a number and where it came from) or from the
offline table below, by ISO 3166 country code (``"FR"`` or ``"FRA"``). The PUE (power usage
effectiveness: the facility's total energy over the IT equipment's) is always stated; the
default 1.0 counts the measured devices only, no cooling or power-delivery overhead.

Source of the table (:data:`GRID_SOURCE`): the ``carbon_intensity`` field (gCO2e per kWh of
electricity generated, a yearly national average) of ``codecarbon/data/private_infra/
global_energy_mix.json`` in codecarbon 3.3.2, the table codecarbon's offline tracker uses;
its fields follow Our World in Data's energy dataset. The year differs by country (2022 or
2023) and is kept per entry and stated in every finding. A yearly national average ignores
the hour and the local grid: use a value from your provider or grid operator
(``grid_intensity_g_per_kwh``) when you have one.

Example:
    >>> factor = emissions_factor(country="FR")
    >>> round(factor.grams(3.6e6), 3)   # 1 kWh in France, PUE 1.0
    56.039
    >>> factor.describe()
    'grid 56.039 gCO2e/kWh (France, 2023; codecarbon 3.3.2 global_energy_mix.json, carbon_intensity), PUE 1.0 (measured devices only, no facility overhead)'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "GRID_INTENSITY",
    "GRID_SOURCE",
    "EmissionsFactor",
    "emissions_factor",
    "emissions_g_co2e",
    "grid_intensity",
]

J_PER_KWH = 3.6e6

GRID_SOURCE = "codecarbon 3.3.2 global_energy_mix.json, carbon_intensity"
"""Where :data:`GRID_INTENSITY` was transcribed from (see the module docstring)."""

#: ISO 3166-1 alpha-2 -> (alpha-3, country, gCO2e/kWh, year of the data), from :data:`GRID_SOURCE`.
GRID_INTENSITY: dict[str, tuple[str, str, float, int]] = {
    "US": ("USA", "United States", 369.473, 2023),
    "CA": ("CAN", "Canada", 170.043, 2023),
    "MX": ("MEX", "Mexico", 507.245, 2023),
    "BR": ("BRA", "Brazil", 98.348, 2023),
    "AR": ("ARG", "Argentina", 354.103, 2023),
    "CL": ("CHL", "Chile", 291.113, 2023),
    "CO": ("COL", "Colombia", 259.511, 2023),
    "GB": ("GBR", "United Kingdom", 237.589, 2023),
    "IE": ("IRL", "Ireland", 290.805, 2023),
    "FR": ("FRA", "France", 56.039, 2023),
    "DE": ("DEU", "Germany", 380.95, 2023),
    "NL": ("NLD", "Netherlands", 267.622, 2023),
    "BE": ("BEL", "Belgium", 138.107, 2023),
    "LU": ("LUX", "Luxembourg", 105.263, 2023),
    "CH": ("CHE", "Switzerland", 34.843, 2023),
    "AT": ("AUT", "Austria", 110.812, 2023),
    "IT": ("ITA", "Italy", 330.718, 2023),
    "ES": ("ESP", "Spain", 174.05, 2023),
    "PT": ("PRT", "Portugal", 165.553, 2023),
    "DK": ("DNK", "Denmark", 151.65, 2023),
    "NO": ("NOR", "Norway", 30.08, 2023),
    "SE": ("SWE", "Sweden", 40.695, 2023),
    "FI": ("FIN", "Finland", 79.158, 2023),
    "IS": ("ISL", "Iceland", 27.68, 2022),
    "PL": ("POL", "Poland", 661.926, 2023),
    "CZ": ("CZE", "Czechia", 449.724, 2023),
    "HU": ("HUN", "Hungary", 204.19, 2023),
    "RO": ("ROU", "Romania", 240.583, 2023),
    "GR": ("GRC", "Greece", 336.574, 2023),
    "TR": ("TUR", "Turkey", 464.586, 2023),
    "RU": ("RUS", "Russia", 441.039, 2023),
    "UA": ("UKR", "Ukraine", 259.693, 2022),
    "IL": ("ISR", "Israel", 582.927, 2022),
    "SA": ("SAU", "Saudi Arabia", 706.791, 2022),
    "AE": ("ARE", "United Arab Emirates", 561.135, 2022),
    "EG": ("EGY", "Egypt", 570.306, 2023),
    "ZA": ("ZAF", "South Africa", 707.686, 2023),
    "NG": ("NGA", "Nigeria", 523.247, 2023),
    "KE": ("KEN", "Kenya", 70.492, 2023),
    "IN": ("IND", "India", 713.441, 2023),
    "PK": ("PAK", "Pakistan", 440.608, 2023),
    "BD": ("BGD", "Bangladesh", 691.411, 2023),
    "CN": ("CHN", "China", 582.317, 2023),
    "HK": ("HKG", "Hong Kong", 699.499, 2022),
    "TW": ("TWN", "Taiwan", 642.378, 2023),
    "JP": ("JPN", "Japan", 485.392, 2023),
    "KR": ("KOR", "South Korea", 430.567, 2023),
    "SG": ("SGP", "Singapore", 470.783, 2023),
    "MY": ("MYS", "Malaysia", 605.831, 2022),
    "TH": ("THA", "Thailand", 549.583, 2023),
    "VN": ("VNM", "Vietnam", 475.449, 2023),
    "ID": ("IDN", "Indonesia", 675.931, 2022),
    "PH": ("PHL", "Philippines", 610.688, 2023),
    "AU": ("AUS", "Australia", 548.692, 2023),
    "NZ": ("NZL", "New Zealand", 112.758, 2023),
}

_BY_ALPHA3 = {v[0]: k for k, v in GRID_INTENSITY.items()}


@dataclass(frozen=True, slots=True)
class EmissionsFactor:
    """Grams of CO2e per joule, and where the number came from.

    Attributes:
        g_per_kwh: grid carbon intensity, gCO2e per kWh.
        pue: power usage effectiveness (>= 1), multiplying the energy.
        source: where ``g_per_kwh`` came from (a table and field, or "spec").
        country: the country it is the average of, or None for a value from the spec.
        year: the year of the data, when known.
    """

    g_per_kwh: float
    pue: float = 1.0
    source: str = "spec"
    country: str | None = None
    year: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.g_per_kwh, bool) or not isinstance(self.g_per_kwh, (int, float)) \
                or not math.isfinite(self.g_per_kwh) or self.g_per_kwh < 0:
            raise ValueError(f"grid intensity must be a finite number of gCO2e/kWh >= 0, got {self.g_per_kwh!r}")
        if isinstance(self.pue, bool) or not isinstance(self.pue, (int, float)) \
                or not math.isfinite(self.pue) or self.pue < 1:
            raise ValueError(f"PUE must be a number >= 1 (facility energy / IT energy), got {self.pue!r}")
        object.__setattr__(self, "g_per_kwh", float(self.g_per_kwh))
        object.__setattr__(self, "pue", float(self.pue))

    def grams(self, joules: float) -> float:
        """gCO2e for ``joules`` of device energy (nan stays nan)."""
        return emissions_g_co2e(joules, g_per_kwh=self.g_per_kwh, pue=self.pue)

    def describe(self) -> str:
        """One line for a finding: the intensity, its source and year, and the PUE."""
        where = ", ".join(str(x) for x in (self.country, self.year) if x is not None)
        origin = f"{where}; {self.source}" if where else self.source
        pue = f"PUE {self.pue:.2f}".rstrip("0").rstrip(".") if self.pue != 1.0 else "PUE 1.0"
        if self.pue == 1.0:
            pue += " (measured devices only, no facility overhead)"
        return f"grid {self.g_per_kwh:g} gCO2e/kWh ({origin}), {pue}"

    def to_dict(self) -> dict[str, Any]:
        return {"g_per_kwh": self.g_per_kwh, "pue": self.pue, "source": self.source,
                "country": self.country, "year": self.year, "formula": "gCO2e = kWh x g_per_kwh x pue"}


def emissions_g_co2e(joules: float, *, g_per_kwh: float, pue: float = 1.0) -> float:
    """``joules / 3.6e6 * g_per_kwh * pue``: grams of CO2e.

    Example:
        >>> emissions_g_co2e(7.2e6, g_per_kwh=100.0, pue=1.5)   # 2 kWh at 100 g/kWh, PUE 1.5
        300.0
    """
    return float(joules) / J_PER_KWH * float(g_per_kwh) * float(pue)


def grid_intensity(country: str) -> EmissionsFactor:
    """The table's intensity for an ISO 3166 alpha-2 or alpha-3 country code (PUE 1.0).

    Raises:
        KeyError: the code is not in the table; the message lists what is.

    Example:
        >>> grid_intensity("deu").g_per_kwh
        380.95
    """
    code = str(country).strip().upper()
    key = code if code in GRID_INTENSITY else _BY_ALPHA3.get(code)
    if key is None:
        raise KeyError(
            f"no grid intensity for country code {country!r} in the offline table ({GRID_SOURCE}); "
            f"give grid_intensity_g_per_kwh instead, or one of: {', '.join(sorted(GRID_INTENSITY))}"
        )
    alpha3, name, g, year = GRID_INTENSITY[key]
    return EmissionsFactor(g_per_kwh=g, source=GRID_SOURCE, country=name, year=year)


def emissions_factor(*, country: str | None = None, g_per_kwh: float | None = None,
                     source: str | None = None, pue: float = 1.0) -> EmissionsFactor:
    """A factor from a value in the spec (``g_per_kwh`` and its ``source``) or a country code.

    A value from the spec wins over the table; ``source`` then says where it came from.

    Raises:
        ValueError: neither given, or a value out of range.
        KeyError: an unknown country code.
    """
    if g_per_kwh is not None:
        return EmissionsFactor(g_per_kwh=g_per_kwh, pue=pue, source=source or "value given in the spec",
                               country=country)
    if country is None:
        raise ValueError("an emissions factor needs a country code or a grid intensity in gCO2e/kWh")
    base = grid_intensity(country)
    return EmissionsFactor(g_per_kwh=base.g_per_kwh, pue=pue, source=base.source,
                           country=base.country, year=base.year)
