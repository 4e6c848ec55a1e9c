"""Benchmark: the fixed costs of an audit, apart from the probes' own work.

For a ``quality.perplexity`` audit of a 2-layer Llama (``tests.fakes``, saved as a transformers
folder) on the demo corpus, each in a fresh interpreter:

* the import time of ``audit``, of the CLI module, of ``genai-audit --help`` and of
  ``genai-audit probes`` (wall time, and the top-level modules that cost most by
  ``python -X importtime``);
* transformers' ``from_pretrained`` of the tiny model (and the import of transformers
  before it), and ``load_subject`` (audit's loader: hashing, tokenizer, checks);
* the CLI run ``genai-audit run spec --out DIR --no-store``, timed from the process start to
  each progress line it prints: the subject load starting (imports and the spec), the
  probe starting (the model loaded: the time to first probe), the probe done, and the exit
  (the four reports written).

Prints one table with the load; ``--json-out`` writes the figures. Report writing for a few
hundred findings on its own: ``bench/bench_report_writing.py``.

    .venv/bin/python bench/bench_fixed_costs.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}

_FROM_PRETRAINED = """
import json, sys, tempfile, time
t0 = time.perf_counter()
import transformers
t1 = time.perf_counter()
m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1])
t2 = time.perf_counter()
tok = transformers.AutoTokenizer.from_pretrained(sys.argv[1])
t3 = time.perf_counter()
from audit.spec import SubjectSpec
from audit.subjects.loading import load_subject
t4 = time.perf_counter()
load_subject(SubjectSpec(kind="text-generator", source="hf", path=sys.argv[1]), device="cpu",
             cache_dir=tempfile.mkdtemp())
t5 = time.perf_counter()
print(json.dumps({"import_transformers_s": t1 - t0, "model_from_pretrained_s": t2 - t1,
                  "tokenizer_from_pretrained_s": t3 - t2, "load_subject_s": t5 - t4}))
"""


def top_imports(stderr: str, k: int = 6) -> list[tuple[str, float]]:
    """The ``k`` top-level modules with the largest cumulative import time (seconds)."""
    rows = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m and not m.group(3):  # depth 0: imported by the program itself
            rows.append((m.group(4), int(m.group(2)) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:k]


def timed_command(argv: list[str], *, importtime: bool = False, cwd: Path = REPO) -> dict:
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), *argv]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out = {"wall_s": wall, "stdout": proc.stdout}
    if importtime:
        out["top_imports"] = top_imports(proc.stderr)
    return out


def audit_timeline(spec: Path, out: Path) -> dict:
    """Run the CLI and stamp each progress line with the seconds since the process started."""
    cmd = [sys.executable, "-m", "audit", "run", str(spec), "--out", str(out), "--no-store"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marks: dict[str, float] = {}
    lines = []
    for line in proc.stdout:
        now = time.perf_counter() - t0
        lines.append(line.rstrip())
        if "loading text-generator" in line:
            marks.setdefault("subject_load_starts_s", now)
        elif "quality.perplexity: running" in line:
            marks.setdefault("first_probe_starts_s", now)
        elif "quality.perplexity: ok" in line:
            marks.setdefault("probe_done_s", now)
    rc = proc.wait()
    marks["exit_s"] = time.perf_counter() - t0
    if rc not in (0, 1) or len(marks) < 4:
        raise SystemExit(f"the audit failed (exit {rc}): " + "\n".join(lines[-30:]))
    return marks


def write_spec(folder: Path, model: Path) -> Path:
    import yaml

    from audit.demo import CORPUS

    spec = {"name": "fixed-costs", "subject": {"kind": "text-generator", "source": "hf", "path": str(model)},
            "data": {"texts": str(CORPUS)},
            "probes": [{"id": "quality.perplexity", "params": {"max_length": 128, "stride": 64, "batch_size": 8}}],
            "settings": {"seed": 0}}
    path = folder / "audit.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from tests.fakes import save_tiny_model

    res: dict = {"load_avg_start": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_tiny_model(tmp / "tiny-llama")
        spec = write_spec(tmp, model)
        for label, argv_ in (("import audit", ["-c", "import audit"]), ("import audit.cli", ["-c", "import audit.cli"]),
                             ("genai-audit --help", ["-m", "audit", "--help"]),
                             ("genai-audit probes", ["-m", "audit", "probes"])):
            plain = timed_command(argv_)
            traced = timed_command(argv_, importtime=True)
            res[label] = {"wall_s": plain["wall_s"], "top_imports": traced["top_imports"]}
        res["from_pretrained"] = json.loads(timed_command(["-c", _FROM_PRETRAINED, str(model)])["stdout"])
        res["audit"] = audit_timeline(spec, tmp / "out")
        traced = timed_command(["-m", "audit", "run", str(spec), "--out", str(tmp / "out2"), "--no-store"],
                               importtime=True)
        res["audit_top_imports"] = traced["top_imports"]
    res["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    _print(res)
    if args.json_out:
        args.json_out.write_text(json.dumps(res, indent=2))
    return res


def _print(res: dict) -> None:
    print(f"load {res['load_avg_start']} at the start, {res['load_avg_end']} at the end")
    for label in ("import audit", "import audit.cli", "genai-audit --help", "genai-audit probes"):
        tops = ", ".join(f"{m} {s:.2f}" for m, s in res[label]["top_imports"][:4])
        print(f"  {label:<22} {res[label]['wall_s']:6.2f} s wall   top imports (s): {tops}")
    fp = res["from_pretrained"]
    print(f"  import transformers    {fp['import_transformers_s']:6.2f} s; from_pretrained: model "
          f"{fp['model_from_pretrained_s']:.2f} s, tokenizer {fp['tokenizer_from_pretrained_s']:.2f} s; "
          f"load_subject {fp['load_subject_s']:.2f} s")
    a = res["audit"]
    print(f"  audit run: subject load starts at {a['subject_load_starts_s']:.2f} s, first probe at "
          f"{a['first_probe_starts_s']:.2f} s, probe done at {a['probe_done_s']:.2f} s, exit at {a['exit_s']:.2f} s "
          f"(reports and teardown {a['exit_s'] - a['probe_done_s']:.2f} s)")
    print("  audit run top imports (s): " + ", ".join(f"{m} {s:.2f}" for m, s in res["audit_top_imports"]))


if __name__ == "__main__":
    main()
