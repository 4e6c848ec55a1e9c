"""Classifier subjects: python factory + safetensors, TorchScript, transformers image classification."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from audit.errors import InputError, SpecError
from audit.subjects.loading import load_subject
from audit.subjects.classifier import TorchClassifier
from audit.spec import SubjectSpec
from audit.subjects import Classifier
from tests.robustness_support import small_net, trained_digits_net

FACTORY = '''
import torch
from torch import nn

def make(hidden=32):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

def ready():
    from tests.robustness_support import digits_subject
    return digits_subject()

def not_a_model():
    return 42
'''


def _spec(source, path, **options):
    return SubjectSpec(kind="classifier", source=source, path=path, options=options)


def _load(spec, tmp_path):
    return load_subject(spec, base_dir=tmp_path, device="cpu", cache_dir=tmp_path / "cache")


@pytest.fixture()
def factory(tmp_path):
    (tmp_path / "models.py").write_text(FACTORY, encoding="utf-8")
    net = trained_digits_net()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    return tmp_path, net


def test_python_factory_with_safetensors_weights_and_normalisation(factory):
    tmp_path, net = factory
    clf = _load(_spec("python", "models.py:make", weights="w.safetensors", input_shape=[1, 8, 8],
                      input_range=[0, 1], mean=0.25, std=[0.5], class_names=[str(i) for i in range(10)]), tmp_path)
    assert isinstance(clf, Classifier) and clf.kind == "classifier"
    assert (clf.num_classes, clf.input_shape, clf.input_range) == (10, (1, 8, 8), (0.0, 1.0))
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(clf.logits(x), net((x - 0.25) / 0.5), rtol=0, atol=1e-6)
    ident = clf.identity
    assert ident.files[0].path == "w.safetensors" and len(ident.files[0].sha256) == 64
    assert ident.details["normalisation"] == {"mean": 0.25, "std": [0.5]}
    assert not clf.model.training


def test_python_factory_options_reach_the_factory_and_a_ready_classifier_is_used_as_is(factory):
    tmp_path, _ = factory
    clf = _load(_spec("python", "models.py:make", hidden=7, input_shape=[1, 8, 8]), tmp_path)
    assert clf.model.model[1].out_features == 7
    ready = _load(_spec("python", "models.py:ready"), tmp_path)
    assert isinstance(ready, TorchClassifier) and ready.identity.name == "digits-mlp"
    with pytest.raises(InputError, match="returned a int; expected a torch nn.Module"):
        _load(_spec("python", "models.py:not_a_model", input_shape=[1, 8, 8]), tmp_path)


def test_weights_that_do_not_fit_or_are_pickles_are_refused(factory):
    tmp_path, _ = factory
    save_file({"0.weight": torch.zeros(3, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(InputError, match="bad.safetensors: its tensors do not fit the module"):
        _load(_spec("python", "models.py:make", weights="bad.safetensors", input_shape=[1, 8, 8]), tmp_path)
    torch.save(small_net().state_dict(), tmp_path / "w.pt")
    with pytest.raises(InputError, match="safetensors files only"):
        _load(_spec("python", "models.py:make", weights="w.pt", input_shape=[1, 8, 8]), tmp_path)
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "w.safetensors").read_bytes()[:-10])
    with pytest.raises(InputError, match="corrupt safetensors file"):
        _load(_spec("python", "models.py:make", weights="cut.safetensors", input_shape=[1, 8, 8]), tmp_path)


@pytest.mark.parametrize("options,message", [
    ({}, "input_shape: a classifier needs its input shape"),
    ({"input_shape": [1, -8, 8]}, "input_shape: expected a list of positive integers"),
    ({"input_shape": [1, 8, 8], "input_range": [1, 0]}, "input_range: expected \\[low, high\\] with low < high"),
    ({"input_shape": [1, 8, 8], "std": 0}, "std: expected positive numbers"),
    ({"input_shape": [1, 8, 8], "mean": [0.1, 0.2, 0.3]}, "mean: expected 1 or 1 values"),
    ({"input_shape": [1, 8, 8], "class_names": ["a", "b"]}, "class_names has 2 names but the classifier .* returns 10"),
])
def test_bad_input_options_are_spec_errors(factory, options, message):
    tmp_path, _ = factory
    with pytest.raises(SpecError, match=message):
        _load(_spec("python", "models.py:make", **options), tmp_path)


def test_a_declared_shape_the_model_cannot_take_is_an_input_error(factory):
    tmp_path, _ = factory
    with pytest.raises(InputError, match=r"fails on inputs of the declared input_shape \[3, 8, 8\]"):
        _load(_spec("python", "models.py:make", input_shape=[3, 8, 8]), tmp_path)


def test_torchscript_loads_and_scores_like_the_module(tmp_path):
    net = trained_digits_net()
    torch.jit.script(net).save(str(tmp_path / "net.pt"))
    clf = _load(_spec("torchscript", "net.pt", input_shape=[1, 8, 8], class_names=[str(i) for i in range(10)]),
                tmp_path)
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(clf.logits(x), net(x), rtol=0, atol=1e-6)
    assert clf.identity.files[0].path == "net.pt"
    # A torch.save pickle of the module is not TorchScript: refused (unpickling can run code).
    torch.save(net, tmp_path / "pickled.pt")
    with pytest.raises(InputError, match="pickled.pt: not a TorchScript file"):
        _load(_spec("torchscript", "pickled.pt", input_shape=[1, 8, 8]), tmp_path)
    with pytest.raises(InputError, match="model path not found"):
        _load(_spec("torchscript", "missing.pt", input_shape=[1, 8, 8]), tmp_path)
    with pytest.raises(SpecError, match="source 'torchscript' takes"):
        _load(_spec("torchscript", "net.pt", input_shape=[1, 8, 8], weights="x"), tmp_path)


def _tiny_vit(folder):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    cfg = ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=32, num_labels=3,
                    id2label={0: "cat", 1: "dog", 2: "bird"}, label2id={"cat": 0, "dog": 1, "bird": 2})
    torch.manual_seed(0)
    model = ViTForImageClassification(cfg).eval()
    model.save_pretrained(folder, safe_serialization=True)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.4, 0.5, 0.6],
                      image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return model


def test_hf_image_classifier_takes_shape_mean_std_and_labels_from_its_processor(tmp_path):
    model = _tiny_vit(tmp_path / "vit")
    clf = _load(_spec("hf", "vit"), tmp_path)
    assert (clf.input_shape, clf.num_classes, clf.class_names) == ((3, 16, 16), 3, ("cat", "dog", "bird"))
    x = torch.rand(2, 3, 16, 16)
    mean = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model(pixel_values=(x - mean) / std).logits
    torch.testing.assert_close(clf.logits(x), ref, rtol=0, atol=1e-5)
    assert clf.identity.files[0].path == "model.safetensors"
    # Gradients flow to the input (the attacks need them).
    xr = x.clone().requires_grad_(True)
    clf.logits(xr).sum().backward()
    assert xr.grad is not None and float(xr.grad.abs().sum()) > 0
    assert json.loads((tmp_path / "vit" / "config.json").read_text())["id2label"]["1"] == "dog"
