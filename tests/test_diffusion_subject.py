"""source: diffusers: tiny random-weight pipelines built in code (tests/diffusion_fakes.py),
loaded, generated from with per-image seeds, and audited by the existing image probes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from audit.errors import InputError, SpecError
from audit.runner import run_audit
from audit.spec import SubjectSpec, spec_from_dict
from audit.subjects.diffusion import DiffusersImageGenerator, image_seed
from audit.subjects.loading import load_subject
from tests.diffusion_fakes import tiny_ddpm_folder, tiny_sd_folder
from tests.image_fakes import PROMPTS, write_image_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    return {"ddpm": tiny_ddpm_folder(root / "ddpm"), "sd": tiny_sd_folder(root / "sd"),
            "pndm": tiny_ddpm_folder(root / "pndm", scheduler="PNDMScheduler")}


def load(path, tmp_path, **options):
    return load_subject(SubjectSpec(kind="image-generator", source="diffusers", path=str(path), options=options),
                        device="cpu", cache_dir=tmp_path / "cache")


def test_unconditional_pipeline_gives_uint8_nchw_with_per_image_seeds(pipes, tmp_path):
    s = load(pipes["ddpm"], tmp_path, num_inference_steps=2)
    assert isinstance(s, DiffusersImageGenerator)
    assert s.capabilities == {"generate_images", "denoiser"} and s.sample_shape == (3, 8, 8)
    assert s.identity.details["pipeline"] == "DDPMPipeline" and s.identity.files  # hashed weights
    batches = list(s.generate(5, seed=7, batch_size=2))
    assert [b.shape[0] for b in batches] == [2, 2, 1]
    x = torch.cat(batches)
    assert x.dtype == torch.uint8 and x.shape == (5, 3, 8, 8) and x.float().std() > 0
    assert torch.equal(torch.cat(list(s.generate(5, seed=7, batch_size=5))), x)   # batch size does not matter
    assert torch.equal(s.regenerate(3, seed=7), x[3:4])                             # any image, alone
    assert not torch.equal(torch.cat(list(s.generate(5, seed=8, batch_size=5))), x)
    assert image_seed(7, 3) != image_seed(7, 4) and image_seed(7, 3) < 2**63
    with pytest.raises(InputError, match="takes no prompts"):
        next(s.generate(prompts=["a cat"]))


def test_scheduler_swap_keeps_the_training_scheduler(pipes, tmp_path):
    s = load(pipes["ddpm"], tmp_path, scheduler="DDIMScheduler", num_inference_steps=2)
    assert type(s.pipe.scheduler).__name__ == "DDIMScheduler"
    assert type(s.training_scheduler).__name__ == "DDPMScheduler"
    assert s.identity.details["scheduler"] == "DDIMScheduler"
    assert next(s.generate(2, batch_size=2)).shape == (2, 3, 8, 8)


def test_text_to_image_pipeline_with_options(pipes, tmp_path):
    s = load(pipes["sd"], tmp_path, num_inference_steps=2, guidance_scale=3.0, negative_prompt="blurry",
             height=16, width=16, batch_size=2)
    assert s.capabilities == {"generate_images", "prompts"} and s.identity.details["safety_checker"] is False
    x = torch.cat(list(s.generate(prompts=PROMPTS[:3], seed=1, batch_size=3)))  # pipeline calls of 2 + 1
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.uint8
    assert torch.equal(torch.cat(list(s.generate(prompts=PROMPTS[:3], seed=1, batch_size=1))), x)
    assert torch.equal(s.regenerate(2, seed=1, prompt=PROMPTS[2]), x[2:3])
    other = load(pipes["sd"], tmp_path, num_inference_steps=2, guidance_scale=1.0)
    assert not torch.equal(torch.cat(list(other.generate(prompts=PROMPTS[:3], seed=1))), x)


def test_out_of_memory_turns_on_slicing_then_halves_the_batch(pipes, tmp_path):
    s = load(pipes["ddpm"], tmp_path, num_inference_steps=2)
    want = torch.cat(list(s.generate(5, seed=0, batch_size=4)))

    class SmallGPU:
        """The pipeline, failing like CUDA when asked for more than one image."""

        def __init__(self, pipe):
            self.pipe, self.calls, self.sliced = pipe, [], False

        def enable_attention_slicing(self):
            self.sliced = True

        def __call__(self, **kw):
            self.calls.append(kw["batch_size"])
            if kw["batch_size"] > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return self.pipe(**kw)

    s.pipe = SmallGPU(s.pipe)
    got = torch.cat(list(s.generate(5, seed=0, batch_size=4)))
    assert torch.equal(got, want) and s.pipe.sliced
    assert s.pipe.calls == [4, 4, 2, 1, 1, 1, 1, 1]  # slicing, then 4 -> 2 -> 1, kept for the rest


# -- bad input ------------------------------------------------------------------------------------
def test_a_folder_that_is_not_a_pipeline(tmp_path):
    write_image_folder(tmp_path / "imgs", 2)
    with pytest.raises(InputError, match="not a diffusers pipeline folder: no model_index.json"):
        load(tmp_path / "imgs", tmp_path)
    (tmp_path / "file.safetensors").write_bytes(b"x")
    with pytest.raises(InputError, match="is a folder .* not a file"):
        load(tmp_path / "file.safetensors", tmp_path)
    with pytest.raises(InputError, match="not found"):
        load(tmp_path / "missing" / "pipe", tmp_path)


def test_a_hub_id_offline_fails_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(InputError, match=r"cannot load the diffusers pipeline 'nobody/no-such-ddpm'.*HF_HUB_OFFLINE"):
        load("nobody/no-such-ddpm", tmp_path)


def test_foreign_components_need_trust_remote_code(pipes, tmp_path):
    folder = tmp_path / "evil"
    shutil.copytree(pipes["ddpm"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["evil_pkg", "Backdoor"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match=r"outside diffusers/transformers: unet \(evil_pkg.Backdoor\).*trust_remote_code"):
        load(folder, tmp_path)


@pytest.mark.parametrize("options, match", [
    ({"steps": 2}, r"unknown option\(s\) \['steps'\]"),
    ({"num_inference_steps": 0}, "num_inference_steps: expected a positive integer"),
    ({"guidance_scale": "high"}, "guidance_scale: expected a number"),
    ({"dtype": "int8"}, "dtype: expected auto, float32"),
    ({"height": 16}, r"\['height'\] apply to text-to-image pipelines"),
    ({"eta": 0.5}, "DDPMPipeline takes no eta"),
    ({"scheduler": "DDIMSchedular"}, "not a diffusers scheduler class. Did you mean 'DDIMScheduler'"),
])
def test_bad_options_are_spec_errors(pipes, tmp_path, options, match):
    with pytest.raises(SpecError, match=match):
        load(pipes["ddpm"], tmp_path, **options)


def test_text_to_image_without_prompts(pipes, tmp_path):
    s = load(pipes["sd"], tmp_path, num_inference_steps=2)
    with pytest.raises(InputError, match="text-to-image pipeline needs prompts"):
        next(s.generate(4))


# -- the image probes, end to end -----------------------------------------------------------------
def _spec(tmp_path, path, probes, data, **options):
    return spec_from_dict({"name": "diffusers-test",
                           "subject": {"kind": "image-generator", "source": "diffusers", "path": str(path),
                                       "options": {"num_inference_steps": 2, **options}},
                           "data": data, "probes": probes, "settings": {"device": "cpu", "seed": 0}},
                          base_dir=tmp_path)


@pytest.mark.slow
def test_unconditional_pipeline_through_run_audit(pipes, tmp_path):
    real = write_image_folder(tmp_path / "real", 24, size=8)
    probes = [
        {"id": "quality.image_fidelity", "params": {"feature": "tests.image_fakes:tiny_feature_net", "n_samples": 24,
                                                    "kid_subsets": 5, "kid_subset_size": 10, "is_splits": 2,
                                                    "n_resamples": 20, "batch_size": 8,
                                                    "metrics": ["fid", "kid", "gaussian_kl"]}},
        {"id": "deepfake.image_detectability", "params": {"feature": "tests.image_fakes:tiny_feature_net", "folds": 3,
                                                          "n_samples": 24, "postprocess": ["blur:1"], "eps": ["2/255"],
                                                          "attack_steps": 2, "n_resamples": 200}},
        {"id": "energy.inference", "params": {"repeats": 2, "min_window_s": 0.05, "idle_s": 0.05, "warmup_calls": 1,
                                              "batch_size": 4, "cpu_estimate": False, "n_resamples": 200}},
        {"id": "quality.diffusion_likelihood", "params": {"timesteps": 4, "n_resamples": 200, "batch_size": 12}},
    ]
    result = run_audit(_spec(tmp_path, pipes["ddpm"], probes, {"reference": str(real), "real": str(real)}),
                       out_dir=tmp_path / "out", use_store=False, cache_dir=tmp_path / "cache")
    report = result.report
    assert {pid: st.status for pid, st in report.probes.items()} == dict.fromkeys(
        ["quality.image_fidelity", "deepfake.image_detectability", "energy.inference",
         "quality.diffusion_likelihood"], "ok"), {p: s.error for p, s in report.probes.items()}
    f = {(x.probe, x.metric): x for x in report.findings}
    assert f["quality.image_fidelity", "fid"].value > 0 and f["quality.image_fidelity", "fid"].n == 24
    assert f["quality.image_fidelity", "gaussian_kl"].evidence["direction"].startswith("KL(generated")
    nll = f["quality.diffusion_likelihood", "nll_bpd"]
    assert nll.n == 24 and nll.value == pytest.approx(sum(
        f["quality.diffusion_likelihood", m].value for m in ("prior_bpd", "diffusion_bpd", "decoder_bpd")))
    assert report.subject.source == "diffusers"


@pytest.mark.slow
def test_text_to_image_pipeline_through_run_audit(pipes, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:6]) + "\n")
    probes = [
        {"id": "quality.clip_score", "params": {"clip_model": "tests.image_fakes:tiny_clip", "n_resamples": 200}},
        {"id": "bias.t2i_representation", "params": {
            "prompts": ["a photo of a doctor", "a photo of a nurse"], "images_per_prompt": 2, "n_resamples": 100,
            "judge": {"source": "python", "path": "tests.bias_fakes:tiny_open_clip_encoder"}, "abstain_threshold": 0.0}},
        {"id": "quality.diffusion_likelihood"},   # latent pipeline: skipped (no pixel-space denoiser)
    ]
    report = run_audit(_spec(tmp_path, pipes["sd"], probes, {"prompts": str(prompts)}),
                       out_dir=tmp_path / "out", use_store=False, cache_dir=tmp_path / "cache").report
    st = report.probes
    assert st["quality.clip_score"].status == "ok", st["quality.clip_score"].error
    assert st["bias.t2i_representation"].status == "ok", st["bias.t2i_representation"].error
    assert st["quality.diffusion_likelihood"].status == "skipped" and "denoiser" in st["quality.diffusion_likelihood"].reason
    clip = next(x for x in report.findings if x.probe == "quality.clip_score")
    assert clip.n == 6


def test_run_audit_records_the_refusals(pipes, tmp_path):
    """A text-to-image pipeline without prompts, and the likelihood of a PNDM pipeline: both
    probes fail with the reason, the audit finishes."""
    real = write_image_folder(tmp_path / "real", 4, size=8)
    fid = {"id": "quality.image_fidelity", "params": {"feature": "tests.image_fakes:tiny_feature_net",
                                                      "n_samples": 4, "metrics": ["fid"], "n_resamples": 20}}
    report = run_audit(_spec(tmp_path, pipes["sd"], [fid], {"reference": str(real)}), out_dir=tmp_path / "o1",
                       use_store=False, cache_dir=tmp_path / "cache").report
    st = report.probes["quality.image_fidelity"]
    assert st.status == "failed" and st.error_kind == "input" and "data input 'prompts'" in st.error
    report = run_audit(_spec(tmp_path, pipes["pndm"], [{"id": "quality.diffusion_likelihood"}], {"real": str(real)}),
                       out_dir=tmp_path / "o2", use_store=False, cache_dir=tmp_path / "cache").report
    st = report.probes["quality.diffusion_likelihood"]
    assert st.status == "failed" and st.error_kind == "input"
    assert "scheduler is PNDMScheduler" in st.error and "DDPMScheduler, DDIMScheduler" in st.error
    assert report.exit_code == 2
