"""The example specs users copy must stay valid as the spec and probes evolve."""

from pathlib import Path

import pytest

from audit.spec import load_spec

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_spec_is_valid(path):
    spec = load_spec(path)
    assert spec.data_paths()["texts"].is_file()  # the examples point at the shipped corpus
