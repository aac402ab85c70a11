"""Local stand-ins for the LLM providers' HTTP APIs: the real SDKs talk to them on 127.0.0.1.

    with StandIn([reply, reply, ...]) as server:    # or StandIn(callable(request) -> reply)
        ... base_url=server.url ...
        server.requests                              # what the SDK sent: path, headers, JSON body

A reply is a `Reply` (status, headers, a JSON body or server-sent events) or a plain dict (a JSON
200). The builders below speak the Anthropic Messages API and OpenAI chat completions, with usage
and prompt-cache fields, tool calls, and streaming events for Claude Code; and what local servers
answer when they cannot serve a request (vLLM's refusals, Ollama's silent truncation).
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Union

_ids = itertools.count(1)


@dataclass
class Reply:
    body: Any = None  # dict/list: JSON; str: sent as is
    status: int = 200
    headers: dict = field(default_factory=dict)
    events: Optional[list[dict]] = None  # server-sent events instead of a body


@dataclass
class Request:
    path: str
    headers: dict
    body: dict


class StandIn:
    def __init__(self, replies: Union[list, Callable[[Request], Any]]):
        self.script = replies if callable(replies) else list(replies)
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"raw": raw.decode(errors="replace")}
                request = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                self._send(stand_in._reply(request))

            def do_GET(self):
                self._send(Reply({"error": {"type": "not_found_error", "message": "no such thing"}}, status=404))

            def _send(self, reply: Reply):
                if reply.events is not None:
                    data = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in reply.events).encode()
                    kind = "text/event-stream"
                else:
                    data = (reply.body if isinstance(reply.body, str) else json.dumps(reply.body)).encode()
                    kind = "application/json"
                self.send_response(reply.status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(data)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _reply(self, request: Request) -> Reply:
        with self.lock:
            self.requests.append(request)
            if callable(self.script):
                reply = self.script(request)
            elif self.script:
                reply = self.script.pop(0)
            else:
                reply = Reply({"type": "error", "error": {"type": "api_error", "message": "the script is over"}},
                              status=500, headers={"x-should-retry": "false"})
        return reply if isinstance(reply, Reply) else Reply(reply)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "StandIn":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------- Anthropic Messages API


def tool_use(name: str, **arguments) -> dict:
    return {"type": "tool_use", "id": f"toolu_{next(_ids):04d}", "name": name, "input": arguments}


def text(words: str) -> dict:
    return {"type": "text", "text": words}


def message(*blocks: dict, stop: Optional[str] = None, usage: Optional[dict] = None,
            model: str = "claude-opus-5-5") -> dict:
    """A Messages API response; stop_reason tool_use when a block calls a tool."""
    if stop is None:
        stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
    return {"id": f"msg_{next(_ids):04d}", "type": "message", "role": "assistant", "model": model,
            "content": list(blocks), "stop_reason": stop, "stop_sequence": None,
            "usage": usage or {"input_tokens": 10, "output_tokens": 5}}


def error(status: int, kind: str, words: str, **headers) -> Reply:
    return Reply({"type": "error", "error": {"type": kind, "message": words}}, status=status,
                 headers={k.replace("_", "-"): v for k, v in headers.items()})


def stream(response: dict) -> list[dict]:
    """A Messages API response as the server-sent events of a streaming request."""
    start = {**response, "content": [], "stop_reason": None}
    events = [{"type": "message_start", "message": start}]
    for index, block in enumerate(response["content"]):
        if block["type"] == "text":
            events += [{"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
                       {"type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": block["text"]}}]
        else:
            events += [{"type": "content_block_start", "index": index,
                        "content_block": {**block, "input": {}}},
                       {"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}}]
        events.append({"type": "content_block_stop", "index": index})
    events += [{"type": "message_delta", "delta": {"stop_reason": response["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": response["usage"].get("output_tokens", 0)}},
               {"type": "message_stop"}]
    return events


def tool_results(request: Request) -> list[dict]:
    """Every tool_result block the request carries, oldest first."""
    found = []
    for entry in request.body.get("messages", []):
        if isinstance(entry.get("content"), list):
            found += [c for c in entry["content"] if c.get("type") == "tool_result"]
    return found


# ---------------------------------------------------------------------------- OpenAI chat completions


def call(name: str, arguments: Union[dict, str]) -> dict:
    return {"id": f"call_{next(_ids):04d}", "type": "function",
            "function": {"name": name, "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}}


def completion(content: Optional[str] = None, calls: Optional[list] = None, usage: Optional[dict] = None,
               model: str = "local-model") -> dict:
    finish = "tool_calls" if calls else "stop"
    return {"id": f"chatcmpl-{next(_ids)}", "object": "chat.completion", "created": 1700000000, "model": model,
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}}],
            "usage": usage or {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


# ---------------------------------------------------------------------------- local servers' refusals


def vllm_refusal(words: str) -> Reply:
    """vLLM's OpenAI-compatible server refusing a request: HTTP 400 with its error object."""
    return Reply({"error": {"message": words, "type": "BadRequestError", "param": None, "code": 400}}, status=400)


# What vLLM answers a request with tools when it was started without its tool-calling flags, and one that does not
# fit its context window (--max-model-len).
VLLM_TOOL_CHOICE = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
VLLM_CONTEXT = ("This model's maximum context length is 8192 tokens. However, you requested 24000 tokens (8000 in the "
                "messages, 16000 in the completion). Please reduce the length of the messages or completion.")


def ollama_truncated(content: Optional[str] = None, calls: Optional[list] = None, context: int = 2048) -> dict:
    """What Ollama answers a prompt longer than its context length: a normal completion, counting only the tokens
    it kept (it cuts the prompt without an error)."""
    return completion(content, calls, usage={"prompt_tokens": context, "completion_tokens": 20,
                                             "total_tokens": context + 20})


# ---------------------------------------------------------------------------- an agent's context, without a session


def context_for(root, history=(), metric: float = 5.4):
    """The Context a session would give an agent on the toy target at `root`, after a baseline and `history`."""
    from autoresearch.agents import Context
    from autoresearch.records import Experiment, State
    from autoresearch.target import Target

    target = Target.open(root)
    baseline = Experiment(id=1, tag="t", index=0, state=State.BASELINE, parent=None, commit="c0", description="baseline",
                          agent="harness", metric=metric)
    history = (baseline, *history)
    parent = [e for e in history if e.state in (State.BASELINE, State.KEPT)][-1]
    files = {p: (target.root / p).read_text() for p in ("train.py",)}
    return Context(target.config, target.program(), files, parent, baseline, tuple(history))
