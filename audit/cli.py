"""The ``genai-audit`` command.

Exit codes: 0 every gate passed; 1 a gate failed; 2 the spec or an input is invalid;
3 a probe crashed. Errors are one clear line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from audit.cli_common import console as _console
from audit.cli_common import store_option as _store_option
from audit.cli_store import store
from audit.errors import EXIT_INVALID, EXIT_PROBE_CRASHED, AuditError

__all__ = ["cli", "main"]


class _State:
    debug = False


def _echo_err(msg: str) -> None:
    click.echo(msg, err=True)


def _load_baseline(path: str | None):
    if path is None:
        return None
    from audit.findings import AuditReport

    return AuditReport.load(path)


def _warn_unrelated(what: str, a: tuple[str, str, str], b: tuple[str, str, str]) -> None:
    """Warn when two reports (or a spec and a report) are of different audits or subjects."""
    from audit.compare import unrelated_reason

    why = unrelated_reason(a, b)
    if why:
        _echo_err(f"warning: {what}: {why}")


def _check_store(store_url: str | None, no_store: bool) -> None:
    """Open the store before the audit runs, so that a bad URL is exit 2 at once, not a
    warning after a long audit."""
    if no_store:
        return
    from audit.distributed import torchrun_env
    from audit.store import ReportStore, default_store_url

    env = torchrun_env()
    if env is not None and env[0] != 0:
        return  # rank 0 alone writes the store
    with ReportStore(store_url or default_store_url()):
        pass


def _not_a_folder(path: Path | None, what: str) -> None:
    if path is not None and path.is_dir():
        raise AuditError(f"{what} {path}: is a folder; expected a file path")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="genai-audit", prog_name="genai-audit")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
def cli(debug: bool) -> None:
    """Audit generative models for quality, bias, robustness, detectability and energy."""
    _State.debug = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def _run_and_report(spec, out: Path, *, baseline, resume, store_url, no_store, device, quiet) -> int:
    from audit.render import print_scorecard
    from audit.runner import run_audit

    def say(msg: str) -> None:
        if not quiet:
            _echo_err(msg)

    from audit.distributed import torchrun_env

    env = torchrun_env()
    if env is not None and env[0] != 0:
        quiet = True  # under torchrun, rank 0 speaks for the job
    result = run_audit(spec, out_dir=out, baseline=baseline, resume=resume, store_url=store_url,
                       use_store=not no_store, device=device, on_event=say)
    report = result.report
    if env is None or env[0] == 0:
        _say_if_nothing_measured(report)
    if not quiet:
        print_scorecard(report, _console())
        click.echo(f"Reports: {', '.join(str(p) for p in result.files.values())}")
        if result.stored_in:
            click.echo(f"Stored in: {result.stored_in}")
    for pid, st in report.probes.items():
        if st.status == "failed":
            _echo_err(f"error: probe {pid} failed: {st.error}")
    for v in report.variants:
        for pid, st in v.probes.items():
            if st.status == "failed":
                _echo_err(f"error: probe {pid} failed on variant {v.name}: {st.error}")
    return report.exit_code


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Folder for report.json/html/md and junit.xml [default: audit-out/NAME].")
@click.option("--baseline", type=click.Path(), default=None,
              help="A previous report.json; enables the max_drop/max_rise gates.")
@click.option("--resume", is_flag=True, help="Reuse the finished probes of an interrupted run in --out.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N (overrides the spec).")
@click.option("--no-store", is_flag=True, help="Do not ingest the report into the store.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors.")
@click.option("--nproc", type=click.IntRange(min=1), default=None, metavar="N",
              help="Run over N processes on this machine (one per GPU) through torchrun.")
@_store_option
def run(spec_path: Path, out: Path | None, baseline: str | None, resume: bool, device: str | None,
        no_store: bool, quiet: bool, nproc: int | None, store_url: str | None) -> None:
    """Run the audit described by SPEC (YAML or JSON) and write its reports."""
    from audit.spec import load_spec

    spec = load_spec(spec_path)
    base = _load_baseline(baseline)
    if base is not None:
        _warn_unrelated(f"--baseline {baseline}", (base.name, base.subject.name, base.subject.path),
                        (spec.name, spec.subject.name or spec.subject.path, spec.subject.path))
    _check_store(store_url, no_store)
    out = out or Path("audit-out") / _safe_name(spec.name)
    if nproc is not None and nproc > 1:
        args = [str(spec_path), "--out", str(out)]
        args += ["--baseline", str(baseline)] if baseline else []
        args += ["--device", device] if device else []
        args += ["--store", store_url] if store_url else []
        args += [flag for flag, on in (("--resume", resume), ("--no-store", no_store), ("-q", quiet)) if on]
        sys.exit(_launch_torchrun(nproc, args))
    sys.exit(_run_and_report(spec, out, baseline=base, resume=resume, store_url=store_url,
                             no_store=no_store, device=device, quiet=quiet))


def _say_if_nothing_measured(report: Any) -> None:
    if report.nothing_measured:
        reasons = "; ".join(f"{pid}: {st.reason}" for pid, st in report.probes.items())
        from audit.yamlsafe import cut

        _echo_err(f"error: nothing was measured: every probe was skipped as not applicable ({cut(reasons, 600)}). "
                  "Set `settings.allow_empty: true` in the spec to accept an empty audit.")


#: Set by ``run --nproc`` for its ranks: rank 0 writes the audit's exit code to this file, and
#: ranks exit 0 on a gate outcome (0 or 1) so that torchrun does not read "gate failed" as a crash.
_EXIT_FILE_ENV = "GENAI_AUDIT_EXIT_FILE"


def _launch_torchrun(nproc: int, run_args: list[str]) -> int:
    """Run ``python -m audit run ...`` in ``nproc`` processes on this machine (torchrun,
    standalone rendezvous); return the audit's exit code (3 when a rank crashed)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="genai-audit-") as tmp:
        code_file = Path(tmp) / "exit-code"
        env = {**os.environ, _EXIT_FILE_ENV: str(code_file)}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "audit", *(["--debug"] if _State.debug else []), "run", *run_args]
        try:
            rc = subprocess.run(cmd, env=env).returncode
        except KeyboardInterrupt:
            _echo_err("interrupted; rerun with --resume to reuse the finished probes")
            return 130
        try:
            return int(code_file.read_text().strip())
        except (OSError, ValueError):
            return EXIT_PROBE_CRASHED if rc != 0 else 0


