"""What an OpenAI-compatible endpoint says when it refuses, and a bound on how long one call may take.

Servers word the same refusal differently; this module reads the few that change what the tool
does: a prompt longer than the model's context (OpenAI's `context_length_exceeded`, vLLM's and
llama-cpp-python's "maximum context length is N tokens", llama.cpp's `exceed_context_size_error`
with `n_prompt_tokens` and `n_ctx`, LM Studio's "context length of only N tokens", Ollama's "the
input length exceeds the context length"), and a completion limit sent under the name the model
does not take (OpenAI's reasoning models want `max_completion_tokens`, not `max_tokens`), and a
connection refused on this machine (nothing listens at the URL's port: the server is not started).

The `openai` client's timeout bounds the connection and each read, not the whole answer: a server
that sends a byte every few seconds never trips it. `call_within` bounds the whole call, and hands
a call it gives up on to `give_up` (the agent closes the answer's stream, so that the server stops
generating it: llama.cpp goes on writing an abandoned answer at full speed while the connection
stays open, and the retries queue behind it).

What a local server says of itself, where it says it: the model's context (vLLM's `max_model_len`
in `/v1/models`, llama.cpp's `n_ctx` in `/props`) and its tokenizer's count of a text (llama.cpp's
and vLLM's `/tokenize`, llama-cpp-python's `/extras/tokenize/count`), which the agent uses to size
its prompts. Hosted endpoints say neither.

What a server on this machine shares with the trainings (`shared_with_trainings`): the CPU where they
run on no GPU, a GPU where the server computes on one a training uses (its processes, found by the
port they listen on, among the GPU's; or, where the server runs as another user, Ollama's own report
of the GPU memory its models hold).
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar
from urllib.parse import urlsplit

DEFAULT_BASE_URL = "https://api.openai.com/v1"  # the openai client's own default

T = TypeVar("T")


class CallTimedOut(Exception):
    """The call gave no complete answer within its time."""


class CallStopped(Exception):
    """The run stopped (Ctrl-C, a stop) while the call was waited for; it was given up."""


STOP_POLL_SECONDS = 0.1


def call_within(seconds: float, call: Callable[[], T], give_up: Callable[[], None] | None = None,
                stop: threading.Event | None = None) -> T:
    """call() in a worker thread, waited for at most `seconds`; raises CallTimedOut past that.

    Past the time, or on Ctrl-C, `give_up()` is called first (to close the connection, so the
    worker's read ends and the server stops). A worker left behind ends with its request; it only
    holds the answer, so nothing of the run is touched by it. The wait is interruptible by Ctrl-C.
    """
    outcome: dict[str, object] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the caller's thread as it is
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="llm-call", daemon=True).start()
    deadline = time.monotonic() + seconds
    try:
        while True:  # in short waits, so that `stop` (set by another thread) is heard at once
            finished = done.wait(max(0.0, min(STOP_POLL_SECONDS, deadline - time.monotonic())))
            if finished or time.monotonic() >= deadline:
                break
            if stop is not None and stop.is_set():
                if give_up is not None:
                    give_up()
                raise CallStopped("the run stopped")
    except BaseException:
        if give_up is not None:
            give_up()
        raise
    if not finished:
        if give_up is not None:
            give_up()
        raise CallTimedOut(f"no complete answer within {seconds:g}s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def server_message(exc: Exception) -> str:
    """The server's own words for a failed request, after its HTTP status when there is one."""
    status = getattr(exc, "status_code", None)
    return f"{status} {_said(exc)}" if status else _said(exc)


def _said(exc: Exception) -> str:
    """The error's message (a JSON body's `message`, or a body that is only text), else the exception's first line."""
    body = getattr(exc, "body", None)
    text = body.get("message") if isinstance(body, dict) else body
    if isinstance(text, str) and text.strip():
        return " ".join(text.split())
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return re.sub(r"^Error code: \d+( - )?", "", text) or type(exc).__name__  # the openai client's prefix


def refused_on_this_machine(exc: BaseException, base_url: str) -> bool:
    """Whether a failed connection was refused by a loopback address (nothing listens at that port here),
    as against a remote host, a timeout or a connection that broke."""
    host = (urlsplit(base_url).hostname or "").strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    seen: set[int] = set()
    cause: BaseException | None = exc
    while loopback and cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError) or "connection refused" in str(cause).lower():
            return True
        cause = cause.__cause__ or cause.__context__
    return False


