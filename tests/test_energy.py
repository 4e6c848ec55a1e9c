"""Tests of audit.energy: NVML through a fake pynvml, RAPL through a fake sysfs tree."""

from __future__ import annotations

import json
import pathlib
import sys
import types
from pathlib import Path

import pytest

from audit.energy import estimate as estimate_mod
from audit.energy import nvml as nvml_mod
from audit.energy import power as power_mod
from audit.energy import rapl as rapl_mod
from audit.energy import windows as windows_mod
from audit.energy import (
    CPU_UNAVAILABLE_REASON,
    CompositeMeter,
    EnergyReading,
    NvmlMeter,
    RaplMeter,
    default_meter,
    hardware_info,
    summarize,
)

# -- fakes --------------------------------------------------------------------------------


class FakeNVMLError(Exception):
    pass


def fake_pynvml(devices, *, events=None, init_error=None, driver="550.54.15"):
    """A pynvml stand-in. ``devices``: dicts with name, uuid and ``energy`` (mJ values returned
    by successive counter reads; an Exception instance is raised instead)."""
    mod = types.ModuleType("pynvml")
    mod.NVMLError = FakeNVMLError
    mod.shutdowns = 0

    def init():
        if init_error is not None:
            raise init_error

    def shutdown():
        mod.shutdowns += 1

    def energy(handle):
        if events is not None:
            events.append(("read", handle))
        value = devices[handle]["energy"].pop(0)
        if isinstance(value, Exception):
            raise value
        return value

    mod.nvmlInit = init
    mod.nvmlShutdown = shutdown
    mod.nvmlDeviceGetCount = lambda: len(devices)
    mod.nvmlDeviceGetHandleByIndex = lambda i: i
    mod.nvmlDeviceGetName = lambda h: devices[h]["name"].encode()  # older pynvml returns bytes
    mod.nvmlDeviceGetUUID = lambda h: devices[h]["uuid"]
    mod.nvmlDeviceGetTotalEnergyConsumption = energy
    mod.nvmlSystemGetDriverVersion = lambda: driver
    mod.nvmlDeviceGetEnforcedPowerLimit = lambda h: devices[h].get("power_mw", 700_000)
    mod.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=80 * 10**9)
    return mod


UUIDS = [
    "GPU-aaaa1111-0000-0000-0000-000000000000",
    "GPU-bbbb2222-0000-0000-0000-000000000000",
    "GPU-bbbb3333-0000-0000-0000-000000000000",
]


def three_gpus(energy=None):
    energy = energy or {0: [1000, 3500], 1: [10_000, 20_000], 2: [0, 1]}
    return [
        {"name": "NVIDIA H100 80GB HBM3", "uuid": UUIDS[i], "energy": list(energy[i])} for i in range(3)
    ]


@pytest.fixture
def nvml(monkeypatch):
    """Install a fake pynvml with three GPUs; CUDA_VISIBLE_DEVICES unset, torch's CUDA idle."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    monkeypatch.setattr(nvml_mod, "cuda_initialized", lambda: False)

    def install(devices=None, **kwargs):
        mod = fake_pynvml(devices if devices is not None else three_gpus(), **kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", mod)
        return mod

    return install


class FakeClock:
    """Replaces the time module of audit.energy's meters so windows have the length a test needs."""

    def __init__(self, *times):
        self.times = list(times)

    def perf_counter(self):
        return self.times.pop(0)


def use_clock(monkeypatch, clock):
    """Let every module of audit.energy that reads the time read ``clock`` (one sequence)."""
    for mod in (nvml_mod, rapl_mod, windows_mod, estimate_mod, power_mod):
        monkeypatch.setattr(mod, "time", clock)


def measure(meter, between=None):
    meter.start()
    if between is not None:
        between()
    return meter.stop()


# -- EnergyReading ------------------------------------------------------------------------


