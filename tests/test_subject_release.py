"""Closing one variant's subject before the next loads (audit.variants_run.LazySubject.close):
memory is freed either way, and the full garbage collection (0.2-0.4 s with torch imported) runs
only when a reference cycle holds the subject or its model."""

from __future__ import annotations

import gc
import weakref

import pytest

from audit import variants_run
from audit.variants_run import LazySubject


class _Subject:
    def __init__(self, model=None):
        self.model = model
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _Model:
    pass


def _holding(subject) -> LazySubject:
    lazy = LazySubject.__new__(LazySubject)  # only close() is under test: no run, no loader
    lazy._subject = subject
    return lazy


@pytest.fixture
def collections(monkeypatch):
    calls: list[int] = []
    real = gc.collect
    monkeypatch.setattr(variants_run.gc, "collect", lambda *a: calls.append(1) or real())
    return calls


def test_a_subject_freed_by_reference_counting_is_not_collected_for(collections):
    subject = _Subject(_Model())
    gone, model_gone = weakref.ref(subject), weakref.ref(subject.model)
    lazy = _holding(subject)
    del subject
    lazy.close()
    assert gone() is None and model_gone() is None and lazy._subject is None
    assert collections == []


def test_a_model_held_in_a_cycle_is_collected_before_the_next_variant_loads(collections):
    model = _Model()
    model.self_ref = model  # a cycle: reference counting alone never frees it
    subject = _Subject(model)
    model_gone = weakref.ref(model)
    lazy = _holding(subject)
    del subject, model
    lazy.close()
    assert collections == [1] and model_gone() is None


def test_a_subject_in_a_cycle_is_collected_and_closed(collections):
    subject = _Subject()
    subject.me = subject
    gone = weakref.ref(subject)
    lazy = _holding(subject)
    del subject
    lazy.close()
    assert collections == [1] and gone() is None
