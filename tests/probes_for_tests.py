"""Probes used by runner and CLI tests: one that works, one that crashes, one that is
interrupted, one for another subject kind, one that counts its calls."""

from __future__ import annotations

from dataclasses import dataclass

from audit.errors import InputError
from audit.findings import Finding, Interval
from audit.probe import registry

CALLS: dict[str, int] = {}


@dataclass(frozen=True)
class Constant:
    """Reports a constant with an interval (test probe)."""

    applies_to = ("text-generator",)
    value: float = 10.0

    def run(self, subject, ctx):
        CALLS[self.id] = CALLS.get(self.id, 0) + 1
        return [Finding(probe=self.id, metric="score", value=self.value, higher_is_better=True,
                        ci=Interval(self.value - 1, self.value + 1, "test"), n=10)]


@dataclass(frozen=True)
class Crash:
    """Always raises (test probe)."""

    applies_to = ("text-generator",)

    def run(self, subject, ctx):
        raise RuntimeError("boom: the probe fell over")


@dataclass(frozen=True)
class BadInput:
    """Raises an InputError, as a probe does on an empty corpus (test probe)."""

    applies_to = ("text-generator",)

    def run(self, subject, ctx):
        raise InputError("corpus.txt: no documents (the file is empty)")


@dataclass(frozen=True)
class Interrupt:
    """Raises KeyboardInterrupt unless told not to (test probe)."""

    applies_to = ("text-generator",)
    interrupt: bool = True

    def run(self, subject, ctx):
        if CALLS.get("interrupt-armed", 1):
            CALLS["interrupt-armed"] = 0
            raise KeyboardInterrupt
        return [Finding(probe=self.id, metric="done", value=1.0, higher_is_better=True)]


@dataclass(frozen=True)
class ImageOnly:
    """Applies to image generators only (test probe)."""

    applies_to = ("image-generator",)

    def run(self, subject, ctx):
        raise AssertionError("must not run on a text generator")


def register_all() -> None:
    for pid, cls in [("test.constant", Constant), ("test.crash", Crash), ("test.bad_input", BadInput),
                     ("test.interrupt", Interrupt), ("test.image_only", ImageOnly)]:
        registry.register(pid, cls, replace=True)


register_all()
