"""Reading corpora: every format, and a clear InputError for every bad input."""

from __future__ import annotations

import json

import pytest

from audit.errors import InputError
from audit.subjects.textdata import Document, read_documents


def test_jsonl_ids_meta_and_stripping(tmp_path):
    p = tmp_path / "corpus.jsonl"
    p.write_text(
        '{"text": "  First doc.\\n", "genre": "news", "year": 2020, "ok": true, "tags": ["a"], "x": null}\n'
        "\n"
        '{"id": "b", "text": "Second."}\n'
        '{"id": 7, "text": "Third.", "genre": "fiction"}\n'
        '{"text": "   "}\n',
        encoding="utf-8",
    )
    docs = read_documents(p)
    assert docs == [
        Document("1", "First doc.", {"genre": "news", "year": "2020", "ok": "true"}),
        Document("b", "Second.", {}),
        Document("7", "Third.", {"genre": "fiction"}),
    ]


def test_jsonl_bad_lines_are_all_named(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(
        '{"text": "fine", "id": "a"}\n'
        "{not json}\n"
        '["a list"]\n'
        '{"body": "no text field"}\n'
        '{"text": 42}\n'
        '{"text": "dup", "id": "a"}\n'
        '{"text": "bad id", "id": [1]}\n',
        encoding="utf-8",
    )
    with pytest.raises(InputError) as err:
        read_documents(p)
    msg = str(err.value)
    assert "bad.jsonl" in msg and "6 bad lines" in msg
    assert "line 2: not valid JSON" in msg
    assert "line 3: expected an object with a 'text' field, got a list" in msg
    assert "line 4: no 'text' field (fields: body)" in msg
    assert "line 5: 'text' must be a string, got a number" in msg
    assert "line 6: duplicate id 'a' (first used by line 1)" in msg
    assert "line 7: 'id' must be a string or an integer, got a list" in msg


def test_jsonl_many_bad_lines_are_capped(tmp_path):
    p = tmp_path / "many.jsonl"
    p.write_text("oops\n" * 25, encoding="utf-8")
    msg = str(pytest.raises(InputError, read_documents, p).value)
    assert "25 bad lines" in msg and "line 10:" in msg and "line 11:" not in msg
    assert "... and 15 more" in msg


def test_txt_documents_split_on_blank_lines(tmp_path):
    p = tmp_path / "heldout.txt"
    p.write_bytes("\ufeffOne line.\nStill one.\r\n\r\n  \n\n\nTwo.\n \t\nThree — ünïcode.\n\n".encode("utf-8"))
    docs = read_documents(p)
    assert [(d.id, d.text) for d in docs] == [
        ("heldout-1", "One line.\nStill one."),
        ("heldout-2", "Two."),
        ("heldout-3", "Three — ünïcode."),
    ]
    assert all(d.meta == {} for d in docs)


def test_folder_of_txt_files(tmp_path):
    (tmp_path / "b.txt").write_text("Bee.\n\nStill bee.", encoding="utf-8")
    (tmp_path / "a.txt").write_text("  Ay.  ", encoding="utf-8")
    (tmp_path / "blank.txt").write_text("\n \n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    docs = read_documents(tmp_path)
    assert [(d.id, d.text) for d in docs] == [("a", "Ay."), ("b", "Bee.\n\nStill bee.")]


def test_json_list_of_strings_or_objects(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(["Alpha.", " ", {"text": "Beta.", "genre": "x"}, {"id": "z", "text": "Gamma."}]))
    assert read_documents(p) == [
        Document("0", "Alpha.", {}), Document("2", "Beta.", {"genre": "x"}), Document("z", "Gamma.", {}),
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"text": "not a list"}', "expected a JSON list of strings or of objects with a 'text' field, got an object"),
        ("[1, {\"txt\": \"a\"}]", "2 bad items"),
        ("[1, 2", "not valid JSON"),
    ],
)
def test_json_errors(tmp_path, content, expected):
    p = tmp_path / "c.json"
    p.write_text(content)
    msg = str(pytest.raises(InputError, read_documents, p).value)
    assert "c.json" in msg and expected in msg


def test_missing_file(tmp_path):
    msg = str(pytest.raises(InputError, read_documents, tmp_path / "nope.txt").value)
    assert msg == f"corpus not found: {tmp_path / 'nope.txt'}"


def test_not_utf8_names_file_and_byte_offset(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("café au lait".encode("latin-1"))
    msg = str(pytest.raises(InputError, read_documents, p).value)
    assert "latin1.txt" in msg and "not UTF-8" in msg and "byte 0xe9 at byte offset 3" in msg


def test_not_utf8_in_folder_names_the_file(tmp_path):
    (tmp_path / "good.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff")
    msg = str(pytest.raises(InputError, read_documents, tmp_path).value)
    assert "bad.txt" in msg and "byte offset 3" in msg


@pytest.mark.parametrize(
    ("name", "content"),
    [("blank.txt", " \n\n \t\n"), ("blank.jsonl", '{"text": " "}\n\n'), ("blank.json", '["", "  "]')],
)
def test_empty_corpus(tmp_path, name, content):
    p = tmp_path / name
    p.write_text(content, encoding="utf-8")
    msg = str(pytest.raises(InputError, read_documents, p).value)
    assert msg == f"{p}: empty corpus (no non-blank document)"


def test_empty_folder(tmp_path):
    msg = str(pytest.raises(InputError, read_documents, tmp_path).value)
    assert "empty corpus (the folder has no *.txt files)" in msg


def test_unsupported_extension(tmp_path):
    p = tmp_path / "data.csv"
    p.write_text("text\nhello\n")
    msg = str(pytest.raises(InputError, read_documents, p).value)
    assert "data.csv: unsupported corpus format '.csv'" in msg
    assert ".jsonl" in msg and ".txt" in msg and "folder" in msg
