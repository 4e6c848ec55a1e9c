"""The probe registry, parameter validation and the context probes get."""

from dataclasses import dataclass, field

import pytest

from audit.errors import InputError, SpecError
from audit.findings import Finding
from audit.probe import ProbeContext, Registry, build_probe, probe_info, registry


@dataclass(frozen=True)
class Echo:
    """Echoes its parameters as findings (a test probe)."""

    applies_to = ("text-generator",)
    scale: float = 1.0
    steps: int = field(default=3, metadata={"help": "how many"})
    flag: bool = False
    names: tuple[str, ...] = ("a",)

    def __post_init__(self):
        if self.steps < 1:
            raise SpecError(f"test.echo: steps must be >= 1, got {self.steps}")

    def run(self, subject, ctx):
        return [Finding(probe=self.id, metric="scale", value=self.scale, higher_is_better=True)]


@pytest.fixture
def echo_registered():
    registry.register("test.echo", Echo, replace=True)
    yield
    registry._entries.pop("test.echo", None)


def test_build_probe_validates_types(echo_registered):
    p = build_probe("test.echo", {"scale": 2, "steps": 4, "names": ["x", "y"]})
    assert p.scale == 2.0 and isinstance(p.scale, float) and p.names == ("x", "y") and p.id == "test.echo"
    for params, msg in [
        ({"scale": "2"}, "params.scale: expected a number, got '2'"),
        ({"steps": 1.5}, "params.steps: expected an integer, got 1.5"),
        ({"flag": "yes"}, "params.flag: expected true or false, got 'yes'"),
        ({"flag": 2}, "params.flag: expected true or false, got 2"),
        ({"step": 2}, "unknown parameter for probe 'test.echo'. Did you mean 'steps'?"),
        ({"steps": 0}, "steps must be >= 1, got 0"),
    ]:
        with pytest.raises(SpecError) as err:
            build_probe("test.echo", params, where="a.yaml: probes[1]")
        assert msg in str(err.value) and str(err.value).startswith("a.yaml: probes[1]")


def test_unknown_probe_suggests(echo_registered):
    with pytest.raises(SpecError, match="unknown probe 'test.ecco'. Did you mean 'test.echo'?"):
        registry.get("test.ecco")


def test_lazy_entries_and_bad_targets():
    r = Registry(group="genai_audit.test-none")
    r._discovered = True  # only what we register here
    r.register("lazy.echo", "tests.test_probe_registry:Echo")
    assert r.get("lazy.echo") is Echo
    r.register("lazy.missing", "tests.nope:Nothing")
    with pytest.raises(SpecError, match="could not be loaded"):
        r.get("lazy.missing")
    r.register("lazy.notdc", "tests.test_probe_registry:test_lazy_entries_and_bad_targets")
    with pytest.raises(SpecError, match="not a dataclass"):
        r.get("lazy.notdc")
    with pytest.raises(ValueError, match="already registered"):
        r.register("lazy.echo", Registry)


def test_entry_points_are_discovered(monkeypatch):
    from importlib import metadata

    ep = metadata.EntryPoint(name="ext.echo", value="tests.test_probe_registry:Echo", group="genai_audit.probes")
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [ep] if group == "genai_audit.probes" else [])
    r = Registry()
    assert "ext.echo" in r and r.get("ext.echo") is Echo
    assert "quality.perplexity" in r  # built-ins too


def test_probe_info(echo_registered):
    info = probe_info("test.echo")
    assert info.summary == "Echoes its parameters as findings (a test probe)."
    assert info.applies_to == ("text-generator",)
    assert ("steps", "int", 3, "how many") in info.params


def test_context_rng_is_deterministic_and_independent(tmp_path):
    a = ProbeContext(seed=1, probe_id="p1")
    b = ProbeContext(seed=1, probe_id="p1")
    c = ProbeContext(seed=1, probe_id="p2")
    import torch

    x, y, z = (torch.rand(4, generator=ctx.rng("init")) for ctx in (a, b, c))
    assert torch.equal(x, y) and not torch.equal(x, z)


def test_context_input_path_errors(tmp_path):
    ctx = ProbeContext(data={"texts": tmp_path / "nope.txt"}, probe_id="quality.perplexity")
    with pytest.raises(InputError, match="needs the data input 'images'"):
        ctx.input_path("images")
    with pytest.raises(InputError, match="not found"):
        ctx.input_path("texts")
