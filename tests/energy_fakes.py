"""Fakes for the energy tests: a meter with a known power, tiny classifier and image generator
subjects, and the contract-test inputs of ``energy.inference``."""

from __future__ import annotations

import time

from audit.energy import EnergyReading
from audit.findings import SubjectIdentity
from audit.subjects import Classifier, ImageGenerator


class PowerMeter:
    """A meter whose device draws a known power: ``watts[i]`` over window i (the last repeats).

    ``kind`` ``"measured"``, ``"estimate"`` or ``"unavailable"``; ``stall=True`` gives a measured
    0 J with the counter's stall warning; ``extra`` adds an unavailable CPU reading (a partial
    measurement).
    """

    def __init__(self, watts=(50.0,), *, kind="measured", device="GPU 0", stall=False, extra=False):
        self.watts = list(watts)
        self.kind, self.device, self.stall, self.extra = kind, device, stall, extra
        self.windows = 0
        self._t0 = None
        self.closed = False

    def start(self):
        self._t0 = time.perf_counter()

    def stop(self):
        d = time.perf_counter() - self._t0
        w = self.watts[min(self.windows, len(self.watts) - 1)]
        self.windows += 1
        if self.kind == "unavailable":
            out = [EnergyReading(joules=None, kind="unavailable", source="none", duration_s=d, device=self.device,
                                 reason="no readable energy counter (test)")]
        elif self.stall:
            out = [EnergyReading(joules=0.0, kind="measured", source="nvml", duration_s=d, device=self.device,
                                 warnings=(f"the NVML energy counter did not advance over {d:.1f} s; ...",))]
        else:
            out = [EnergyReading(joules=w * d, kind=self.kind, source="nvml" if self.kind == "measured" else "model",
                                 duration_s=d, device=self.device,
                                 reason=None if self.kind == "measured" else "ESTIMATE, not a measurement: test")]
        if self.extra:
            out.append(EnergyReading(joules=None, kind="unavailable", source="none", duration_s=d, device="CPU",
                                     reason="no readable energy counter (RAPL not readable); test"))
        return out

    def close(self):
        self.closed = True


class TinyClassifier(Classifier):
    """A linear classifier over 1x4x4 inputs in [0, 1], 3 classes."""

    def __init__(self, seed: int = 0):
        import torch

        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
        self.input_shape = (1, 4, 4)
        self.num_classes = 3
        self.identity = SubjectIdentity(name="tiny-classifier", kind="classifier", source="python")


class TinyImageGenerator(ImageGenerator):
    """z -> uint8 images [B, 3, 8, 8] through a small linear decoder (a torch module, castable)."""

    def __init__(self, seed: int = 0):
        import torch

        torch.manual_seed(seed)
        self.model = torch.nn.Linear(8, 3 * 8 * 8)
        self.identity = SubjectIdentity(name="tiny-images", kind="image-generator", source="python")

    def generate(self, n=None, *, prompts=None, seed=0, batch_size=64):
        import torch

        n = len(prompts) if prompts is not None else int(n)
        g = torch.Generator().manual_seed(seed)
        done = 0
        while done < n:
            b = min(batch_size, n - done)
            z = torch.randn(b, 8, generator=g).to(next(self.model.parameters()).dtype)
            with torch.no_grad():
                x = torch.sigmoid(self.model(z).float()).view(b, 3, 8, 8)
            yield (x * 255).round().to(torch.uint8)
            done += b


def energy_inference_inputs(tmp_path):
    """FAKES entry of tests/test_contract.py: the tiny text generator, fast windows."""
    from tests.fakes import tiny_text_generator

    params = {"repeats": 2, "min_window_s": 0.05, "idle_s": 0.05, "warmup_calls": 1, "max_new_tokens": 4,
              "batch_size": 4, "cpu_estimate": False, "n_resamples": 200}
    return tiny_text_generator(), {}, params
