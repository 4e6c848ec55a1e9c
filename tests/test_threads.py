"""settings.threads: the audit runs with that many torch intra-op threads, records them, and
puts back the setting it found."""

from __future__ import annotations

import pytest
import torch

import tests.probes_for_tests  # noqa: F401  (registers test.constant)
from audit.errors import SpecError
from audit.runner import run_audit
from audit.spec import spec_from_dict
from audit.threads import intra_op_threads
from tests.fakes import tiny_text_generator


def _spec(tmp_path, **settings):
    return spec_from_dict({
        "name": "threads", "probes": [{"id": "test.constant"}],
        "subject": {"kind": "text-generator", "source": "python", "path": "tests.fakes:make_text_generator"},
        "settings": {"device": "cpu", **settings},
    }, base_dir=tmp_path)


def test_the_audit_runs_with_the_threads_asked_and_records_them(tmp_path):
    before = torch.get_num_threads()
    seen = []

    def loader(spec, **kw):
        seen.append(torch.get_num_threads())
        return tiny_text_generator()

    threads = 1 if before != 1 else 2
    r = run_audit(_spec(tmp_path, threads=threads), out_dir=tmp_path / "out", cache_dir=tmp_path / "c",
                  use_store=False, subject_loader=loader).report
    assert seen == [threads]
    assert r.environment["threads"]["intra_op"] == threads and r.environment["threads"]["requested"] == threads
    assert torch.get_num_threads() == before
    # Unset: torch's own setting, recorded as it is.
    r = run_audit(_spec(tmp_path), out_dir=tmp_path / "out2", cache_dir=tmp_path / "c", use_store=False,
                  subject_loader=loader).report
    assert r.environment["threads"]["requested"] is None and r.environment["threads"]["intra_op"] == before


@pytest.mark.parametrize("bad", [0, -2, "many"])
def test_bad_threads_are_a_spec_error(tmp_path, bad):
    with pytest.raises(SpecError, match="threads"):
        _spec(tmp_path, threads=bad)


def test_context_manager_restores_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), intra_op_threads(1) as info:
        assert info["intra_op"] == 1 == torch.get_num_threads()
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