# --- the prompt does not fit the model's context

@dataclass(frozen=True)
class ContextOverflow:
    """A request refused for its length: the model's context and the prompt's size, when the server said."""

    context_tokens: int | None
    prompt_tokens: int | None


OVERFLOW_MARKERS = ("context_length_exceeded", "exceed_context_size_error", "maximum context length",
                    "exceeds the available context size", "context length of only", "maximum model length",
                    "input length exceeds the context length", "exceeds the context window",
                    "larger than the max context size", "exceed context window")
CONTEXT_PATTERNS = (r"maximum context length is (\d+)", r"context length of only (\d+)",
                    r"available context size \((\d+) tokens\)", r"maximum model length of (\d+)",
                    r"max context size \((\d+) tokens\)", r"exceed context window of (\d+)")
PROMPT_PATTERNS = (r"request \((\d+) tokens\) exceeds", r"input \((\d+) tokens\) is larger",
                   r"messages resulted in (\d+) tokens", r"\((\d+) in the messages",
                   r"prompt contains (?:at least )?(\d+) input tokens", r"request has (\d+) input tokens",
                   r"prompt \(length (\d+)\)", r"Requested tokens \((\d+)\)")


def context_overflow(exc: Exception) -> ContextOverflow | None:
    """What a refusal says about the context, or None when it is not about the prompt's length."""
    body = getattr(exc, "body", None)
    fields = body if isinstance(body, dict) else {}
    text = " ".join(str(part) for part in (_said(exc), fields.get("code"), fields.get("type")) if part)
    if not any(marker in text.lower() for marker in OVERFLOW_MARKERS):
        return None
    return ContextOverflow(context_tokens=_count(fields.get("n_ctx"), text, CONTEXT_PATTERNS),
                           prompt_tokens=_count(fields.get("n_prompt_tokens"), text, PROMPT_PATTERNS))


def _count(field: object, text: str, patterns: tuple[str, ...]) -> int | None:
    """A token count from the error's own field, else from the first pattern its message matches."""
    if isinstance(field, int) and field > 0:
        return field
    for pattern in patterns:
        match = re.search(pattern, text, re.IGNORECASE)
        if match:
            return int(match.group(1))
    return None


# --- the completion limit's name

def wants_max_completion_tokens(exc: Exception) -> bool:
    """A 400 saying the model refuses `max_tokens` and takes `max_completion_tokens` (OpenAI's reasoning models)."""
    return getattr(exc, "status_code", None) == 400 and "max_completion_tokens" in server_message(exc)


# --- what a local server says of itself

PROBE_SECONDS = 5.0


def server_root(base_url: str) -> str:
    """The server's own address: the base URL without its trailing /v1 (llama.cpp's /props lives there)."""
    return re.sub(r"/v1/?$", "", base_url.rstrip("/"))


def served_context_tokens(base_url: str, model: str, api_key: str | None = None) -> int | None:
    """The model's context window as the server reports it (vLLM's /v1/models, llama.cpp's /props), else None."""
    models = _get_json(base_url.rstrip("/") + "/models", api_key)
    for entry in (models or {}).get("data") or []:
        if isinstance(entry, dict) and entry.get("id") == model and isinstance(entry.get("max_model_len"), int):
            return entry["max_model_len"]
    props = _get_json(server_root(base_url) + "/props", api_key) or {}
    settings = props.get("default_generation_settings") if isinstance(props, dict) else None
    for found in ((settings or {}).get("n_ctx"), props.get("n_ctx") if isinstance(props, dict) else None):
        if isinstance(found, int) and found > 0:
            return found
    return None


def is_local(base_url: str | None) -> bool:
    """Whether an endpoint is on this machine: a loopback address, or this machine's own name."""
    import ipaddress
    import socket
    from urllib.parse import urlparse

    host = (urlparse(base_url or "").hostname or "").lower()
    if not host:
        return False
    if host in ("localhost", "0.0.0.0", socket.gethostname().lower()) or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


ANY_GPU = "any"  # the server holds GPU memory, by its own report, on GPUs it does not name


def shared_with_trainings(base_url: str | None, slot_devices: list[str | None]) -> str | None:
    """What a model server at base_url shares with trainings on slots of this machine (their GPU, or None for the
    CPU), in words ("its CPU", "GPU 0"), or None where it shares neither or is not on this machine."""
    if not is_local(base_url):
        return None
    if any(device is None for device in slot_devices):
        return "its CPU"
    gpus = server_gpus(base_url)
    for device in slot_devices:
        index = (device or "").split(",")[0].strip()
        if index in gpus or ANY_GPU in gpus:
            return f"GPU {index}"
    return None