def _exit(code: int) -> None:
    """``sys.exit(code)``, with the exit-code hand-over of ``run --nproc`` (see _EXIT_FILE_ENV)."""
    path = os.environ.get(_EXIT_FILE_ENV)
    if path:
        from audit.distributed import torchrun_env

        env = torchrun_env()
        if env is None or env[0] == 0:
            try:
                Path(path).write_text(str(code))
            except OSError:
                pass
        if code in (0, 1):
            code = 0
        raise _HandedOver(code)
    sys.exit(code)


class _HandedOver(SystemExit):
    """An exit whose code was already handed over to ``run --nproc``."""


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-.") or "audit"


@cli.command()
@click.argument("report_path", metavar="REPORT", type=click.Path(path_type=Path))
@click.option("--baseline", type=click.Path(), default=None, help="A previous report.json.")
@click.option("--spec", "spec_path", type=click.Path(path_type=Path), default=None,
              help="Take the gates from this spec instead of the report's own.")
@click.option("--junit", type=click.Path(path_type=Path), default=None, help="Write JUnit XML here.")
def check(report_path: Path, baseline: str | None, spec_path: Path | None, junit: Path | None) -> None:
    """Re-evaluate the gates of REPORT without rerunning any probe."""
    from audit.findings import AuditReport, atomic_write_text
    from audit.gates import evaluate_gates
    from audit.render import print_scorecard, render_junit
    from audit.spec import GateSpec, load_spec

    _not_a_folder(junit, "--junit")
    report = AuditReport.load(report_path)
    if spec_path is not None:
        gates = load_spec(spec_path).gates
    else:
        try:
            gates = tuple(GateSpec.model_validate(g) for g in report.spec.get("gates", ()))
        except Exception as exc:
            raise AuditError(f"{report_path}: the gates recorded in the report are invalid: {exc}") from None
    base = _load_baseline(baseline)
    if base is not None:
        _warn_unrelated(f"--baseline {baseline}", (base.name, base.subject.name, base.subject.path),
                        (report.name, report.subject.name, report.subject.path))
    report = report.with_gates(evaluate_gates(gates, report.findings, base.findings if base else None,
                                              probes=report.probes, variants=report.variants))
    print_scorecard(report, _console())
    _say_if_nothing_measured(report)
    if junit is not None:
        atomic_write_text(junit, render_junit(report))
    sys.exit(report.exit_code)


