"""Tests of audit.emissions: the formula by hand, the offline table against its cited source."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from audit.emissions import (
    GRID_INTENSITY,
    GRID_SOURCE,
    EmissionsFactor,
    emissions_factor,
    emissions_g_co2e,
    grid_intensity,
)


def test_formula_by_hand():
    # 1 kWh at 400 g/kWh with PUE 1.2 is 480 g; 1 J is 1/3.6e6 kWh.
    assert emissions_g_co2e(3.6e6, g_per_kwh=400.0, pue=1.2) == pytest.approx(480.0)
    assert emissions_g_co2e(1.0, g_per_kwh=3.6e6) == pytest.approx(1.0)
    assert EmissionsFactor(g_per_kwh=250.0, pue=1.1).grams(7.2e6) == pytest.approx(550.0)
    assert math.isnan(EmissionsFactor(g_per_kwh=1.0).grams(math.nan))


def test_table_matches_its_cited_source():
    """Every entry is transcribed from codecarbon's bundled file (the source the module cites)."""
    spec = importlib.util.find_spec("codecarbon")
    if spec is None:
        pytest.skip("codecarbon is not installed")
    assert "codecarbon 3.3.2" in GRID_SOURCE
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "private_infra" / "global_energy_mix.json"
    source = json.loads(path.read_text())
    assert len(GRID_INTENSITY) >= 50
    for alpha2, (alpha3, name, g, year) in GRID_INTENSITY.items():
        entry = source[alpha3]
        assert (entry["country_name"], entry["carbon_intensity"], entry["year"]) == (name, g, year), alpha2


def test_lookup_by_alpha2_and_alpha3_any_case():
    assert grid_intensity("fr").g_per_kwh == grid_intensity("FRA").g_per_kwh == 56.039
    f = grid_intensity("US")
    assert (f.country, f.year, f.source, f.pue) == ("United States", 2023, GRID_SOURCE, 1.0)
    with pytest.raises(KeyError, match="no grid intensity for country code 'ATL'.*grid_intensity_g_per_kwh"):
        grid_intensity("ATL")


def test_factor_from_spec_wins_and_states_its_source():
    f = emissions_factor(country="FR", g_per_kwh=123.0, source="grid operator, 2025 average", pue=1.3)
    assert (f.g_per_kwh, f.pue, f.source) == (123.0, 1.3, "grid operator, 2025 average")
    assert f.describe() == "grid 123 gCO2e/kWh (FR; grid operator, 2025 average), PUE 1.3"
    d = emissions_factor(country="DE").describe()
    assert "380.95 gCO2e/kWh" in d and "Germany, 2023" in d and GRID_SOURCE in d and "PUE 1.0" in d
    assert emissions_factor(g_per_kwh=10.0).source == "value given in the spec"
    assert json.dumps(f.to_dict())


@pytest.mark.parametrize("kwargs", [{"g_per_kwh": -1.0}, {"g_per_kwh": math.inf}, {"g_per_kwh": 1.0, "pue": 0.8},
                                    {"g_per_kwh": 1.0, "pue": math.nan}, {"g_per_kwh": True}])
def test_invalid_factor(kwargs):
    with pytest.raises(ValueError):
        EmissionsFactor(**kwargs)


def test_factor_needs_a_country_or_a_value():
    with pytest.raises(ValueError, match="country code or a grid intensity"):
        emissions_factor()