def test_reading_to_dict_is_json():
    r = EnergyReading(joules=2, kind="measured", source="rapl", duration_s=1, device="CPU package 0",
                      warnings=["w"])
    d = r.to_dict()
    assert d == {"joules": 2.0, "kind": "measured", "source": "rapl", "duration_s": 1.0,
                 "device": "CPU package 0", "reason": None, "warnings": ["w"]}
    json.dumps(d, allow_nan=False)
    assert r.watts == 2.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"joules": None, "kind": "measured"},
        {"joules": float("nan"), "kind": "measured"},
        {"joules": -1.0, "kind": "estimate"},
        {"joules": 0.0, "kind": "unavailable", "reason": "x"},
        {"joules": None, "kind": "unavailable"},
        {"joules": 1.0, "kind": "guess"},
    ],
)
def test_reading_refuses_dishonest_values(kwargs):
    with pytest.raises(ValueError):
        EnergyReading(source="x", duration_s=1.0, device="d", **kwargs)


# -- NVML ---------------------------------------------------------------------------------


def test_nvml_millijoules_to_joules(nvml):
    mod = nvml()
    readings = measure(NvmlMeter(device_indices=[0]))
    assert len(readings) == 1
    r = readings[0]
    assert (r.joules, r.kind, r.source) == (2.5, "measured", "nvml")
    assert r.device == "GPU 0: NVIDIA H100 80GB HBM3"
    assert r.reason == "NVML counts the whole device, including other processes"
    assert r.warnings == ()
    assert mod.shutdowns == 1


def test_nvml_all_visible_gpus_by_default(nvml):
    nvml()
    readings = measure(NvmlMeter())
    assert [r.joules for r in readings] == [2.5, 10.0, 0.001]
    assert [r.device.split(":")[0] for r in readings] == ["GPU 0", "GPU 1", "GPU 2"]


@pytest.mark.parametrize(
    ("visible", "device_indices", "expected_gpus"),
    [
        ("2,0", None, [2, 0]),
        ("2,0", [1], [0]),
        ("1", [0], [1]),
        (" 1 , 2 ", None, [1, 2]),
        ("1,7,0", None, [1]),  # CUDA stops at the first entry naming no GPU
        ("1,1,0", None, [1]),  # ... and at a repeated one
        (UUIDS[2], None, [2]),
        (f"{UUIDS[1]},{UUIDS[0]}", [1], [0]),
        ("GPU-bbbb3", None, [2]),  # a unique prefix is enough
        ("aaaa1111-0000-0000-0000-000000000000", None, [0]),  # without the GPU- prefix
        (f"{UUIDS[0].upper()},2", None, [0, 2]),  # UUIDs in any case, mixed with indices
    ],
)
def test_nvml_maps_cuda_visible_devices(nvml, monkeypatch, visible, device_indices, expected_gpus):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    nvml()
    readings = measure(NvmlMeter(device_indices=device_indices))
    assert [int(r.device.split(":")[0].split()[1]) for r in readings] == expected_gpus
    assert all(r.kind == "measured" for r in readings)


@pytest.mark.parametrize("visible", ["", "-1", "GPU-bbbb", "GPU-ffff"])
def test_nvml_no_visible_gpu_is_unavailable(nvml, monkeypatch, visible):
    # "GPU-bbbb" is ambiguous (two GPUs start with it), which CUDA also refuses.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    nvml()
    (r,) = measure(NvmlMeter())
    assert (r.kind, r.joules, r.source) == ("unavailable", None, "none")
    assert "no GPU of this process" in r.reason