@cli.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--markdown", is_flag=True, help="Print a Markdown table (for a pull-request comment).")
@click.option("--side-by-side", "side", is_flag=True,
              help="Also show A (base) and B side by side with unpaired deltas (always when a run has variants).")
@click.option("--html", "html_path", type=click.Path(path_type=Path), default=None,
              help="Write the side-by-side view and the quality-versus-cost chart to this HTML file.")
def diff(a: Path, b: Path, markdown: bool, side: bool, html_path: Path | None) -> None:
    """Show how the findings changed from report A to report B."""
    from audit.compare import diff_markdown, diff_reports, render_diff_table
    from audit.findings import AuditReport

    _not_a_folder(html_path, "--html")
    ra, rb = AuditReport.load(a), AuditReport.load(b)
    _warn_unrelated(f"{a} and {b}", (ra.name, ra.subject.name, ra.subject.path),
                    (rb.name, rb.subject.name, rb.subject.path))
    changes = diff_reports(ra, rb)
    if markdown:
        click.echo(diff_markdown(changes))
    else:
        render_diff_table(changes, _console())
    _diff_side_by_side(ra, rb, markdown=markdown, show=side, html_path=html_path)


def _diff_side_by_side(ra: Any, rb: Any, *, markdown: bool, show: bool, html_path: Path | None) -> None:
    """The variant-by-variant part of ``diff``: printed when asked or when a run has variants."""
    from audit.compare import diff_views_markdown, render_diff_views, write_diff_html
    from audit.variant_view import has_variants

    if show or has_variants(ra) or has_variants(rb):
        if markdown:
            click.echo(diff_views_markdown(ra, rb))
        else:
            render_diff_views(ra, rb, _console())
    if html_path is not None:
        click.echo(f"wrote {write_diff_html(ra, rb, html_path)}", err=True)


@cli.command()
@click.argument("report_path", metavar="REPORT", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write the card here (e.g. MODEL_CARD.md) [default: print it].")
def card(report_path: Path, out: Path | None) -> None:
    """Write REPORT as the evaluation section of a Hugging Face model card (with model-index)."""
    from audit.findings import AuditReport, atomic_write_text
    from audit.render.card import render_card

    _not_a_folder(out, "--out")
    text = render_card(AuditReport.load(report_path))
    if out is None:
        click.echo(text, nl=False)
    else:
        atomic_write_text(out, text)
        _echo_err(f"model card written to {out}")


@cli.command("probes")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_probes(as_json: bool) -> None:
    """List every probe: summary, subject kinds, parameters and defaults."""
    from audit.findings import jsonable
    from audit.probe import probe_info, registry

    infos = [probe_info(pid) for pid in registry.ids()]
    if as_json:
        click.echo(json.dumps(jsonable([
            {"id": i.id, "summary": i.summary, "applies_to": list(i.applies_to),
             "requires": list(i.requires), "generations_only": i.generations_only,
             "params": [{"name": n, "type": t, "default": d, "help": h} for n, t, d, h in i.params]}
            for i in infos]), indent=2, default=str))
        return
    from rich.table import Table

    con = _console()
    for info in infos:
        con.print(f"[bold]{info.id}[/bold]  {info.summary}")
        con.print(f"  applies to: {', '.join(info.applies_to) or 'any subject'}")
        if info.generations_only:
            con.print("  needs only generations: runs on `source: generations` and on servers without logprobs")
        t = Table(show_header=True, header_style="dim", box=None, padding=(0, 2))
        for col in ("parameter", "type", "default", "help"):
            t.add_column(col)
        for n, ty, d, h in info.params:
            t.add_row(n, ty, repr(d), h)
        con.print(t)
        con.print()


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True,
              help="Folder for the demo's reports.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N [default: cuda if present].")
@click.option("--no-store", is_flag=True, help="Do not ingest the report into the store.")
@click.option("--only", "only", multiple=True, metavar="NAME",
              help="Run only the demo audits whose name contains NAME (repeatable).")