def server_gpus(base_url: str) -> set[str]:
    """The GPUs a server on this machine computes on (their nvidia-smi indexes and uuids), or {ANY_GPU} where only
    the server says it uses one; empty where it uses none, or nothing can tell."""
    from autoresearch.execution.contention import gpus_computing

    found = gpus_computing(server_processes(base_url))
    if found:
        return found
    loaded = _get_json(server_root(base_url) + "/api/ps", None)  # Ollama: the models loaded, and their GPU memory
    entries = loaded.get("models") if isinstance(loaded, dict) else None
    held = [entry.get("size_vram") for entry in entries or [] if isinstance(entry, dict)]
    return {ANY_GPU} if any(isinstance(size, int) and size > 0 for size in held) else set()


def server_processes(base_url: str) -> set[int]:
    """The processes of this machine listening on base_url's port, and their children (Ollama computes in a runner
    it starts); empty where the port's owner cannot be seen (another user's process, without root)."""
    import psutil

    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        listening = {conn.pid for conn in psutil.net_connections(kind="inet")
                     if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid}
    except (psutil.Error, OSError):
        return set()
    found = set(listening)
    for pid in listening:
        try:
            found |= {child.pid for child in psutil.Process(pid).children(recursive=True)}
        except psutil.Error:
            continue
    return found


def served_parameters(base_url: str, model: str, api_key: str | None = None) -> tuple[float | None, str]:
    """The model's parameter count as the server reports it, and where it said so: llama.cpp's /v1/models
    (`meta.n_params`), Ollama's /api/tags (`details.parameter_size`, "1.5B"); (None, "") elsewhere (vLLM's
    listing names the model, which formats.py reads)."""
    models = _get_json(base_url.rstrip("/") + "/models", api_key)
    entries = [entry for entry in (models or {}).get("data") or [] if isinstance(entry, dict)]
    mine = [entry for entry in entries if entry.get("id") == model] or (entries if len(entries) == 1 else [])
    for entry in mine:
        meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
        if isinstance(meta.get("n_params"), (int, float)) and meta["n_params"] > 0:
            return float(meta["n_params"]), "the server's /v1/models"
    tags = _get_json(server_root(base_url) + "/api/tags", api_key)  # a GET: asking never costs a completion
    for entry in (tags or {}).get("models") or [] if isinstance(tags, dict) else []:
        if not isinstance(entry, dict) or model not in (entry.get("name"), entry.get("model")):
            continue
        details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
        size = details.get("parameter_size")
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([BM])\s*", size if isinstance(size, str) else "", re.I)
        if match:
            return float(match.group(1)) * (1e9 if match.group(2).upper() == "B" else 1e6), "the server's /api/tags"
    return None, ""


def served_token_count(base_url: str, model: str, text: str, api_key: str | None = None) -> int | None:
    """The server's tokenizer's count of text (llama.cpp's and vLLM's /tokenize, llama-cpp-python's
    /extras/tokenize/count), else None."""
    root = server_root(base_url)
    for path, body in (("/tokenize", {"content": text, "model": model, "prompt": text}),
                       ("/extras/tokenize/count", {"input": text, "model": model})):
        answer = _post_json(root + path, body, api_key)
        if not isinstance(answer, dict):
            continue
        if isinstance(answer.get("count"), int) and answer["count"] > 0:
            return answer["count"]
        tokens = answer.get("tokens")
        if isinstance(tokens, list) and tokens:
            return len(tokens)
    return None


def _get_json(url: str, api_key: str | None):
    return _request_json(url, None, api_key)


def _post_json(url: str, body: dict, api_key: str | None):
    return _request_json(url, body, api_key)


def _request_json(url: str, body: dict | None, api_key: str | None):
    """The JSON a short request answers, or None for any failure: these facts are a bonus, never a need."""
    import urllib.request  # here, not at the top: the review commands import this module and never ask

    headers = {"Content-Type": "application/json"} if body is not None else {}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=PROBE_SECONDS) as response:
            return json.loads(response.read(1_000_000))
    except (OSError, ValueError):  # URLError and HTTPError are OSErrors
        return None
