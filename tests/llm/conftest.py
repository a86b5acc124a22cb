"""A scriptable OpenAI-compatible chat server on loopback, and a tiny causal LM directory."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"


@dataclass
class Seen:
    """One request the server received."""

    at: float
    path: str
    headers: dict[str, str]  # names in lower case
    body: dict[str, Any]


@dataclass
class ChatServer:
    """``script`` holds what the next requests get (one entry each, then "ok"):

    ``("ok", text)``, ``("429", retry_after or None)``, ``("500",)``, ``("sleep", seconds)``
    (answer only after that long), ``("hold", seconds)`` (answer "ok" after that long),
    ``("text", text)`` (answer ``text`` as the reply content), ``("length",)`` (a reply cut
    at max_tokens), ``("401",)``."""

    url: str
    script: deque[tuple[Any, ...]] = field(default_factory=deque)
    seen: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    prompt_tokens: int = 11
    completion_tokens: int = 7


def _reply(body: dict[str, Any], content: str, finish: str, server: ChatServer) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0,
        "model": body.get("model", ""),
        "choices": [{"index": 0, "finish_reason": finish,
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": server.prompt_tokens,
                  "completion_tokens": server.completion_tokens,
                  "total_tokens": server.prompt_tokens + server.completion_tokens},
    }


def _handler(server: ChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: dict[str, Any],
                  headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timed out) first

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            with server.lock:
                server.seen.append(Seen(time.monotonic(), self.path,
                                        {k.lower(): v for k, v in self.headers.items()}, body))
                step = server.script.popleft() if server.script else ("ok", "a fine reply")
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                self._answer(step, body)
            finally:
                with server.lock:
                    server.in_flight -= 1

        def _answer(self, step: tuple[Any, ...], body: dict[str, Any]) -> None:
            kind = step[0]
            error = {"error": {"message": f"scripted {kind}", "type": "test"}}
            if kind == "429":
                headers = {} if step[1] is None else {"Retry-After": str(step[1])}
                self._send(429, error, headers)
            elif kind in ("500", "401"):
                self._send(int(kind), error)
            elif kind in ("sleep", "hold"):
                time.sleep(step[1])
                self._send(200, _reply(body, "a late reply", "stop", server))
            elif kind == "length":
                self._send(200, _reply(body, '{"title": "cut sh', "length", server))
            else:  # "ok" and "text"
                self._send(200, _reply(body, step[1], "stop", server))

    return Handler


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    state = ChatServer(url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


#: Words of the tiny model's vocabulary (any text outside it becomes [UNK]).
WORDS = ["hello", "world", "a", "film", "about", "space", "user:", "assistant:", "system:",
         "recommend", "something", "quiet", "{", "}", '"title":', '"x"', "the", "sea"]


def _tiny_lm(directory: Path, chat_template: str | None) -> Path:
    """A 1-layer GPT-2 with random weights and a word-level tokenizer, saved as a user would."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    specials = ["[UNK]", "[PAD]", "[EOS]"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                  eos_token="[EOS]")
    if chat_template is not None:
        tok.chat_template = chat_template
    tok.save_pretrained(directory)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=128, n_embd=16, n_layer=1, n_head=2,
                     bos_token_id=vocab["[EOS]"], eos_token_id=vocab["[EOS]"],
                     pad_token_id=vocab["[PAD]"])
    GPT2LMHeadModel(cfg).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_lm(tmp_path_factory.mktemp("tiny-gpt2"), None)


@pytest.fixture(scope="session")
def tiny_chat_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant:{% endif %}")
    return _tiny_lm(tmp_path_factory.mktemp("tiny-gpt2-chat"), template)
