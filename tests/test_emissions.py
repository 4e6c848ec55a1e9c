"""Tests of audit.energy.emissions: the formula by hand, the offline table against its cited source."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from audit.energy.emissions import (
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


# --- The audit's emissions: settings.emissions in the spec, summed by the runner --------------------


def _spec(tmp_path, emissions):
    import tests.probes_for_tests  # noqa: F401  (registers test.constant)
    from audit.spec import spec_from_dict

    return spec_from_dict({
        "name": "emissions-test",
        "subject": {"kind": "text-generator", "source": "python", "path": "tests.fakes:make_text_generator"},
        "probes": [{"id": "test.constant"}],
        "settings": {"device": "cpu", "emissions": emissions},
    }, base_dir=tmp_path)


def test_audit_emissions_from_measured_and_estimated_energy_are_kept_apart():
    from audit.findings import ProbeStatus
    from audit.runner import _audit_energy

    statuses = {
        "a": ProbeStatus("ok", energy={"joules": 3.6e6, "kind": "measured"}),            # 1 kWh measured
        "b": ProbeStatus("ok", energy={"joules": None, "kind": "estimate", "estimate_joules": 7.2e5}),
        "c": ProbeStatus("skipped", reason="n/a", energy={"joules": 1e9, "kind": "measured"}),
    }
    e = _audit_energy(statuses, EmissionsFactor(g_per_kwh=400.0, pue=1.5, source="test"))
    # By hand: 1 kWh x 400 g/kWh x 1.5 = 600 g; the estimate 0.2 kWh -> 120 g, never added in.
    assert e["joules"] == 3.6e6 and e["estimate_joules"] == 7.2e5
    assert e["emissions"]["g_co2e"] == pytest.approx(600.0)
    assert e["emissions"]["estimate_g_co2e"] == pytest.approx(120.0)
    assert e["emissions"]["pue"] == 1.5 and e["emissions"]["source"] == "test"
    # Nothing measured: no measured grams, never a zero.
    e = _audit_energy({"b": statuses["b"]}, EmissionsFactor(g_per_kwh=400.0))
    assert e["emissions"]["g_co2e"] is None and e["emissions"]["estimate_g_co2e"] == pytest.approx(80.0)
    assert "emissions" not in _audit_energy(statuses)


def test_spec_emissions_settings_are_validated(tmp_path):
    from audit.errors import SpecError

    spec = _spec(tmp_path, {"country": "FR", "pue": 1.2})
    f = spec.settings.emissions.factor()
    assert f.g_per_kwh == GRID_INTENSITY["FR"][2] and f.pue == 1.2 and f.source == GRID_SOURCE
    spec = _spec(tmp_path, {"g_per_kwh": 250, "source": "our utility's 2025 contract"})
    assert spec.settings.emissions.factor().source == "our utility's 2025 contract"
    with pytest.raises(SpecError, match="no grid intensity for country code 'XX'"):
        _spec(tmp_path, {"country": "XX"})
    with pytest.raises(SpecError, match="country code .* or g_per_kwh"):
        _spec(tmp_path, {"pue": 1.1})
    with pytest.raises(SpecError, match="pue"):
        _spec(tmp_path, {"country": "FR", "pue": 0.9})
    for bad in ({"g_per_kwh": float("inf")}, {"country": "FR", "pue": float("inf")}, {"g_per_kwh": float("nan")}):
        with pytest.raises(SpecError, match="g_per_kwh|pue"):
            _spec(tmp_path, bad)
    with pytest.raises(SpecError, match="give g_per_kwh instead"):
        _spec(tmp_path, {"country": "XX"})
    # The emissions settings change no finding: a resumed run may add or change them.
    assert _spec(tmp_path, {"country": "FR"}).fingerprint() == _spec(tmp_path, {"country": "DE", "pue": 1.3}).fingerprint()


def test_the_report_states_the_audit_emissions(tmp_path, monkeypatch):
    import audit.energy as energy_mod
    import tests.probes_for_tests  # noqa: F401  (registers test.constant)
    from audit.energy import EnergyReading
    from audit.findings import AuditReport
    from audit.render.markdown import render_markdown
    from audit.runner import run_audit
    from tests.fakes import tiny_text_generator

    class FixedMeter:  # a measured 7.2 kJ per probe window, as NVML would report it
        def start(self):
            pass

        def stop(self):
            return [EnergyReading(joules=7200.0, kind="measured", source="nvml", duration_s=1.0, device="GPU 0")]

    monkeypatch.setattr(energy_mod, "default_meter", lambda device: FixedMeter())
    spec = _spec(tmp_path, {"g_per_kwh": 500, "source": "spec value", "pue": 1.2})
    res = run_audit(spec, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", use_store=False,
                    subject_loader=lambda s, **kw: tiny_text_generator())
    em = res.report.energy["emissions"]
    assert em["g_co2e"] == pytest.approx(7200 / 3.6e6 * 500 * 1.2)   # 1.2 g by hand
    md = render_markdown(res.report)
    assert "Footprint" in md and "gCO2e" in md and "PUE 1.2" in md
    html = (tmp_path / "out" / "report.html").read_text()
    assert "emissions of the audit" in html
    again = AuditReport.load(tmp_path / "out" / "report.json")
    assert again.energy["emissions"]["g_co2e"] == pytest.approx(em["g_co2e"])
