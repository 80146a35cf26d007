"""The agent against a real llama.cpp server (llama-cpp-python's), with a model made here.

No chat model can be downloaded on the reference machine, so this makes one: a tiny llama-shaped
GGUF with random weights and a character-level vocabulary (`gguf` and numpy), served by
`python -m llama_cpp.server` on 127.0.0.1. Its replies are noise, so no proposal applies; what is
measured is the server's side, which is real: how long a proposal takes with the completion limit
and whether an abandoned answer goes on burning the CPU (a streamed call closed at its deadline
against a plain request abandoned at it), and how much of each prompt llama.cpp's prefix cache
reused (its own "prefix-match hit" log lines) through a short run of the real loop.

Needs an environment with `llama-cpp-python[server]` and `gguf` (a source build: about ten minutes
on two cores), given as --python; the tool runs from this checkout's .venv.

    .venv/bin/python benchmarks/real_server.py --python /path/to/venv/bin/python
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autoresearch.agents import LLMAgent  # noqa: E402
from autoresearch.endpoint import call_within  # noqa: E402

MAKE_MODEL = textwrap.dedent('''
    import sys, numpy as np, gguf
    path, n_embd, n_layer, n_head, ctx = sys.argv[1], 256, 4, 4, 32768
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(128):  # ASCII byte fallbacks only: random bytes past 0x7f would stall the server's UTF-8 decoding
        tokens.append(f"<0x{b:02X}>"); scores.append(0.0); types.append(6)
    chars = [chr(c) for c in range(33, 127)]
    for piece in chars + ["\u2581" + c for c in chars] + ["\u2581"]:
        tokens.append(piece); scores.append(-1.0); types.append(1)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(ctx); writer.add_embedding_length(n_embd); writer.add_block_count(n_layer)
    writer.add_feed_forward_length(2 * n_embd); writer.add_head_count(n_head); writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head); writer.add_layer_norm_rms_eps(1e-5); writer.add_file_type(0)
    writer.add_tokenizer_model("llama"); writer.add_token_list(tokens); writer.add_token_scores(scores)
    writer.add_token_types(types); writer.add_bos_token_id(1); writer.add_eos_token_id(2); writer.add_unk_token_id(0)
    writer.add_chat_template("{% for m in messages %}<|{{ m['role'] }}|>\\n{{ m['content'] }}\\n{% endfor %}<|assistant|>\\n")
    rng = np.random.default_rng(0)
    def tensor(name, *shape, scale=0.02):
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))
    tensor("token_embd.weight", len(tokens), n_embd)
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{name}.weight", n_embd, n_embd)
        tensor(f"blk.{i}.ffn_gate.weight", 2 * n_embd, n_embd); tensor(f"blk.{i}.ffn_up.weight", 2 * n_embd, n_embd)
        tensor(f"blk.{i}.ffn_down.weight", n_embd, 2 * n_embd)
    writer.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    tensor("output.weight", len(tokens), n_embd, scale=1.0)
    writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
''')


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """llama-cpp-python's server on one thread, its log in a file."""

    def __init__(self, python: str, model: Path, log: Path):
        self.port = free_port()
        self.log = log
        self.process = subprocess.Popen([python, "-m", "llama_cpp.server", "--model", str(model), "--n_ctx", "32768",
                                         "--host", "127.0.0.1", "--port", str(self.port), "--n_threads", "1",
                                         "--model_alias", "random-tiny"], stdout=open(log, "w"),
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while "Uvicorn running" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.process.send_signal(signal.SIGKILL)  # it does not stop on SIGTERM while it generates
        self.process.wait()


def abandoned_cpu(server: Server, streamed: bool) -> float:
    """Server CPU seconds in the 4 s after a call with no completion limit was given up at 2 s."""
    agent = LLMAgent(model="random-tiny", base_url=server.url, request_timeout=2)
    messages = [{"role": "user", "content": "Write a long story about training models."}]
    try:
        if streamed:
            agent._complete(messages, 1, lambda call: None, {})
        else:  # the tool before issue 16: a plain request, abandoned at the deadline
            call_within(2, lambda: agent.client.chat.completions.create(model="random-tiny", messages=messages))
    except Exception:
        pass
    before = cpu_seconds(server.process.pid)
    time.sleep(4)
    return cpu_seconds(server.process.pid) - before


def run_loop(server: Server, workdir: Path) -> str:
    """Three experiments of `tiny` through the CLI against the server; the run's stderr."""
    subprocess.run([str(ROOT / ".venv/bin/autoresearch"), "init", "ws", "--recipe", "tiny"], cwd=workdir, check=True,
                   capture_output=True)
    run = subprocess.run([str(ROOT / ".venv/bin/autoresearch"), "run", "--tag", "real", "--model", "random-tiny",
                          "--budget", "10", "--max-experiments", "3", "--noise-runs", "0", "--llm-timeout", "120",
                          "--prompt-tokens", "20000", "--reply-tokens", "1000", "--context-tokens", "32768",
                          "--sandbox", "off"], cwd=workdir / "ws", capture_output=True, text=True,
                         env={**os.environ, "OPENAI_BASE_URL": server.url})
    return run.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True, help="a Python with llama-cpp-python[server] and gguf")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = folder / "random-tiny.gguf"
        subprocess.run([args.python, "-c", MAKE_MODEL, str(model)], check=True)
        for streamed in (False, True):
            server = Server(args.python, model, folder / "server.log")
            try:
                spent = abandoned_cpu(server, streamed)
            finally:
                server.stop()
            how = "streamed, closed at the deadline" if streamed else "plain request, abandoned at the deadline"
            print(f"{how}: the server spent {spent:.2f} CPU seconds in the 4 s after the client gave up")
        server = Server(args.python, model, folder / "server.log")
        try:
            stderr = run_loop(server, folder)
        finally:
            server.stop()
        print("\n".join(line for line in stderr.splitlines() if "LLM call" in line or "invalid" in line))
        for hit, left in re.findall(r"(\d+) prefix-match hit, remaining (\d+) prompt tokens", server.log.read_text()):
            print(f"prefix cache: {hit} tokens reused, {left} evaluated")


if __name__ == "__main__":
    main()
