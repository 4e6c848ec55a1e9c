"""``source: openai-compatible``: a text generator behind a local vLLM, llama.cpp or TGI server.

``path`` is the server's OpenAI-compatible base URL (``http://127.0.0.1:8000/v1``);
``options`` may name the ``model`` (default: the first the server lists), ``api_key_env``
(the *name* of an environment variable holding the key: a key never sits in a spec or a
report), ``timeout_s``, ``batch_size`` (prompts per request), ``bos_token_id`` and
``max_context``.

What the subject offers depends on what the server returns, found out once at load time:

- ``generate`` always (``/completions``). Greedy requests are batched; sampled ones are sent
  one per sample with that sample's seed (the OpenAI ``seed`` field is per request), so a
  sample does not depend on which others were sent with it, as far as the server honours
  seeds.
- ``tokenize`` when the server has ``/tokenize`` and ``/detokenize`` (vLLM and llama.cpp do;
  both request shapes are sent).
- ``token_logprobs`` when ``/completions`` with ``echo`` and ``logprobs`` returns the prompt's
  token log-probabilities (vLLM does; many hosted APIs do not). Then perplexity, stereotype
  pairs, detectability and membership inference run against the server too.

A missing capability makes the probes that need it skip with the reason found here (e.g.
"the server returned no prompt logprobs for echo=true"), never crash.

Example (spec)::

    subject:
      kind: text-generator
      source: openai-compatible
      path: http://127.0.0.1:8000/v1
      options: {model: HuggingFaceTB/SmolLM2-135M-Instruct}
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from audit.errors import InputError, SpecError
from audit.findings import SubjectIdentity
from audit.spec import SubjectSpec
from audit.subjects.base import TextGenerator

__all__ = ["OpenAICompatibleGenerator", "load_openai_compatible"]

_OPTIONS = {"model", "api_key_env", "timeout_s", "batch_size", "bos_token_id", "max_context"}
_SAMPLE_THREADS = 4


class _Client:
    """JSON over HTTP to one server (standard library only: no client package to install)."""

    def __init__(self, base_url: str, *, api_key: str | None, timeout_s: float):
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        root_path = parts.path[:-3] if parts.path.endswith("/v1") else parts.path
        self.root_url = f"{parts.scheme}://{parts.netloc}{root_path}".rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def call(self, url: str, payload: dict[str, Any] | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(url, data=data, headers=headers, method="GET" if data is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 (user's URL)
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")[:200]
            raise _ServerError(f"{url}: HTTP {exc.code} {exc.reason}: {body}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _ServerError(f"{url}: cannot reach the server ({reason})") from exc
        except json.JSONDecodeError as exc:
            raise _ServerError(f"{url}: the server's answer is not JSON ({exc.msg})") from exc


class _ServerError(Exception):
    pass


class OpenAICompatibleGenerator(TextGenerator):
    """A :class:`~audit.subjects.TextGenerator` whose model runs behind an OpenAI-compatible server."""

    def __init__(self, client: _Client, model: str, identity: SubjectIdentity, *, batch_size: int = 16,
                 bos_token_id: int | None = None, max_context: int | None = None):
        self.client = client
        self.model = model
        self.identity = identity
        self.device = "cpu"  # log-probabilities come back as host tensors
        self.batch_size = batch_size
        self.bos_token_id = bos_token_id
        self.max_context = max_context
        self.pad_token_id = 0
        self.capability_notes: dict[str, str] = {}
        #: generate() takes one seed per prompt (sampled prompts go one request each, with its seed).
        self.per_sample_seeds = True
        self.capabilities = frozenset({"generate"})

    # -- generation ------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 32, temperature: float = 0.0,
                 seed: int | Sequence[int] = 0, **_: Any) -> list[str]:
        prompts = list(prompts)
        seeds = None if isinstance(seed, int) else [int(s) for s in seed]
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        if temperature <= 0:
            out: list[str] = []
            for k in range(0, len(prompts), self.batch_size):
                out += self._complete(prompts[k:k + self.batch_size], max_new_tokens, 0.0, None)
            return out
        per_sample = seeds if seeds is not None else [int(seed) + i for i in range(len(prompts))]
        with ThreadPoolExecutor(_SAMPLE_THREADS) as pool:
            return list(pool.map(lambda ps: self._complete([ps[0]], max_new_tokens, temperature, ps[1])[0],
                                 zip(prompts, per_sample)))

    def _complete(self, prompts: list[Any], max_tokens: int, temperature: float, seed: int | None,
                  **extra: Any) -> list[str]:
        payload = {"model": self.model, "prompt": prompts, "max_tokens": max_tokens,
                   "temperature": temperature, **extra}
        if seed is not None:
            payload["seed"] = int(seed)
        answer = self._post("/completions", payload)
        return [c.get("text", "") for c in _choices(answer, len(prompts))]

    # -- tokens and scores -----------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        out = []
        for text in texts:
            answer = self._call(self.client.root_url + "/tokenize", {
                "model": self.model, "prompt": text, "content": text,
                "add_special_tokens": False, "add_special": False})
            tokens = answer.get("tokens") if isinstance(answer, dict) else None
            if not isinstance(tokens, list):
                raise InputError(f"{self.client.root_url}/tokenize: expected {{'tokens': [...]}}, got {str(answer)[:120]}")
            out.append([int(t) for t in tokens])
        return out

    def decode(self, ids: Sequence[int]) -> str:
        answer = self._call(self.client.root_url + "/detokenize", {"model": self.model, "tokens": [int(i) for i in ids]})
        text = answer.get("prompt", answer.get("content")) if isinstance(answer, dict) else None
        if not isinstance(text, str):
            raise InputError(f"{self.client.root_url}/detokenize: expected a text, got {str(answer)[:120]}")
        return text

    def token_logprobs(self, input_ids: Any, attention_mask: Any | None = None) -> Any:
        import torch

        ids = torch.as_tensor(input_ids).cpu()
        b, t = ids.shape
        lengths = (attention_mask.cpu().sum(1).tolist() if attention_mask is not None else [t] * b)
        out = torch.zeros(b, t - 1, dtype=torch.float32)
        rows = [ids[r, :int(n)].tolist() for r, n in enumerate(lengths)]
        for k in range(0, b, self.batch_size):
            for r, scores in enumerate(self._prompt_logprobs(rows[k:k + self.batch_size]), start=k):
                out[r, :len(scores)] = torch.tensor(scores, dtype=torch.float32)
        return out

    def _prompt_logprobs(self, rows: list[list[int]]) -> list[list[float]]:
        """``log p(row[i] | row[:i])`` for i >= 1 of each row, from echo + logprobs."""
        answer = self._post("/completions", {"model": self.model, "prompt": rows, "max_tokens": 1,
                                             "temperature": 0.0, "echo": True, "logprobs": 0})
        out = []
        for row, choice in zip(rows, _choices(answer, len(rows))):
            lp = (choice.get("logprobs") or {}).get("token_logprobs")
            if not isinstance(lp, list) or len(lp) < len(row) or any(v is None for v in lp[1:len(row)]):
                raise InputError(f"{self.client.base_url}/completions: the server returned no prompt logprobs "
                                 f"for echo=true ({len(row)} prompt tokens, got {_describe(lp)})")
            out.append([float(v) for v in lp[1:len(row)]])
        return out

    # -- plumbing --------------------------------------------------------------------------
    def _post(self, path: str, payload: dict[str, Any]) -> Any:
        return self._call(self.client.base_url + path, payload)

    def _call(self, url: str, payload: dict[str, Any] | None) -> Any:
        try:
            return self.client.call(url, payload)
        except _ServerError as exc:
            raise InputError(str(exc)) from None

    def _discover(self) -> None:
        """Which capabilities this server offers, each missing one with its reason."""
        caps = {"generate"}
        try:
            ids = self.encode(["Hello world"])[0]
            if not ids:
                raise InputError("/tokenize returned no tokens for 'Hello world'")
            self.decode(ids)
            caps.add("tokenize")
        except InputError as exc:
            self.capability_notes["tokenize"] = f"the server cannot tokenize: {exc}"
        if "tokenize" in caps:
            try:
                self._prompt_logprobs([ids + ids])
                caps.add("token_logprobs")
            except InputError as exc:
                self.capability_notes["token_logprobs"] = str(exc)
        else:
            self.capability_notes["token_logprobs"] = "needs /tokenize to send token ids"
        self.capabilities = frozenset(caps)


def load_openai_compatible(spec: SubjectSpec, base_dir: Path, device: Any, cache_dir: Path) -> OpenAICompatibleGenerator:
    """The loader of ``(text-generator, openai-compatible)``."""
    parts = urlsplit(spec.path)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SpecError(f"subject.path: expected the server's base URL (e.g. http://127.0.0.1:8000/v1), "
                        f"got {spec.path[:200]!r}")
    unknown = sorted(set(spec.options) - _OPTIONS)
    if unknown:
        raise SpecError(f"subject.options: unknown option(s) {unknown} for source 'openai-compatible'; "
                        f"expected some of {sorted(_OPTIONS)}")
    opts = spec.options
    api_key = None
    if opts.get("api_key_env"):
        api_key = os.environ.get(str(opts["api_key_env"]))
        if not api_key:
            raise InputError(f"subject.options.api_key_env: the environment variable {opts['api_key_env']!r} is not set")
    client = _Client(spec.path, api_key=api_key, timeout_s=float(opts.get("timeout_s", 60)))
    model = opts.get("model") or _first_model(client)
    batch_size = opts.get("batch_size", 16)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SpecError(f"subject.options.batch_size: expected an integer >= 1, got {batch_size!r}")
    def identity(details: dict[str, Any]) -> SubjectIdentity:
        return SubjectIdentity(name=spec.name or str(model), kind=spec.kind, source=spec.source,
                               path=spec.path, revision=spec.revision, details={"server_model": str(model), **details})

    lm = OpenAICompatibleGenerator(client, str(model), identity({}), batch_size=batch_size,
                                   bos_token_id=opts.get("bos_token_id"), max_context=opts.get("max_context"))
    lm._discover()
    lm.identity = identity({"capabilities": sorted(lm.capabilities),
                            **({"not_offered": dict(lm.capability_notes)} if lm.capability_notes else {})})
    return lm


def _first_model(client: _Client) -> str:
    try:
        answer = client.call(client.base_url + "/models")
    except _ServerError as exc:
        raise InputError(f"{exc} (is the server running? name the model with subject.options.model)") from None
    data = answer.get("data") if isinstance(answer, dict) else None
    if not data or not isinstance(data[0], dict) or "id" not in data[0]:
        raise InputError(f"{client.base_url}/models: the server lists no model; name it with subject.options.model")
    return str(data[0]["id"])


def _choices(answer: Any, n: int) -> list[dict[str, Any]]:
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or len(choices) != n:
        raise InputError(f"the server answered {_describe(choices)} choices for {n} prompts")
    return sorted(choices, key=lambda c: c.get("index", 0))


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return "nothing" if value is None else type(value).__name__
