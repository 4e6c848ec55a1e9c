"""Fixed costs: what the CLI and a perplexity audit import before any work (bench/bench_fixed_costs.py
times them). Each check runs in a fresh interpreter, since the test session has imported everything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imported(code: str, modules: tuple[str, ...]) -> dict[str, bool]:
    probe = f"{code}\nimport sys\nprint(' '.join(str(m in sys.modules) for m in {modules!r}))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    return dict(zip(modules, (v == "True" for v in out)))


def test_the_cli_module_imports_no_torch_transformers_or_numpy():
    got = _imported("import audit.cli", ("torch", "transformers", "numpy", "scipy"))
    assert got == {"torch": False, "transformers": False, "numpy": False, "scipy": False}


def test_audit_stats_and_the_perplexity_probe_do_not_import_scipy_stats():
    # audit.stats (and audit.units, which the gates import) import scipy.stats only inside the function that needs it (bootstrap_ci, SciPy's bootstrap):
    # the perplexity probe's intervals and Wilson's interval do not.
    code = ("import audit.stats, audit.units, audit.gates, probes.quality.perplexity\n"
            "audit.stats.wilson_interval(3, 10)\n"
            "audit.stats.bootstrap_ratio_ci([1.0, 2.0, 3.0], [1, 1, 1], n_resamples=50)")
    assert _imported(code, ("scipy.stats",)) == {"scipy.stats": False}
    # ...and the one function that needs it still works once it is called.
    assert _imported("import audit.stats\naudit.stats.bootstrap_ci([1.0, 2.0, 4.0], n_resamples=50)",
                     ("scipy.stats",)) == {"scipy.stats": True}
