"""Galleries: the thumbnails and text samples probes put in their evidence, for people to see.

Probes (``quality.visual_inspection``, ``privacy.image_replication``) save small PNG files
under the run's folder (``OUT/artefacts/<probe id>/``) and describe them in a finding's
``evidence["gallery"]`` (see :mod:`probes.thumbnails` for the layout); text probes put
sampled generations in ``evidence["samples"]`` (``[{"prompt", "generations": [...]}]``, as
``quality.visual_inspection`` does) or ``evidence["examples"]`` (``[{"prompt", "samples":
[...]}]``, as ``quality.text_diversity`` does).

* :func:`gallery_html` renders one probe's galleries as an HTML fragment with every image
  embedded as a ``data:image/png;base64`` URI, so the page never links outside itself. It is
  registered as a section of :func:`audit.render.html.render_html`, which reads the images
  from the folder set by :func:`images_from` (``write_reports`` sets the report's folder):
  ``with images_from(report_dir): html = render_html(report)``.
* :func:`read_galleries` reads them back as plain data with the PNG bytes, for the
  dashboard (``st.image(png)`` per image, ``st.table`` per text sample).

Only files inside the report's folder are read: an image path that is absolute, climbs out
with ``..``, is not a ``.png`` or does not start with the PNG signature is shown as
missing, never read, so a report from elsewhere cannot make the renderer embed other files.

Example:
    >>> from audit.findings import Finding
    >>> f = Finding(probe="p", metric="m", value=0.0, higher_is_better=False,
    ...             evidence={"samples": [{"prompt": "Hi", "generations": ["<b>there</b>"]}]})
    >>> "&lt;b&gt;there&lt;/b&gt;" in gallery_html([f], base_dir=None)
    True
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from audit.findings import AuditReport, Finding
from audit.render.sections import Section, register_section

__all__ = ["GalleryImage", "GallerySection", "gallery_html", "images_from", "read_galleries", "read_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_BYTES = 512 * 1024
_MAX_SAMPLE_ROWS = 50
_BASE_DIR: contextvars.ContextVar[Any] = contextvars.ContextVar("genai_audit_gallery_dir", default=None)

_STYLE = """<style>
.ga-gallery h4 { margin: 14px 0 6px; font-size: 13.5px; }
.ga-cols { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 18px; }
.ga-col > .ga-coltitle { font-size: 12px; color: #656d76; margin-bottom: 4px; }
.ga-thumbs { display: flex; flex-wrap: wrap; gap: 4px; }
.ga-thumb, .ga-pair { margin: 0; padding: 2px; border: 1px solid #d0d7de; border-radius: 4px; background: #fff; }
.ga-thumb img, .ga-pair img { display: block; image-rendering: pixelated; width: 64px; height: auto; }
.ga-pair { display: inline-flex; flex-direction: column; margin: 0 6px 6px 0; }
.ga-pair .ga-two { display: flex; gap: 2px; }
.ga-gallery figcaption { font-size: 10.5px; color: #656d76; max-width: 132px; overflow-wrap: anywhere; }
.ga-thumb figcaption { max-width: 64px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.ga-missing { width: 64px; height: 64px; display: flex; align-items: center; justify-content: center;
  font-size: 10px; color: #656d76; background: #f6f8fa; }
</style>"""


@dataclass(frozen=True)
class GalleryImage:
    """One thumbnail: its path relative to the report folder, caption and PNG bytes (None if unreadable)."""

    src: str
    caption: str = ""
    png: bytes | None = None


@dataclass(frozen=True)
class GallerySection:
    """A titled group: ``columns`` (title -> images, shown side by side), ``pairs``
    ((a, b, caption): a generated image and its neighbour), or ``samples`` (text rows)."""

    probe: str
    title: str
    columns: tuple[tuple[str, tuple[GalleryImage, ...]], ...] = ()
    pairs: tuple[tuple[GalleryImage, GalleryImage, str], ...] = ()
    samples: tuple[Mapping[str, Any], ...] = ()
    notes: tuple[str, ...] = field(default=())


def read_png(base_dir: str | os.PathLike[str] | None, src: Any) -> bytes | None:
    """The bytes of the PNG ``src`` (relative to ``base_dir``), or None when there is no base
    folder, the path leaves it, or the file is missing, too large or not a PNG."""
    if base_dir is None or not isinstance(src, str) or not src or src.startswith(("/", "\\")) or ":" in src:
        return None
    base = Path(base_dir).resolve()
    path = (base / src).resolve()
    if base not in path.parents or path.suffix.lower() != ".png":
        return None
    try:
        if not path.is_file() or path.stat().st_size > MAX_PNG_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    return data if data.startswith(PNG_SIGNATURE) else None


def _image(base_dir: Any, rec: Any) -> GalleryImage:
    rec = rec if isinstance(rec, Mapping) else {}
    src = str(rec.get("src", ""))
    return GalleryImage(src=src, caption=str(rec.get("caption", "")), png=read_png(base_dir, src))


def _sections_of(f: Finding, base_dir: Any) -> list[GallerySection]:
    out: list[GallerySection] = []
    ev = f.evidence if isinstance(f.evidence, Mapping) else {}
    gallery = ev.get("gallery")
    note = str(ev["gallery_note"]) if ev.get("gallery_note") else ""
    sections = gallery.get("sections") if isinstance(gallery, Mapping) else None
    for sec in sections if isinstance(sections, list) else []:
        if not isinstance(sec, Mapping):
            continue
        cols = tuple((str(c.get("title", "")), tuple(_image(base_dir, im) for im in c.get("images") or []))
                     for c in sec.get("columns") or [] if isinstance(c, Mapping))
        pairs = tuple((_image(base_dir, p.get("a")), _image(base_dir, p.get("b")), str(p.get("caption", "")))
                      for p in sec.get("pairs") or [] if isinstance(p, Mapping))
        out.append(GallerySection(probe=f.probe, title=str(sec.get("title", "")), columns=cols, pairs=pairs))
    samples = ev.get("samples")
    if not isinstance(samples, list):  # quality.text_diversity's examples: {"prompt", "samples": [...]}
        examples = ev.get("examples")
        samples = [{"prompt": e.get("prompt", ""), "generations": e.get("samples")} for e in examples
                   if isinstance(e, Mapping) and isinstance(e.get("samples"), list)] if isinstance(examples, list) else []
    if samples:
        rows = tuple(s for s in samples[:_MAX_SAMPLE_ROWS] if isinstance(s, Mapping))
        out.append(GallerySection(probe=f.probe, title=f"sampled generations ({f.metric})", samples=rows))
    if out and note:
        out[-1] = GallerySection(**{**out[-1].__dict__, "notes": (note,)})
    elif note and not out:
        out.append(GallerySection(probe=f.probe, title="images", notes=(note,)))
    return out


def read_galleries(report: AuditReport, base_dir: str | os.PathLike[str] | None) -> list[GallerySection]:
    """Every gallery of the report, in finding order, with the PNG bytes read from ``base_dir``
    (the folder holding ``report.json``); for the dashboard.

    Example:
        >>> for sec in read_galleries(report, "audit-out"):              # doctest: +SKIP
        ...     st.subheader(sec.title)
        ...     for title, images in sec.columns:
        ...         st.image([im.png for im in images if im.png], caption=[im.caption for im in images if im.png])
    """
    return [s for f in report.findings for s in _sections_of(f, base_dir)]


def _img_html(im: GalleryImage) -> Markup:
    cap = escape(im.caption)
    if im.png is None:
        return Markup('<figure class="ga-thumb"><div class="ga-missing">not found</div>'
                      '<figcaption>{}</figcaption></figure>').format(cap)
    uri = "data:image/png;base64," + base64.b64encode(im.png).decode("ascii")
    return Markup('<figure class="ga-thumb" title="{}"><img src="{}" alt="{}"><figcaption>{}</figcaption>'
                  '</figure>').format(cap, uri, cap, cap)


def _section_html(sec: GallerySection) -> Markup:
    parts = [Markup("<h4>{}</h4>").format(sec.title)] if sec.title else []
    if sec.columns:
        cols = [Markup('<div class="ga-col"><div class="ga-coltitle">{}</div><div class="ga-thumbs">{}</div></div>')
                .format(title, Markup("").join(_img_html(im) for im in images)) for title, images in sec.columns]
        parts.append(Markup('<div class="ga-cols">{}</div>').format(Markup("").join(cols)))
    for a, b, cap in sec.pairs:
        parts.append(Markup('<figure class="ga-pair"><div class="ga-two">{}{}</div><figcaption>{}</figcaption>'
                            '</figure>').format(_img_html(a), _img_html(b), cap))
    if sec.samples:
        rows = [Markup("<tr><td>{}</td><td>{}</td></tr>").format(
            s.get("prompt", ""), Markup("").join(Markup("<div>{}</div>").format(g) for g in s.get("generations") or []))
            for s in sec.samples]
        parts.append(Markup("<table><thead><tr><th>Prompt</th><th>Sampled generations</th></tr></thead>"
                            "<tbody>{}</tbody></table>").format(Markup("").join(rows)))
    for note in sec.notes:
        parts.append(Markup('<p class="note">{}</p>').format(note))
    return Markup("").join(parts)


def gallery_html(findings: Iterable[Finding], base_dir: str | os.PathLike[str] | None) -> Markup:
    """One probe's galleries as a self-contained HTML fragment (empty when there are none).

    Args:
        findings: the probe's findings.
        base_dir: the report's folder, where the thumbnails are; None: images show as missing.
    """
    sections = [s for f in findings for s in _sections_of(f, base_dir)]
    if not sections:
        return Markup("")
    body = Markup("").join(_section_html(s) for s in sections)
    return Markup('{}<div class="ga-gallery">{}</div>').format(Markup(_STYLE), body)


@contextlib.contextmanager
def images_from(base_dir: str | os.PathLike[str] | None) -> Iterator[None]:
    """Within the block, HTML reports embed the galleries' images from ``base_dir`` (the folder
    holding ``report.json``); outside any block they show as missing."""
    token = _BASE_DIR.set(base_dir)
    try:
        yield
    finally:
        _BASE_DIR.reset(token)


def _section_hook(probe_id: str, findings: list[Finding], report: AuditReport) -> list[Any]:
    html = gallery_html(findings, _BASE_DIR.get())
    return [Section("Images and samples", html)] if html else []


register_section(_section_hook)
