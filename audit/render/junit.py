"""JUnit XML, so that CI systems list each gate (and each crashed probe) as a test.

Two suites under ``<testsuites>``: ``genai-audit gates`` with one test case per gate
(``<failure>`` when it failed, ``<skipped>`` when it was skipped), and ``genai-audit probes``
with one test case per probe (``<error>`` when it crashed, ``<skipped>`` when it did not
apply). Characters that XML 1.0 forbids (e.g. the ANSI colour codes of a traceback) are
dropped, so the file always parses.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from audit.findings import AuditReport
from audit.render.format import first_line, format_number, gate_label

__all__ = ["render_junit"]

GATES_SUITE = "genai-audit gates"
PROBES_SUITE = "genai-audit probes"

# XML 1.0 allows #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF].
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _clean(text: object) -> str:
    return _NOT_XML.sub("", _ANSI.sub("", str(text)))


def render_junit(report: AuditReport) -> str:
    """Render the gates and probes of a report as JUnit XML.

    Args:
        report: the audit to render.

    Returns:
        The XML document as text, with an XML declaration.

    Example:
        >>> import xml.etree.ElementTree as ET
        >>> from audit.findings import AuditReport, GateResult, SubjectIdentity
        >>> r = AuditReport(name="demo", subject=SubjectIdentity(name="m", kind="classifier", source="python"),
        ...                 gates=(GateResult(metric="p/acc", passed=False, status="failed", message="0.7 < 0.8"),))
        >>> ET.fromstring(render_junit(r)).find("testsuite").get("failures")
        '1'
    """
    root = ET.Element("testsuites", {"name": _clean(f"genai-audit: {report.name}")})

    gates = ET.SubElement(root, "testsuite", {"name": GATES_SUITE, "timestamp": _clean(report.created_at)})
    for g in report.gates:
        case = ET.SubElement(gates, "testcase", {"classname": _clean(report.name), "name": _clean(gate_label(g))})
        message = _clean(g.message)
        if g.status == "failed":
            failure = ET.SubElement(case, "failure", {"message": message, "type": "GateFailed"})
            failure.text = _clean(
                f"{g.metric}: value {format_number(g.value)}, bound {format_number(g.bound)}\n{g.message}"
            )
        elif g.status == "skipped":
            ET.SubElement(case, "skipped", {"message": message})
        else:
            ET.SubElement(case, "system-out").text = message
    _count(gates)

    probes = ET.SubElement(root, "testsuite", {"name": PROBES_SUITE, "timestamp": _clean(report.created_at)})
    # Each variant's probes too (``spec.variants``): a probe that crashed on a variant fails the run.
    runs = [*((pid, p) for pid, p in report.probes.items()),
            *((f"{pid} · variant {v.name}", p) for v in report.variants for pid, p in v.probes.items())]
    for probe_id, p in runs:
        attrs = {"classname": _clean(report.name), "name": _clean(probe_id)}
        if p.wall_s is not None:
            attrs["time"] = f"{p.wall_s:.3f}"
        case = ET.SubElement(probes, "testcase", attrs)
        if p.status == "failed":
            error_text = p.error or "probe crashed (no error recorded)"
            kind = first_line(error_text).partition(":")[0].strip()
            error = ET.SubElement(
                case,
                "error",
                {"message": _clean(first_line(error_text)), "type": _clean(kind if _is_dotted_name(kind) else "ProbeCrashed")},
            )
            error.text = _clean(p.traceback or error_text)
        elif p.status == "skipped":
            ET.SubElement(case, "skipped", {"message": _clean(p.reason or "skipped (no reason recorded)")})
    _count(probes)

    totals = {k: sum(int(s.get(k, "0")) for s in root) for k in ("tests", "failures", "errors", "skipped")}
    for k, v in totals.items():
        root.set(k, str(v))
    time_total = sum(p.wall_s for _, p in runs if p.wall_s is not None)
    root.set("time", f"{time_total:.3f}")

    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _is_dotted_name(text: str) -> bool:
    """``RuntimeError`` or ``torch.OutOfMemoryError``: the error line names an exception type."""
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def _count(suite: ET.Element) -> None:
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(c.find("failure") is not None for c in cases)))
    suite.set("errors", str(sum(c.find("error") is not None for c in cases)))
    suite.set("skipped", str(sum(c.find("skipped") is not None for c in cases)))
    times = [float(c.get("time")) for c in cases if c.get("time") is not None]
    suite.set("time", f"{sum(times):.3f}")
