"""Reading text corpora for the text probes (perplexity, bias, toxicity, ...).

One function, :func:`read_documents`, turns a corpus on disk into a list of
:class:`Document` records. Formats, chosen by the path:

- ``.jsonl`` / ``.ndjson``: one JSON object per line with a ``text`` string, an optional
  ``id`` (default: the line number) and any other scalar fields, kept as strings in
  ``meta`` (e.g. ``genre``, used to slice findings).
- ``.json``: a list of strings, or of objects like the JSONL lines (default id: the index).
- ``.txt``: documents separated by one or more blank lines; ids ``"<stem>-<n>"`` (from 1).
- a folder: every ``*.txt`` file directly inside it, in name order, one document each,
  with the file's stem as id.

Text is read as UTF-8 (a leading byte-order mark is dropped); every document is stripped
of leading and trailing whitespace and blank documents are dropped. Anything wrong with the
input raises :class:`~audit.errors.InputError` with one message naming the file and what is
wrong (for JSONL, every bad line up to ten).

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "corpus.jsonl"
    >>> _ = p.write_text('{"text": "Hello.", "genre": "chat"}\\n{"id": "b", "text": "Bye."}\\n')
    >>> [(d.id, d.text, dict(d.meta)) for d in read_documents(p)]
    [('1', 'Hello.', {'genre': 'chat'}), ('b', 'Bye.', {})]
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import InputError

__all__ = ["SUPPORTED_FORMATS", "Document", "read_documents"]

SUPPORTED_FORMATS = ".jsonl, .ndjson, .json, .txt, or a folder of .txt files"
_MAX_REPORTED = 10
_BLANK_LINES = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Document:
    """One document of a corpus.

    Attributes:
        id: unique within the corpus (line number, index, ``<stem>-<n>`` or file stem by default).
        text: the text, stripped of leading and trailing whitespace, never blank.
        meta: the other fields of the record, as strings (e.g. ``{"genre": "news"}``).
    """

    id: str
    text: str
    meta: Mapping[str, str] = field(default_factory=dict)


def read_documents(path: str | Path) -> list[Document]:
    """The non-blank documents of the corpus at ``path`` (see the module doc for formats).

    Raises:
        InputError: the path does not exist, is not UTF-8, has an unsupported extension,
            has malformed records, or holds no non-blank document.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"corpus not found: {path}")
    if path.is_dir():
        docs = _read_folder(path)
    else:
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            docs = _read_jsonl(path)
        elif suffix == ".json":
            docs = _read_json(path)
        elif suffix == ".txt":
            docs = _read_txt(path)
        else:
            raise InputError(
                f"{path}: unsupported corpus format '{path.suffix or '(no extension)'}'; "
                f"expected {SUPPORTED_FORMATS}"
            )
    if not docs:
        raise InputError(f"{path}: empty corpus (no non-blank document)")
    return docs


# -- formats ---------------------------------------------------------------------------------

def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the corpus: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: not UTF-8 text: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
            f"cannot be decoded ({exc.reason}); re-encode the file as UTF-8"
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def _read_txt(path: Path) -> list[Document]:
    chunks = (c.strip() for c in _BLANK_LINES.split(_read_text(path)))
    return [Document(f"{path.stem}-{i}", c, {}) for i, c in enumerate((c for c in chunks if c), start=1)]


def _read_folder(path: Path) -> list[Document]:
    files = sorted(p for p in path.glob("*.txt") if p.is_file())
    if not files:
        raise InputError(f"{path}: empty corpus (the folder has no *.txt files)")
    docs = []
    for f in files:
        text = _read_text(f).strip()
        if text:
            docs.append(Document(f.stem, text, {}))
    return docs


def _read_jsonl(path: Path) -> list[Document]:
    records: list[tuple[str, Any]] = []
    problems: list[str] = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((str(lineno), json.loads(line)))
        except json.JSONDecodeError as exc:
            problems.append(f"line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})")
    docs = _records_to_documents(records, "line", problems)
    _raise_problems(path, problems, "line")
    return docs


def _read_json(path: Path) -> list[Document]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, list):
        raise InputError(
            f"{path}: expected a JSON list of strings or of objects with a 'text' field, "
            f"got {_json_type(data)}"
        )
    problems: list[str] = []
    docs = _records_to_documents([(str(i), item) for i, item in enumerate(data)], "item", problems)
    _raise_problems(path, problems, "item")
    return docs


def _records_to_documents(records: list[tuple[str, Any]], unit: str, problems: list[str]) -> list[Document]:
    """Documents from ``(position, value)`` records; problems are appended, not raised."""
    docs: list[Document] = []
    seen: dict[str, str] = {}
    for pos, obj in records:
        where = f"{unit} {pos}"
        if isinstance(obj, str) and unit == "item":
            doc_id, text, meta = pos, obj, {}
        elif not isinstance(obj, dict):
            want = "a string or an object" if unit == "item" else "an object"
            problems.append(f"{where}: expected {want} with a 'text' field, got {_json_type(obj)}")
            continue
        else:
            text = obj.get("text")
            if "text" not in obj:
                problems.append(f"{where}: no 'text' field (fields: {', '.join(sorted(obj)) or 'none'})")
                continue
            if not isinstance(text, str):
                problems.append(f"{where}: 'text' must be a string, got {_json_type(text)}")
                continue
            raw_id = obj.get("id", pos)
            if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
                problems.append(f"{where}: 'id' must be a string or an integer, got {_json_type(raw_id)}")
                continue
            doc_id = str(raw_id)
            meta = {k: _scalar_str(v) for k, v in obj.items()
                    if k not in ("id", "text") and _scalar_str(v) is not None}
        text = text.strip()
        if not text:
            continue
        if doc_id in seen:
            problems.append(f"{where}: duplicate id '{doc_id}' (first used by {seen[doc_id]})")
            continue
        seen[doc_id] = where
        docs.append(Document(doc_id, text, meta))
    return docs


def _raise_problems(path: Path, problems: list[str], unit: str) -> None:
    if not problems:
        return
    shown = "\n  ".join(problems[:_MAX_REPORTED])
    more = f"\n  ... and {len(problems) - _MAX_REPORTED} more" if len(problems) > _MAX_REPORTED else ""
    noun = f"{unit}s" if len(problems) > 1 else unit
    raise InputError(f"{path}: {len(problems)} bad {noun}:\n  {shown}{more}")


def _scalar_str(v: Any) -> str | None:
    """Metadata values are strings (slice keys); other JSON scalars are written as in JSON."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return None  # null, lists and objects are not slice values


def _json_type(v: Any) -> str:
    """The JSON type of ``v`` with its article, for messages ("got a number")."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    return "an object"