@_store_option
def demo(out: Path, device: str | None, no_store: bool, only: tuple[str, ...], store_url: str | None) -> None:
    """Audit real small models from the offline bundles: every probe, end to end."""
    from audit.demo import DEMO_PARTS, build_demo_specs, write_model_card
    from audit.runner import default_cache_dir

    _check_store(store_url, no_store)
    # Match --only against the parts' entries first, so unselected parts train nothing.
    parts = tuple(p for p in DEMO_PARTS if any(o in p for o in only)) or DEMO_PARTS
    specs = build_demo_specs(out, workdir=default_cache_dir() / "demo", parts=parts)
    if only:
        names = [s.name for s, _ in specs]
        specs = [(s, f) for s, f in specs if any(o in s.name for o in only)]
        if not specs:
            raise AuditError(f"--only {', '.join(only)}: no demo audit matches; the demo audits are: "
                             f"{', '.join(names)}")
    codes = []
    for spec, folder in specs:
        click.echo(f"== {spec.name}: spec in {folder / 'audit.yaml'} (copy it to audit your own model)")
        codes.append(_run_and_report(spec, folder, baseline=None, resume=False, store_url=store_url,
                                     no_store=no_store, device=device, quiet=False))
        write_model_card(folder)
    click.echo("Open the HTML reports:")
    for spec, folder in specs:
        click.echo(f"  {(folder / 'report.html').resolve().as_uri()}")
    store_arg = f" --store {store_url}" if store_url else ""
    if not no_store:
        click.echo(f"Open the dashboard: genai-audit dashboard{store_arg}   (http://127.0.0.1:8501)")
    click.echo(f"See the history of audits: genai-audit store list{store_arg}")
    # The most severe outcome: a crash (3) over invalid input (2) over a failed gate (1).
    sys.exit(max(codes, default=0))


@cli.command()
def schema() -> None:
    """Print the JSON Schema of report.json."""
    from audit.findings import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


#: Commands that live beside the core ("module:attr" of a click command), added when their
#: module is installed. The dashboard, for one, never imports the probes.
OPTIONAL_COMMANDS: tuple[str, ...] = ("dashboard.cli:dashboard", "probes.quality.cli:stats", "probes.human.cli:rate")


def _add_optional_commands() -> None:
    import importlib
    import importlib.util

    for entry in OPTIONAL_COMMANDS:
        module, _, attr = entry.partition(":")
        if importlib.util.find_spec(module.split(".")[0]) is None:
            continue
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            found = None
        if found is None:
            continue
        cli.add_command(getattr(importlib.import_module(module), attr))


_add_optional_commands()
cli.add_command(store)


def _bounded(message: str, *, max_lines: int = 60, max_line: int = 1000) -> str:
    """An error message cut to a size a terminal can show (each line and the line count)."""
    from audit.yamlsafe import cut

    lines = message.splitlines() or [""]
    shown = [cut(line, max_line) for line in lines[:max_lines]]
    if len(lines) > max_lines:
        shown.append(f"... and {len(lines) - max_lines} more lines")
    return "\n".join(shown)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the CLI and turns our errors into one line and an exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        rv = cli.main(args=argv, prog_name="genai-audit", standalone_mode=False)
        _exit(rv if isinstance(rv, int) else 0)
    except SystemExit as exc:
        if isinstance(exc, _HandedOver) or not os.environ.get(_EXIT_FILE_ENV):
            raise
        _exit(exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_INVALID))
    except click.exceptions.Exit as exc:
        _exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_INVALID)  # usage and file errors are invalid input; never 1 (a gate failed)
    except click.exceptions.Abort as exc:
        # click turns Ctrl-C into Abort when not in standalone mode.
        if isinstance(exc.__context__, KeyboardInterrupt):
            _echo_err("interrupted; rerun with --resume to reuse the finished probes")
        else:
            _echo_err("aborted")
        sys.exit(130)
    except AuditError as exc:
        if _State.debug:
            traceback.print_exc()
        _echo_err(f"error: {_bounded(str(exc))}")
        _exit(exc.exit_code)
    except KeyboardInterrupt:
        _echo_err("interrupted; rerun with --resume to reuse the finished probes")
        sys.exit(130)
    except Exception as exc:  # a bug of ours, not the user's input: never exit 1 (a gate failed)
        if _State.debug:
            traceback.print_exc()
        _echo_err(f"error: internal error: {type(exc).__name__}: {_bounded(str(exc))} "
                  "(rerun with --debug for the traceback)")
        _exit(EXIT_PROBE_CRASHED)


if __name__ == "__main__":  # pragma: no cover
    main()
