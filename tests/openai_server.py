"""A small OpenAI-compatible server over a tiny transformers model, for the remote-subject tests.

It speaks the parts of the vLLM / llama.cpp surface that ``source: openai-compatible`` uses
(``/v1/models``, ``/v1/completions`` with ``echo`` and ``logprobs``, ``/tokenize``,
``/detokenize``), computing real log-probabilities with the model, so a test can check that
an audit through the server equals the same audit in process. It listens on 127.0.0.1 only,
on a free port, and stops by itself after ``lifetime_s`` even if a test forgets to stop it.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch


class FakeOpenAIServer:
    """``with FakeOpenAIServer(model, tokenizer) as url: ...`` gives ``http://127.0.0.1:PORT/v1``."""

    def __init__(self, model: Any, tokenizer: Any, *, logprobs: bool = True, tokenize: bool = True,
                 lifetime_s: float = 120.0, name: str = "tiny-remote"):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.logprobs, self.tokenize = logprobs, tokenize
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> str:
        self._thread.start()
        self._timer.start()
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    # -- the API ---------------------------------------------------------------------------
    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        with self._lock:  # one model, one request at a time
            self.requests.append((path, body))
            if path == "/v1/models":
                return 200, {"object": "list", "data": [{"id": self.name, "object": "model"}]}
            if path == "/tokenize" and self.tokenize:
                ids = self.tokenizer.encode(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))
                return 200, {"tokens": list(ids), "count": len(ids)}
            if path == "/detokenize" and self.tokenize:
                return 200, {"prompt": self.tokenizer.decode(body["tokens"])}
            if path == "/v1/completions":
                return 200, self._completions(body)
            return 404, {"error": f"no route {path}"}

    def _completions(self, body: dict[str, Any]) -> dict[str, Any]:
        prompts = body["prompt"]
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        choices = []
        for i, prompt in enumerate(prompts):
            ids = prompt if isinstance(prompt, list) else self.tokenizer.encode(prompt, add_special_tokens=True)
            x = torch.tensor([ids])
            gen = self._generate(x, body)
            choice: dict[str, Any] = {"index": i, "text": self.tokenizer.decode(gen), "finish_reason": "length"}
            if body.get("echo") and body.get("logprobs") is not None:
                choice["logprobs"] = ({"token_logprobs": [None] + self._scores(ids + gen)} if self.logprobs
                                      else None)
            choices.append(choice)
        return {"object": "text_completion", "model": self.name, "choices": choices}

    def _generate(self, x: torch.Tensor, body: dict[str, Any]) -> list[int]:
        n = int(body.get("max_tokens", 16))
        temperature = float(body.get("temperature", 1.0))
        if n == 0:
            return []
        if temperature > 0:
            torch.manual_seed(int(body.get("seed", 0)))
        with torch.inference_mode():
            out = self.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                                      do_sample=temperature > 0, temperature=temperature or None,
                                      top_k=None, top_p=None, pad_token_id=0)
        return out[0, x.shape[1]:].tolist()

    def _scores(self, ids: list[int]) -> list[float]:
        x = torch.tensor([ids])
        with torch.inference_mode():
            logp = torch.log_softmax(self.model(input_ids=x).logits[0, :-1].float(), -1)
        return logp.gather(1, x[0, 1:, None])[:, 0].tolist()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._reply(*server.answer(self.path, {}))

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                self._reply(*server.answer(self.path, json.loads(self.rfile.read(length) or b"{}")))

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
