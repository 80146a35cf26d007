"""A real HTTP server on 127.0.0.1 that speaks the chat-completions protocol and answers from a script.

Each entry of the script answers one request, in order: a string is the reply's content; a dict
may instead give an HTTP `status` (and `body`) to return, `delay` seconds to wait first, `trickle`
seconds to wait before each byte of the answer (a server that is slow, not silent), or the
`content` with the `usage` to report (else usage is counted, see below) and the `finish_reason`
(else "stop"; "length" says the reply was cut at the model's limit); a callable receives the
request's JSON and returns either. When the script runs out, the last entry repeats. Every
request's JSON is kept in `requests`.

A request with `stream: true` is answered as llama.cpp, vLLM, Ollama and OpenAI do: server-sent
events of `chat.completion.chunk` objects, a few tokens each, the last with its finish reason,
then (when `stream_options.include_usage` is asked) one with no choices and the usage, then
`data: [DONE]`. A dict entry may add `token_seconds` (a wait before each chunk: a model that
writes slowly), `endless` (after the content, the model rambles on until the completion limit it
was sent, or without one until its context is full, as a local server does) and `cut_after`
(the connection is dropped after that many characters, with no end); `ignore_limit` makes a
server (a proxy, say) that does not honour the completion limit. A client that goes away
mid-stream stops the generation; each such stop is kept in `abandoned`, and `generating` counts
the answers being written now.

Like a real server the fake counts tokens (`count_tokens`: words, digit runs, punctuation and
whitespace runs), and it can be given what a local server has: `context_tokens` (its window:
llama.cpp refuses a prompt that does not fit and stops a reply at the window's end; with
`context_style="vllm"` the prompt and the completion limit must fit together), `prefix_cache`
(it reports `usage.prompt_tokens_details.cached_tokens`: the tokens of the longest common prefix
of this prompt and the one before, as llama.cpp's slot cache and OpenAI's prompt caching reuse),
`drop_system` (a chat template that drops system messages: the scripted model sees the rest only),
`stream_usage=False` (no usage chunk in a stream, as llama-cpp-python's server), and its metadata:
`/v1/models` (vLLM's `max_model_len` when `context_style="vllm"`, llama.cpp's `meta` as `model_meta`),
llama.cpp's `/props` (`default_generation_settings.n_ctx`) and a tokenizer (`tokenizer="llama.cpp"`: `/tokenize`,
`{"content": ...}` -> tokens; `"llama-cpp-python"`: `/extras/tokenize/count`, `{"input": ...}` -> count).

The tool's endpoint check (agents.CHECK_MESSAGES, sent before anything trains) is answered from
`check_script` instead, in the same way, and kept in `checks`; its default answer is "ok" with no
tokens, so that tests of proposals and of token counts need not know the check is there.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from autoresearch.agents import CHECK_MESSAGES

CHECK_ANSWER = {"content": "ok", "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
# GPT-2's pre-tokenizer, roughly: a word with the space before it, up to three digits, a run of punctuation,
# whitespace; long words split (BPE does too).
TOKEN = re.compile(r" ?[A-Za-z]{1,10}| ?\d{1,3}| ?[^\sA-Za-z\d]{1,2}|\s+(?!\S)|\s+")
CHUNK_TOKENS = 4  # tokens per streamed chunk
RAMBLE = "\nAnd one more thought on why this should help, considered at some length."


def count_tokens(text: str) -> int:
    """The fake tokenizer: about what a BPE tokenizer makes of code and prose (3 to 4.5 characters a token)."""
    return len(tokenize(text))


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(text)


def rendered(messages: list[dict]) -> str:
    """The prompt as a chat template lays it out: each message with its role, in order."""
    return "".join(f"<|{m.get('role')}|>\n{m.get('content') or ''}\n" for m in messages)


def common_prefix_tokens(first: list[str], second: list[str]) -> int:
    count = 0
    for a, b in zip(first, second):
        if a != b:
            break
        count += 1
    return count


class FakeLLM:
    def __init__(self, context_tokens: int | None = None, context_style: str = "llama.cpp",
                 prefix_cache: bool = False, drop_system: bool = False, tokenizer: str | None = None,
                 stream_usage: bool = True, model_meta: dict | None = None, gpu_memory: int | None = None):
        self.script: list = []
        self.requests: list[dict] = []
        self.check_script: list = [CHECK_ANSWER]
        self.checks: list[dict] = []
        self.context_tokens = context_tokens
        self.context_style = context_style
        self.prefix_cache = prefix_cache
        self.drop_system = drop_system
        self.tokenizer = tokenizer
        self.stream_usage = stream_usage
        self.gpu_memory = gpu_memory  # Ollama's /api/ps: the GPU memory its loaded model holds
        self.model_meta = model_meta  # llama.cpp's `meta` of its /v1/models entry (n_params, n_ctx_train...)
        self.seen: list[list[dict]] = []  # the messages the scripted model saw, after the chat template
        self.cached: list[int] = []  # cached_tokens reported for each proposal request
        self.abandoned: list[float] = []  # when a client went away while its answer was being written
        self.generating = 0
        self._previous_prompt: list[str] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()  # wakes handlers still waiting out a scripted delay
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def set_script(self, entries: list) -> None:
        with self._lock:
            self.script = list(entries)
            self.requests = []

    def set_check_script(self, entries: list) -> None:
        with self._lock:
            self.check_script = list(entries)
            self.checks = []

    def next_entry(self, request: dict):
        with self._lock:
            is_check = request.get("messages") == list(CHECK_MESSAGES)
            received, script = (self.checks, self.check_script) if is_check else (self.requests, self.script)
            received.append(request)
            if not script:
                return "DESCRIPTION: nothing scripted"
            entry = script.pop(0) if len(script) > 1 else script[0]
        if callable(entry):
            seen = dict(request, messages=self.template(request.get("messages", [])))
            entry = entry(seen)
        return entry

    def template(self, messages: list[dict]) -> list[dict]:
        """What the model is shown of the messages (a template that drops system messages shows the rest)."""
        return [m for m in messages if not (self.drop_system and m.get("role") == "system")]

    def prompt_usage(self, request: dict) -> dict:
        """prompt_tokens of a request, with cached_tokens when this server keeps a prefix cache."""
        tokens = tokenize(rendered(self.template(request.get("messages", []))))
        usage = {"prompt_tokens": len(tokens)}
        if self.prefix_cache and request.get("messages") != list(CHECK_MESSAGES):
            with self._lock:
                cached = common_prefix_tokens(self._previous_prompt, tokens)
                self._previous_prompt = tokens
                self.cached.append(cached)
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        return usage

    def close(self) -> None:
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0].rstrip("/")
                if path.endswith("/models"):
                    model = {"id": "fake-model", "object": "model", "owned_by": "fake"}
                    if fake.context_tokens and fake.context_style == "vllm":
                        model["max_model_len"] = fake.context_tokens
                    if fake.model_meta:
                        model["meta"] = fake.model_meta
                    self._send(200, json.dumps({"object": "list", "data": [model]}).encode())
                elif path == "/api/ps" and fake.gpu_memory is not None:
                    self._send(200, json.dumps({"models": [{"name": "fake-model", "model": "fake-model",
                                                            "size_vram": fake.gpu_memory}]}).encode())
                elif path == "/props" and fake.context_tokens and fake.context_style == "llama.cpp":
                    self._send(200, json.dumps({"default_generation_settings": {"n_ctx": fake.context_tokens},
                                                "total_slots": 1}).encode())
                else:
                    self._send(404, json.dumps({"error": {"code": 404, "message": "File Not Found",
                                                          "type": "not_found_error"}}).encode())

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                request = json.loads(self.rfile.read(length) or b"{}")
                path = self.path.rstrip("/")
                if path in ("/tokenize", "/extras/tokenize/count"):
                    served = {"llama.cpp": "/tokenize", "llama-cpp-python": "/extras/tokenize/count"}
                    if fake.tokenizer is None or served[fake.tokenizer] != path:
                        self._send(404, b'{"error": {"code": 404, "message": "File Not Found"}}')
                    elif path == "/tokenize":
                        pieces = tokenize(request.get("content", ""))
                        self._send(200, json.dumps({"tokens": list(range(len(pieces)))}).encode())
                    else:
                        self._send(200, json.dumps({"count": count_tokens(request.get("input", ""))}).encode())
                    return
                entry = fake.next_entry(request)
                usage, finish_reason, trickle = None, "stop", 0.0
                options: dict = {}
                if isinstance(entry, dict):
                    options = entry
                    usage = entry.get("usage")
                    finish_reason = entry.get("finish_reason", finish_reason)
                    trickle = entry.get("trickle", 0.0)
                    fake._closed.wait(entry.get("delay", 0))
                    if "status" in entry:
                        body = json.dumps(entry.get("body", {"error": {"message": "scripted failure"}})).encode()
                        self._send(entry["status"], body)
                        return
                    entry = entry.get("content", "")
                prompt = fake.prompt_usage(request)
                limit = request.get("max_completion_tokens") or request.get("max_tokens")
                refusal = self._context_refusal(prompt["prompt_tokens"], limit)
                if refusal is not None:
                    self._send(400, json.dumps(refusal).encode())
                    return
                room = None if fake.context_tokens is None else fake.context_tokens - prompt["prompt_tokens"]
                pieces, finish_reason = self._generate(entry, options, limit, room, finish_reason)
                if usage is None:
                    usage = {**prompt, "completion_tokens": len(pieces),
                             "total_tokens": prompt["prompt_tokens"] + len(pieces)}
                if request.get("stream"):
                    self._stream(request, pieces, finish_reason, usage, options, trickle)
                    return
                body = json.dumps({
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": request.get("model", "fake"),
                    "choices": [{"index": 0, "finish_reason": finish_reason,
                                 "message": {"role": "assistant", "content": "".join(pieces)}}],
                    "usage": usage,
                }).encode()
                if trickle:
                    self._trickle(body, trickle)
                else:
                    self._send(200, body)

            def _context_refusal(self, prompt_tokens: int, limit: int | None) -> dict | None:
                """The 400 a real server answers when the request does not fit its window, else None."""
                context = fake.context_tokens
                if context is None:
                    return None
                if fake.context_style == "vllm":
                    if prompt_tokens + (limit or 0) <= context:
                        return None
                    return {"object": "error", "type": "BadRequestError", "param": None, "code": 400,
                            "message": f"This model's maximum context length is {context} tokens. However, you "
                                       f"requested {limit or 0} output tokens and your prompt contains at least "
                                       f"{prompt_tokens} input tokens, for a total of at least "
                                       f"{prompt_tokens + (limit or 0)} tokens. Please reduce the length of the "
                                       "input prompt or the number of requested output tokens."}
                if prompt_tokens < context:
                    return None
                return {"error": {"code": 400, "type": "exceed_context_size_error", "n_prompt_tokens": prompt_tokens,
                                  "n_ctx": context, "message": f"request ({prompt_tokens} tokens) exceeds the "
                                                               f"available context size ({context} tokens), try "
                                                               "increasing it"}}

            def _generate(self, content: str, options: dict, limit: int | None, room: int | None,
                          finish_reason: str) -> tuple[list[str], str]:
                """The reply's tokens as the model writes them, and why it stopped."""
                pieces = tokenize(content)
                endless = options.get("endless")
                if options.get("ignore_limit"):
                    limit = None
                stops = [n for n in (limit, room) if n is not None]
                stop_at = min(stops) if stops else None
                if endless and stop_at is None:
                    stop_at = 1_000_000  # no limit and no window: practically forever
                if endless:
                    ramble = tokenize(RAMBLE)
                    while len(pieces) < stop_at:
                        pieces.extend(ramble)
                if stop_at is not None and len(pieces) >= stop_at and (endless or len(pieces) > stop_at):
                    return pieces[:stop_at], "length"
                return pieces, finish_reason

            def _stream(self, request: dict, pieces: list[str], finish_reason: str, usage: dict,
                        options: dict, trickle: float = 0.0) -> None:
                """Server-sent events, a few tokens a chunk; a client that goes away stops the writing."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": request.get("model", "fake")}
                wait, cut_after = options.get("token_seconds", 0.0), options.get("cut_after")
                self.trickle = trickle
                with fake._lock:
                    fake.generating += 1
                try:
                    self._event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                      "finish_reason": None}]})
                    written = 0
                    for start in range(0, len(pieces), CHUNK_TOKENS):
                        if wait and fake._closed.wait(wait):
                            return
                        text = "".join(pieces[start:start + CHUNK_TOKENS])
                        if cut_after is not None and written + len(text) > cut_after:
                            return  # the connection drops mid-answer: no finish, no [DONE]
                        self._event({**base, "choices": [{"index": 0, "delta": {"content": text},
                                                          "finish_reason": None}]})
                        written += len(text)
                    self._event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}]})
                    if (request.get("stream_options") or {}).get("include_usage") and fake.stream_usage:
                        self._event({**base, "choices": [], "usage": usage})
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    with fake._lock:
                        fake.abandoned.append(time.monotonic())
                finally:
                    with fake._lock:
                        fake.generating -= 1

            def _event(self, payload: dict) -> None:
                data = b"data: " + json.dumps(payload).encode() + b"\n\n"
                for piece in ([data[i:i + 1] for i in range(len(data))] if self.trickle else [data]):
                    if self.trickle and fake._closed.wait(self.trickle):
                        raise BrokenPipeError("the server is closing")
                    self.wfile.write(piece)
                    self.wfile.flush()

            def _trickle(self, body: bytes, seconds: float) -> None:
                """The whole answer, headers and all, one byte at a time: each read is quick, the answer is not."""
                head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                        "Connection: close\r\n\r\n").encode()
                self.close_connection = True
                try:
                    for index in range(len(head + body)):
                        if fake._closed.wait(seconds):
                            return
                        self.wfile.write((head + body)[index:index + 1])
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler
