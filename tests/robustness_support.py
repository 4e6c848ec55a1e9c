"""Tiny classifiers built in code for the robustness tests (and the contract test's FAKES)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from audit.subjects.classifier import TorchClassifier, classifier_from_module


@functools.lru_cache(maxsize=1)
def digits_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn digits as floats in [0, 1]: (x_train, y_train, x_test, y_test), a fixed split."""
    from audit.demo.digits import digits_split, load_digits_tensors

    x, y = load_digits_tensors()
    tr, te = digits_split(len(y), seed=0)
    xf = x.float() / 255.0
    return xf[tr], y[tr], xf[te], y[te]


@functools.lru_cache(maxsize=1)
def _trained_state() -> dict[str, torch.Tensor]:
    x, y, _, _ = digits_data()
    torch.manual_seed(0)
    net = small_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):  # full batch: about half a second
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def small_net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def trained_digits_net() -> nn.Module:
    """A small MLP trained on the digits (about 0.95 held-out accuracy), eval mode."""
    net = small_net()
    net.load_state_dict(_trained_state())
    return net.eval()


def digits_subject(module: nn.Module | None = None, **kw) -> TorchClassifier:
    return classifier_from_module(module if module is not None else trained_digits_net(), input_shape=(1, 8, 8),
                                  class_names=[str(i) for i in range(10)], name="digits-mlp", **kw)


def write_digits(path, n: int = 120, *, uint8: bool = False):
    _, _, x, y = digits_data()
    x, y = x[:n], y[:n]
    torch.save({"x": (x * 255).round().to(torch.uint8) if uint8 else x, "y": y}, path)
    return path


class Quantised(nn.Module):
    """Rounds its input to 4 grey levels first: zero input gradient everywhere (gradient masking)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 3) / 3)


class Probabilities(nn.Module):
    """Returns softmax probabilities instead of logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.softmax(self.net(x), dim=1)


class ArgmaxOneHot(nn.Module):
    """Not differentiable: one-hot of the argmax."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return nn.functional.one_hot(self.net(x).argmax(1), 10).float()


def detector_subject() -> TorchClassifier:
    """A "real vs fake" detector on digits: class 'fake' for digits 5-9, 'real' for 0-4."""
    net = trained_digits_net()

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            z = self.net(x)
            return torch.stack([z[:, :5].logsumexp(1), z[:, 5:].logsumexp(1)], 1)

    return classifier_from_module(Detector(), input_shape=(1, 8, 8), class_names=["real", "fake"], name="detector")


def write_generated(path, n: int = 60):
    _, _, x, y = digits_data()
    torch.save({"x": x[y >= 5][:n]}, path)
    return path


# -- FAKES entries of tests/test_contract.py --------------------------------------------------------
def classifier_contract_inputs(tmp_path):
    return digits_subject(), {"images": write_digits(tmp_path / "digits.pt", 40)}, {
        "eps": [0.05, 0.1], "steps": 3, "n_resamples": 200}


def detector_contract_inputs(tmp_path):
    return detector_subject(), {"generated": write_generated(tmp_path / "gen.pt", 20)}, {
        "eps": ["4/255", "16/255"], "steps": 3}


def text_embedding_contract_inputs(tmp_path):
    from tests.fakes import tiny_text_generator

    return tiny_text_generator(), {}, {"radius": [0.1, 0.5], "steps": 3, "prompts": ["The quick brown fox.",
                                                                                     "Bits per byte."],
                                       "target": " lazy dog", "n_resamples": 200}
