"""Adapters for the model under audit. Probes ask for capabilities, not classes.

A subject has a ``kind`` (text-generator, image-generator, classifier, encoder), the set of
``capabilities`` it offers (e.g. ``token_logprobs``), an ``identity`` recorded in the report,
and the torch ``device`` it runs on. Loading from hub ids, folders, GGUF files and Python
callables lives in :mod:`audit.subjects.loading`.

Example:
    >>> from tests.fakes import tiny_text_generator   # doctest: +SKIP
    >>> lm = tiny_text_generator()                    # doctest: +SKIP
    >>> ids = lm.encode(["hello world"])              # doctest: +SKIP
    >>> lm.token_logprobs(torch.tensor(ids)).shape    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from audit.findings import SubjectIdentity

__all__ = [
    "Classifier",
    "Encoder",
    "HFTextGenerator",
    "ImageGenerator",
    "Subject",
    "TextGenerator",
    "missing_capabilities",
]


class Subject:
    """Base of every subject adapter."""

    kind: ClassVar[str] = ""
    capabilities: frozenset[str] = frozenset()
    identity: SubjectIdentity
    device: Any = "cpu"

    def close(self) -> None:
        """Release memory held by the subject (called by the runner at the end)."""


def missing_capabilities(subject: Any, probe: Any) -> str | None:
    """Why ``probe`` cannot run on ``subject``, or None if it can."""
    applies = tuple(getattr(probe, "applies_to", ()) or ())
    kind = getattr(subject, "kind", "")
    if applies and kind not in applies:
        return f"applies to {', '.join(applies)} subjects; this subject is a {kind}"
    needed = set(getattr(probe, "requires", ()) or ())
    lacking = sorted(needed - set(getattr(subject, "capabilities", ())))
    if lacking:
        reason = f"needs the subject capabilities {', '.join(lacking)}, which this {kind} does not offer"
        # A subject may say why it lacks one (e.g. a server that returns no logprobs).
        notes = getattr(subject, "capability_notes", None) or {}
        why = [f"{c}: {notes[c]}" for c in lacking if c in notes]
        return reason + (f" ({'; '.join(why)})" if why else "")
    # A probe may know more than kinds and capabilities (e.g. energy.footprint needs a torch module).
    check = getattr(probe, "not_applicable", None)
    return check(subject) if callable(check) else None


class TextGenerator(Subject):
    """A language model: tokenise text, score tokens, generate continuations.

    Capabilities: ``tokenize``, ``token_logprobs``, ``generate``.
    """

    kind: ClassVar[str] = "text-generator"
    capabilities = frozenset({"tokenize", "token_logprobs", "generate"})

    #: Token prepended so that the first token of a text is scored too (None if the model has none).
    bos_token_id: int | None = None
    #: Padding id used to batch sequences of different lengths.
    pad_token_id: int = 0
    #: Longest sequence the model accepts (None if unknown).
    max_context: int | None = None

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def token_logprobs(self, input_ids: Any, attention_mask: Any | None = None) -> Any:
        """``out[b, t] = log p(input_ids[b, t+1] | input_ids[b, :t+1])``, float32, shape [B, T-1].

        Batched and on ``self.device``; positions after the padding are meaningless and are
        masked by the caller.
        """
        raise NotImplementedError

    #: True when ``generate`` takes ``seed`` as a list (one per prompt) and a prompt's continuation
    #: depends on its own seed only: probes then hand it whole lists (see audit.subjects.textgen).
    per_sample_seeds: bool = False

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 32,
                 temperature: float = 0.0, seed: int | Sequence[int] = 0) -> list[str]:
        """Continuations of ``prompts`` (greedy when temperature is 0).

        ``seed`` is one seed for the call or, where ``per_sample_seeds``, one per prompt.
        """
        raise NotImplementedError


class HFTextGenerator(TextGenerator):
    """A transformers causal LM and its tokenizer as a :class:`TextGenerator`.

    Generation runs through the batched engine (:mod:`audit.subjects.generation`): left-padded
    batches of ``batch_size`` prompts with a KV cache, each sample seeded on its own.
    ``chat_template`` (true, false or "auto") wraps prompts in the tokenizer's chat template.
    Sampling draws from the model's whole distribution at the probe's temperature; ``top_k`` /
    ``top_p`` restrict it when given (the model's ``generation_config`` is not read).
    """

    per_sample_seeds = True

    def __init__(self, model: Any, tokenizer: Any, identity: SubjectIdentity, *, device: Any = None,
                 chat_template: bool | str = False, batch_size: int = 32, top_k: int | None = None,
                 top_p: float | None = None):
        import dataclasses

        import torch

        from audit.subjects.textgen import chat_template_note, eos_token_ids, resolve_chat_template

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.identity = identity
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if self.model.device != self.device:
            self.model.to(self.device)
        self.bos_token_id = getattr(tokenizer, "bos_token_id", None)
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else 0
        cfg = getattr(model, "config", None)
        self.max_context = getattr(cfg, "max_position_embeddings", None)
        self.chat_template = resolve_chat_template(chat_template, tokenizer)
        note = chat_template_note(chat_template, tokenizer)
        if note is not None and dataclasses.is_dataclass(identity):
            self.identity = dataclasses.replace(identity, details={**identity.details, "chat_template": note})
        self.batch_size = int(batch_size)
        # The probes sample the model's whole distribution (no top-k, no top-p) unless asked: the
        # model's generation_config is a deployment choice, not the model, and the per-prompt
        # ``generate(top_k=None, top_p=None)`` calls the engine replaced sampled it whole too.
        self.top_k = top_k
        self.top_p = top_p
        self.eos_token_ids = eos_token_ids(model, tokenizer)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(self.tokenizer.encode(t, add_special_tokens=False)) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def token_logprobs(self, input_ids: Any, attention_mask: Any | None = None) -> Any:
        import torch
        import torch.nn.functional as F

        input_ids = input_ids.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            # Classes on dim 1 of a transposed view: no reshaped copy of the [B, T, V] logits
            # (0.8 GB at B=8, T=512, V=49k); only cross_entropy's own softmax buffer.
            nll = F.cross_entropy(
                logits[:, :-1].transpose(1, 2).float(), input_ids[:, 1:], reduction="none"
            )
        return -nll

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 32, temperature: float = 0.0,
                 seed: int | Sequence[int] = 0, stop: Sequence[str] = ()) -> list[str]:
        """Continuations of ``prompts``; ``stop`` strings end a continuation (and are cut off)."""
        from audit.subjects.textgen import hf_generate

        return hf_generate(self, prompts, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                           stop=stop)[1]

    def generate_tokens(self, prompts: Sequence[str], *, max_new_tokens: int = 32, temperature: float = 0.0,
                        seed: int | Sequence[int] = 0, stop: Sequence[str] = ()) -> list[list[int]]:
        """The generated token ids of each continuation (EOS excluded), as :meth:`generate` makes them."""
        from audit.subjects.textgen import hf_generate

        return hf_generate(self, prompts, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                           stop=stop)[0]

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]


class ImageGenerator(Subject):
    """Makes images: ``generate`` yields uint8 NCHW batches (values 0..255) on the CPU or device.

    Capabilities: ``generate_images``; ``prompts`` when the subject is text-to-image (it
    takes prompts, or a folder carries them in ``prompts.jsonl``).
    """

    kind: ClassVar[str] = "image-generator"
    capabilities = frozenset({"generate_images"})
    #: Prompts that came with the subject (a folder's prompts.jsonl), else None.
    prompts: list[str] | None = None
    #: How many images the subject can give (a folder's size), or None when unlimited.
    num_images: int | None = None

    def generate(self, n: int | None = None, *, prompts: Sequence[str] | None = None, seed: int = 0,
                 batch_size: int = 64) -> Any:
        """An iterator of uint8 tensors [B, C, H, W]; ``n`` images, or one per prompt."""
        raise NotImplementedError


class Classifier(Subject):
    """A differentiable classifier: ``logits(x)`` for inputs in ``input_range``.

    The adapter owns the input range and the normalisation (mean/std), so attacks work in
    the declared input space. Detectors (real vs generated) are classifiers with
    ``class_names`` such as ``("real", "fake")``.

    Capabilities: ``logits``, ``gradients``.
    """

    kind: ClassVar[str] = "classifier"
    capabilities = frozenset({"logits", "gradients"})
    input_shape: tuple[int, ...] = ()
    input_range: tuple[float, float] = (0.0, 1.0)
    num_classes: int = 0
    class_names: tuple[str, ...] | None = None
    #: The torch module mapping inputs in ``input_range`` to logits (normalisation inside).
    model: Any = None

    def logits(self, x: Any) -> Any:
        """Logits [N, num_classes] for inputs [N, *input_shape] in ``input_range``; differentiable."""
        return self.model(x)


class Encoder(Subject):
    """Embeds text and/or images (a judge model: CLIP, sentence encoders).

    Capabilities: ``embed_text`` and/or ``embed_image``.
    """

    kind: ClassVar[str] = "encoder"
    capabilities = frozenset({"embed_text"})

    def embed_text(self, texts: Sequence[str], *, batch_size: int = 64) -> Any:
        """Float tensor [N, D], one embedding per text (not normalised)."""
        raise NotImplementedError

    def embed_image(self, images: Any, *, batch_size: int = 64) -> Any:
        """Float tensor [N, D] for uint8 NCHW images."""
        raise NotImplementedError
