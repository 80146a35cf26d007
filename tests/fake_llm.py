"""A real HTTP server on 127.0.0.1 that speaks the chat-completions protocol and answers from a script.

Each entry of the script answers one request, in order: a string is the reply's content; a dict
may instead give an HTTP `status` (and `body`) to return, `delay` seconds to wait first, `trickle`
seconds to wait before each byte of the answer (a server that is slow, not silent), or the
`content` with the `usage` to report (else usage is a quarter of the characters) and the
`finish_reason` (else "stop"; "length" says the reply was cut at the model's limit); a
callable receives the request's JSON and returns either. When the script runs out, the last entry
repeats. Every request's JSON is kept in `requests`.

The tool's endpoint check (agents.CHECK_MESSAGES, sent before anything trains) is answered from
`check_script` instead, in the same way, and kept in `checks`; its default answer is "ok" with no
tokens, so that tests of proposals and of token counts need not know the check is there.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from autoresearch.agents import CHECK_MESSAGES

CHECK_ANSWER = {"content": "ok", "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


class FakeLLM:
    def __init__(self):
        self.script: list = []
        self.requests: list[dict] = []
        self.check_script: list = [CHECK_ANSWER]
        self.checks: list[dict] = []
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
        return entry(request) if callable(entry) else entry

    def close(self) -> None:
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                request = json.loads(self.rfile.read(length) or b"{}")
                entry = fake.next_entry(request)
                usage, finish_reason, trickle = None, "stop", 0.0
                if isinstance(entry, dict):
                    usage = entry.get("usage")
                    finish_reason = entry.get("finish_reason", finish_reason)
                    trickle = entry.get("trickle", 0.0)
                    fake._closed.wait(entry.get("delay", 0))
                    if "status" in entry:
                        body = json.dumps(entry.get("body", {"error": {"message": "scripted failure"}})).encode()
                        self._send(entry["status"], body)
                        return
                    entry = entry.get("content", "")
                body = json.dumps({
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": request.get("model", "fake"),
                    "choices": [{"index": 0, "finish_reason": finish_reason,
                                 "message": {"role": "assistant", "content": entry}}],
                    "usage": usage or {"prompt_tokens": len(json.dumps(request.get("messages", []))) // 4,
                                       "completion_tokens": len(entry) // 4,
                                       "total_tokens": 0},
                }).encode()
                if trickle:
                    self._trickle(body, trickle)
                else:
                    self._send(200, body)

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