def test_nvml_mig_instance_is_unavailable_with_reason(nvml, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-12345678-0000-0000-0000-000000000000")
    nvml()
    (r,) = measure(NvmlMeter())
    assert r.kind == "unavailable"
    assert "MIG" in r.reason


def test_nvml_ordinal_not_visible_is_not_measured(nvml, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    nvml()
    (r,) = measure(NvmlMeter(device_indices=[3]))
    assert r.kind == "unavailable"
    assert "cuda:3 is not among the 1 GPU(s)" in r.reason


def test_nvml_mixed_models_with_indices_warns(nvml, monkeypatch):
    devices = three_gpus()
    devices[2]["name"] = "NVIDIA A100"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    nvml(devices)
    readings = measure(NvmlMeter())
    assert all("CUDA_DEVICE_ORDER" in r.warnings[0] for r in readings)
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    nvml([dict(d, energy=[0, 1]) for d in devices])
    assert all(r.warnings == () for r in measure(NvmlMeter()))


def test_nvml_counter_not_advancing_over_a_long_window_warns(nvml, monkeypatch):
    nvml(three_gpus({0: [5000, 5000], 1: [0, 0], 2: [0, 0]}))
    use_clock(monkeypatch, FakeClock(10.0, 12.5))
    (r,) = measure(NvmlMeter(device_indices=[0]))
    assert (r.kind, r.joules, r.duration_s) == ("measured", 0.0, 2.5)
    assert len(r.warnings) == 1 and "did not advance over 2.5 s" in r.warnings[0]


def test_nvml_counter_not_advancing_over_a_short_window_is_fine(nvml, monkeypatch):
    nvml(three_gpus({0: [5000, 5000], 1: [0, 0], 2: [0, 0]}))
    use_clock(monkeypatch, FakeClock(10.0, 10.2))
    (r,) = measure(NvmlMeter(device_indices=[0]))
    assert r.warnings == ()


def test_nvml_counter_not_supported_on_one_gpu(nvml):
    nvml(three_gpus({0: [1000, 2000], 1: [FakeNVMLError("Not Supported")], 2: [0, 1]}))
    readings = measure(NvmlMeter(device_indices=[0, 1]))
    assert [r.kind for r in readings] == ["measured", "unavailable"]
    assert readings[1].joules is None
    assert "Not Supported" in readings[1].reason and readings[1].device.startswith("GPU 1")


def test_nvml_counter_going_backwards_is_unavailable(nvml):
    nvml(three_gpus({0: [5000, 10], 1: [0, 0], 2: [0, 0]}))
    (r,) = measure(NvmlMeter(device_indices=[0]))
    assert r.kind == "unavailable" and "went backwards" in r.reason


def test_nvml_init_error_is_unavailable(nvml):
    nvml(init_error=FakeNVMLError("Driver Not Loaded"))
    (r,) = measure(NvmlMeter())
    assert (r.kind, r.joules) == ("unavailable", None)
    assert "Driver Not Loaded" in r.reason


def test_nvml_missing_package_is_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes "import pynvml" raise ImportError
    (r,) = measure(NvmlMeter())
    assert r.kind == "unavailable"
    assert "nvidia-ml-py is not installed" in r.reason and "genai-audit[gpu]" in r.reason


def test_nvml_synchronizes_cuda_before_reading(nvml, monkeypatch):
    events = []
    nvml(events=events)
    fake_torch = types.SimpleNamespace(
        cuda=types.SimpleNamespace(
            is_initialized=lambda: True,
            device_count=lambda: 1,
            synchronize=lambda i=None: events.append(("sync", i)),
        )
    )
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setattr(nvml_mod, "cuda_initialized", lambda: True)
    measure(NvmlMeter(device_indices=[0]))
    assert events == [("sync", 0), ("read", 0), ("sync", 0), ("read", 0)]


def test_real_nvml_without_gpu_is_unavailable_not_zero():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    readings = measure(NvmlMeter())
    assert readings and all(r.kind == "unavailable" and r.joules is None and r.reason for r in readings)
    assert summarize(readings)["joules"] is None


def test_stop_before_start_is_an_error():
    with pytest.raises(RuntimeError):
        NvmlMeter().stop()
    with pytest.raises(RuntimeError):
        RaplMeter().stop()
    with pytest.raises(RuntimeError):
        CompositeMeter([]).stop()


# -- RAPL ---------------------------------------------------------------------------------


def rapl_tree(root: Path, zones: dict[str, dict[str, object]]) -> Path:
    """Build a powercap tree: ``zones`` maps a zone folder to its files' contents."""
    for zone, files in zones.items():
        (root / zone).mkdir(parents=True)
        for name, content in files.items():
            (root / zone / name).write_text(f"{content}\n")
    return root


def set_energy(root: Path, zone: str, uj: int) -> None:
    (root / zone / "energy_uj").write_text(f"{uj}\n")


@pytest.fixture
def rapl(tmp_path):
    return rapl_tree(
        tmp_path / "powercap",
        {
            "intel-rapl": {},  # the control type folder, no counter
            "intel-rapl:0": {"name": "package-0", "energy_uj": 1_000_000, "max_energy_range_uj": 262_143_328_850},
            "intel-rapl:0:0": {"name": "dram", "energy_uj": 5, "max_energy_range_uj": 65_712_999_613},
            "intel-rapl:1": {"name": "psys", "energy_uj": 7, "max_energy_range_uj": 262_143_328_850},
            "intel-rapl:2": {"name": "package-1", "energy_uj": 50, "max_energy_range_uj": 262_143_328_850},
        },
    )


def test_rapl_delta_of_package_zones_only(rapl):
    def work():
        set_energy(rapl, "intel-rapl:0", 3_500_000)
        set_energy(rapl, "intel-rapl:0:0", 999_999_999)
        set_energy(rapl, "intel-rapl:1", 999_999_999)
        set_energy(rapl, "intel-rapl:2", 1_000_050)

    readings = measure(RaplMeter(root=rapl), work)
    assert [(r.device, r.joules, r.kind, r.source) for r in readings] == [
        ("CPU package 0", 2.5, "measured", "rapl"),
        ("CPU package 1", 1.0, "measured", "rapl"),
    ]
    assert "whole CPU package" in readings[0].reason


def test_rapl_wrap_around(tmp_path):
    root = rapl_tree(
        tmp_path, {"intel-rapl:0": {"name": "package-0", "energy_uj": 9_000_000, "max_energy_range_uj": 10_000_000}}
    )
    (r,) = measure(RaplMeter(root=root), lambda: set_energy(root, "intel-rapl:0", 500_000))
    assert (r.kind, r.joules) == ("measured", 1.5)


def test_rapl_wrap_without_range_is_unavailable(tmp_path):
    root = rapl_tree(tmp_path, {"intel-rapl:0": {"name": "package-0", "energy_uj": 9_000_000}})
    (r,) = measure(RaplMeter(root=root), lambda: set_energy(root, "intel-rapl:0", 500_000))
    assert (r.kind, r.joules) == ("unavailable", None)
    assert "wrapped" in r.reason


def test_rapl_window_longer_than_wrap_period_warns(tmp_path, monkeypatch):
    root = rapl_tree(
        tmp_path,
        {
            "intel-rapl:0": {
                "name": "package-0",
                "energy_uj": 0,
                "max_energy_range_uj": 100_000_000,  # 100 J
                "constraint_0_max_power_uw": 10_000_000,  # 10 W: wraps in 10 s at most
            }
        },
    )
    use_clock(monkeypatch, FakeClock(0.0, 30.0))
    (r,) = measure(RaplMeter(root=root), lambda: set_energy(root, "intel-rapl:0", 5_000_000))
    assert r.kind == "measured" and r.joules == 5.0
    assert any("under-counted" in w for w in r.warnings)


def test_rapl_counter_not_advancing_warns(rapl, monkeypatch):
    use_clock(monkeypatch, FakeClock(0.0, 3.0))
    readings = measure(RaplMeter(root=rapl))
    assert all(r.joules == 0.0 and "did not advance over 3.0 s" in r.warnings[0] for r in readings)


def test_rapl_unreadable_counter_is_unavailable_not_zero(rapl):
    # chmod 000 does not stop root, so a folder stands in for an unreadable file.
    (rapl / "intel-rapl:0" / "energy_uj").unlink()
    (rapl / "intel-rapl:0" / "energy_uj").mkdir()
    readings = measure(RaplMeter(root=rapl))
    assert [(r.kind, r.joules) for r in readings] == [("unavailable", None), ("measured", 0.0)]
    assert readings[0].reason.startswith(CPU_UNAVAILABLE_REASON)
    assert "intel-rapl:0/energy_uj" in readings[0].reason


def test_rapl_permission_denied_is_unavailable(rapl, monkeypatch):
    real_read_text = pathlib.Path.read_text

    def read_text(self, *args, **kwargs):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    readings = measure(RaplMeter(root=rapl))
    assert all(r.kind == "unavailable" and r.joules is None for r in readings)
    assert "permission denied" in readings[0].reason and readings[0].reason.startswith(CPU_UNAVAILABLE_REASON)


def test_rapl_counter_vanishing_before_stop_is_unavailable(rapl):
    readings = measure(RaplMeter(root=rapl), lambda: (rapl / "intel-rapl:2" / "energy_uj").unlink())
    assert [r.kind for r in readings] == ["measured", "unavailable"]
    assert readings[1].device == "CPU package 1"


@pytest.mark.parametrize("make", ["missing", "no_package"])
def test_rapl_without_package_zone_is_unavailable(tmp_path, make):
    root = tmp_path / "powercap"
    if make == "no_package":
        rapl_tree(root, {"intel-rapl:0": {"name": "psys", "energy_uj": 1}})
    (r,) = measure(RaplMeter(root=root))
    assert (r.kind, r.joules, r.source, r.device) == ("unavailable", None, "none", "CPU")
    assert r.reason.startswith(CPU_UNAVAILABLE_REASON)


# -- composition and summaries ------------------------------------------------------------


def test_default_meter_choice():
    assert [type(m).__name__ for m in default_meter("cpu").meters] == ["RaplMeter"]
    cuda = default_meter("cuda:1").meters
    assert [type(m).__name__ for m in cuda] == ["NvmlMeter", "RaplMeter"]
    assert cuda[0].device_indices == [1]
    assert default_meter("cuda").meters[0].device_indices == [0]
    with pytest.raises(ValueError, match="cuda:N"):
        default_meter("cuda:x")


def test_default_meter_without_counters_says_cpu_not_measured(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with default_meter("cuda:0", rapl_root=tmp_path / "none").measure() as m:
        pass
    gpu, cpu = m.readings
    assert gpu.kind == "unavailable" and gpu.device == "GPU"
    assert cpu.kind == "unavailable" and cpu.device == "CPU"
    assert cpu.reason.startswith("no readable energy counter (RAPL not readable); CPU energy not measured")
    s = summarize(m.readings)
    assert (s["joules"], s["kind"], s["sources"]) == (None, "unavailable", [])


def test_composite_gpu_and_cpu_together(nvml, rapl):
    nvml()
    meter = default_meter("cuda:0", rapl_root=rapl)
    with meter.measure() as m:
        set_energy(rapl, "intel-rapl:0", 2_000_000)
    assert [r.source for r in m.readings] == ["nvml", "rapl", "rapl"]
    s = summarize(m.readings)
    assert s["kind"] == "measured" and s["joules"] == pytest.approx(2.5 + 1.0 + 0.0)
    assert s["sources"] == ["nvml", "rapl"]


def test_measure_fills_readings_when_the_block_raises(rapl):
    with pytest.raises(KeyError):
        with RaplMeter(root=rapl).measure() as m:
            raise KeyError("probe crashed")
    assert len(m.readings) == 2


class Exploding:
    def __init__(self, where):
        self.where = where

    def start(self):
        if self.where == "start":
            raise OSError("no")

    def stop(self):
        raise OSError("no")


@pytest.mark.parametrize("where", ["start", "stop"])
def test_composite_degrades_a_failing_meter(rapl, where):
    readings = measure(CompositeMeter([Exploding(where), RaplMeter(root=rapl)]))
    assert readings[0].kind == "unavailable" and f"Exploding.{where}() failed" in readings[0].reason
    assert [r.kind for r in readings[1:]] == ["measured", "measured"]


def test_summarize_never_adds_estimates_to_measurements():
    gpu = EnergyReading(joules=10.0, kind="measured", source="nvml", duration_s=2.0, device="GPU 0")
    cpu_est = EnergyReading(joules=4.0, kind="estimate", source="tdp-model", duration_s=2.0, device="CPU",
                            reason="TDP x time")
    cpu_none = EnergyReading(joules=None, kind="unavailable", source="none", duration_s=2.0, device="CPU",
                             reason="no counter")
    s = summarize([gpu, cpu_est])
    assert (s["joules"], s["estimate_joules"], s["kind"], s["unmeasured"]) == (10.0, 4.0, "partial", ["CPU"])
    assert summarize([cpu_est])["joules"] is None and summarize([cpu_est])["kind"] == "estimate"
    assert summarize([cpu_none]) | {"readings": None} == {
        "joules": None, "kind": "unavailable", "sources": [], "source": "none", "reason": "CPU: no counter",
        "estimate_joules": None, "unmeasured": ["CPU"], "duration_s": 2.0, "readings": None,
    }
    assert summarize([gpu])["reason"] is None and summarize([gpu, cpu_est])["source"] == "nvml+tdp-model"
    assert summarize([])["kind"] == "unavailable" and summarize([])["joules"] is None
    assert summarize([gpu])["kind"] == "measured"
    json.dumps(summarize([gpu, cpu_est, cpu_none]), allow_nan=False)


# -- hardware -----------------------------------------------------------------------------


def test_hardware_info_with_gpu(nvml, tmp_path):
    nvml()
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n")
    info = hardware_info(cpuinfo=cpuinfo)
    assert info["cpu"]["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["gpu_driver"] == "550.54.15" and info["nvml"] is None
    assert [g["name"] for g in info["gpus"]] == ["NVIDIA H100 80GB HBM3"] * 3
    assert info["gpus"][0]["power_limit_w"] == 700.0 and info["gpus"][0]["uuid"] == UUIDS[0]
    json.dumps(info)


def test_hardware_info_without_nvml(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    info = hardware_info(cpuinfo=tmp_path / "missing")
    assert info["gpus"] == [] and info["gpu_driver"] is None and "not installed" in info["nvml"]
    assert info["cpu"]["model"]


# -- idle baseline, windows, estimates, sampled power (issue 7) ---------------------------

from audit.energy import (  # noqa: E402
    CodecarbonCpuMeter,
    FallbackCpuMeter,
    IdleBaseline,
    NvmlPowerSampler,
    integrate_power,
    measure_idle,
    measure_window,
)


def test_idle_baseline_and_net_energy_by_hand(tmp_path, monkeypatch):
    root = rapl_tree(tmp_path, {"intel-rapl:0": {"name": "package-0", "energy_uj": 0,
                                                 "max_energy_range_uj": 10**12}})
    # Idle: 2 J over 2 s -> 1 W. Busy: 10 J over 4 s -> net 10 - 1 W x 4 s = 6 J.
    use_clock(monkeypatch, FakeClock(0.0, 2.0, 10.0, 14.0))
    idle = measure_idle(RaplMeter(root=root), seconds=2.0, sleep=lambda s: set_energy(root, "intel-rapl:0", 2_000_000))
    assert idle.watts == {"CPU package 0": 1.0} and idle.duration_s == 2.0
    busy = measure(RaplMeter(root=root), lambda: set_energy(root, "intel-rapl:0", 12_000_000))
    s = summarize(busy, idle=idle)
    assert (s["gross_joules"], s["net_joules"], s["idle_watts"]) == (10.0, 6.0, {"CPU package 0": 1.0})
    assert s["joules"] == 10.0 and s["net_warnings"] == []
    json.dumps(s | {"idle": idle.to_dict()})


def test_net_energy_below_idle_is_clipped_with_warning_and_unknown_idle_is_none():
    idle = IdleBaseline(watts={"GPU 0": 100.0}, duration_s=1.0)
    low = EnergyReading(joules=50.0, kind="measured", source="nvml", duration_s=1.0, device="GPU 0")
    net = idle.net([low])
    assert net["joules"] == 0.0 and "less than its idle power" in net["warnings"][0]
    other = EnergyReading(joules=50.0, kind="measured", source="nvml", duration_s=1.0, device="GPU 1")
    assert idle.net([other])["joules"] is None and "no idle power for GPU 1" in idle.net([other])["warnings"][0]
    est = EnergyReading(joules=5.0, kind="estimate", source="m", duration_s=1.0, device="CPU", reason="est")
    assert idle.net([est])["joules"] is None  # estimates are never netted into a measurement


def test_summarize_without_idle_keeps_its_keys():
    r = EnergyReading(joules=1.0, kind="measured", source="rapl", duration_s=1.0, device="CPU package 0")
    assert "net_joules" not in summarize([r])


class ListMeter:
    def __init__(self, readings):
        self.readings, self.events = readings, []

    def start(self):
        self.events.append("start")

    def stop(self):
        self.events.append("stop")
        return list(self.readings)


def test_measure_window_runs_many_calls_and_synchronizes_each():
    meter = ListMeter([EnergyReading(joules=3.0, kind="measured", source="nvml", duration_s=1.0, device="GPU 0")])
    events = meter.events
    w = measure_window(meter, lambda: events.append("call") or 5, min_seconds=0.0, min_calls=3,
                       synchronize=lambda: events.append("sync"))
    assert (w.calls, w.units, len(w.latencies_s)) == (3, 15.0, 3)
    assert events == ["sync", "start", "call", "sync", "call", "sync", "call", "sync", "stop"]
    assert w.stalled == () and w.summary["joules"] == 3.0
    timed = measure_window(ListMeter([]), lambda: 1, min_seconds=0.05)
    assert timed.duration_s >= 0.05 and timed.calls >= 1
    assert measure_window(ListMeter([]), lambda: 1, min_seconds=60, max_calls=4).calls == 4
    with pytest.raises(ValueError):
        measure_window(ListMeter([]), lambda: 1, min_calls=0)


def test_measure_window_reports_a_counter_that_did_not_advance(nvml, monkeypatch):
    nvml(three_gpus({0: [5000, 5000], 1: [0, 0], 2: [0, 0]}))
    # meter start, window t0, call end, meter stop: a 3 s window where the counter stood still.
    use_clock(monkeypatch, FakeClock(0.0, 0.0, 3.0, 3.0))
    w = measure_window(NvmlMeter(device_indices=[0]), lambda: 1, min_seconds=1.0)
    assert w.stalled == ("GPU 0: NVIDIA H100 80GB HBM3",)
    assert w.readings[0].joules == 0.0 and "did not advance" in w.readings[0].warnings[0]


def test_measure_window_stops_the_meter_when_work_raises():
    meter = ListMeter([])
    with pytest.raises(ZeroDivisionError):
        measure_window(meter, lambda: 1 / 0)
    assert meter.events == ["start", "stop"]


class FakeEstimator:
    def __init__(self):
        self.starts = 0

    def start(self):
        self.starts += 1

    def stop(self):
        return [EnergyReading(joules=7.0, kind="estimate", source="codecarbon-offline", duration_s=1.0, device="CPU",
                              reason="ESTIMATE, not a measurement: a model")]


def test_fallback_uses_rapl_when_readable(rapl):
    est = FakeEstimator()
    readings = measure(FallbackCpuMeter(RaplMeter(root=rapl), est))
    assert [r.source for r in readings] == ["rapl", "rapl"] and est.starts == 0


def test_fallback_estimate_when_rapl_unreadable_is_labelled_and_not_mixed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    est = FakeEstimator()
    meter = default_meter("cuda:0", rapl_root=tmp_path / "none", cpu_estimate=True)
    meter.meters[1].fallback = est
    gpu, cpu = measure(meter)
    assert est.starts == 1 and gpu.kind == "unavailable"
    assert (cpu.kind, cpu.joules, cpu.source) == ("estimate", 7.0, "codecarbon-offline")
    assert cpu.reason.startswith("RAPL not readable (") and "ESTIMATE, not a measurement" in cpu.reason
    s = summarize([gpu, cpu])
    assert (s["joules"], s["estimate_joules"], s["kind"]) == (None, 7.0, "estimate")


def test_default_meter_with_estimate_keeps_rapl_inside():
    (cpu,) = default_meter("cpu", cpu_estimate=True).meters
    assert isinstance(cpu, FallbackCpuMeter) and isinstance(cpu.primary, RaplMeter)


def test_codecarbon_offline_estimate_is_an_estimate():
    pytest.importorskip("codecarbon")
    meter = CodecarbonCpuMeter()
    try:
        (r,) = measure(meter, lambda: sum(range(200_000)))
        (r2,) = measure(meter)  # the tracker is reused: later windows are cheap
    finally:
        meter.close()
    assert (r.kind, r.source, r.device) == ("estimate", "codecarbon-offline", "CPU")
    assert r.joules >= 0 and r.reason.startswith("ESTIMATE, not a measurement: codecarbon")
    assert "OfflineEmissionsTracker" in r.reason and r2.kind == "estimate"


def test_codecarbon_missing_is_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "codecarbon", None)
    (r,) = measure(CodecarbonCpuMeter())
    assert (r.kind, r.joules) == ("unavailable", None) and "codecarbon is not installed" in r.reason


def test_integrate_power_matches_numpy_trapezoid():
    import numpy as np

    rng = np.random.default_rng(0)
    t = np.cumsum(rng.uniform(0.01, 0.1, size=300))
    w = rng.uniform(50, 400, size=300)
    assert integrate_power(t.tolist(), w.tolist()) == pytest.approx(float(np.trapezoid(w, t)), rel=1e-12)
    with pytest.raises(ValueError):
        integrate_power([0.0, 1.0], [1.0])
    with pytest.raises(ValueError):
        integrate_power([1.0, 0.0], [1.0, 1.0])


def test_power_sampler_with_fake_nvml(nvml):
    mod = nvml()
    mod.nvmlDeviceGetPowerUsage = lambda h: 250_000  # 250 W, in mW
    sampler = NvmlPowerSampler(0, interval_s=0.01)
    sampler.start()
    import time as _time

    _time.sleep(0.1)
    trace = sampler.stop()
    assert len(trace.times_s) >= 3 and set(trace.watts) == {250.0}
    assert trace.joules == pytest.approx(250.0 * (trace.times_s[-1] - trace.times_s[0]))


def test_hardware_info_says_whether_rapl_is_readable(rapl, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert hardware_info(rapl_root=rapl)["cpu"]["energy_counter"] == "readable"
    missing = hardware_info(rapl_root=tmp_path / "none")["cpu"]["energy_counter"]
    assert missing.startswith(CPU_UNAVAILABLE_REASON)


@pytest.mark.gpu
def test_gpu_counter_agrees_with_sampled_power_on_a_steady_load():
    """Issue 7, item 5: NVML's energy counter vs sampled power x time, within 10%."""
    import torch

    from bench.bench_energy import counter_vs_sampled

    result = counter_vs_sampled(seconds=8.0, warmup_s=3.0, device=0)
    assert result["counter_j"] > 0 and result["sampled_j"] > 0
    assert abs(result["relative_difference"]) <= 0.10, result
    assert torch.cuda.is_available()
