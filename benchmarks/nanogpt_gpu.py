"""Measure the nanogpt recipe on a real GPU, with no internet. The H100 target is MFU >= 40%.

    python benchmarks/nanogpt_gpu.py                 # default model size, the full 300 s budget (~8 minutes in all)
    python benchmarks/nanogpt_gpu.py --budget 60     # a quicker look
    python benchmarks/nanogpt_gpu.py --tiny          # the CPU smoke configuration: checks this script, measures nothing

Needs the recipe's extra (pip install -e '.[nanogpt]' in the clone) and a CUDA build of torch.

1. Builds a local corpus from the text of this Python installation (.py, .rst, .txt files of the standard library and
   site-packages), cut at blank lines into document-sized pieces, written as parquet shards named like the real ones.
2. Serves the shards from 127.0.0.1 and runs the recipe's own prepare.py against them: the real download, tokenizer
   training and packing code, into a fresh cache (a temporary folder unless --cache is given).
3. Measures the data loader alone (the tokens per second it can feed the GPU), then runs train.py at its default
   size for the budget, streaming its log, then the evaluation of the model it saved the way the harness runs it
   (`python -I -B prepare.py --evaluate` in a fresh folder, a clean environment).
4. Prints tokens/s, MFU, peak memory, steps, compile warm-up, the time past the budget (what grace_seconds must
   cover), export and evaluation times; --json writes them to a file.

The validation text overlaps the training text here, so val_bpb means nothing: this measures speed only.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "nanogpt"
VAL_SHARD, TEST_SHARD = 1822, 1821  # as pinned in prepare.py
GRACE_SECONDS = 150  # recipe.yaml
SUMMARY = re.compile(r"^([A-Za-z_]\w*):\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf)\s*$")
TEXT_SUFFIXES = (".py", ".pyi", ".rst", ".txt", ".md")


# ---------------------------------------------------------------------------------------------------------------
# A local corpus

def source_documents(max_chars: int, seed: int = 0) -> list[str]:
    """Text files of this Python installation, cut at blank lines into pieces of web-document size."""
    roots = []
    for key in ("stdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path and Path(path).is_dir() and Path(path) not in roots:
            roots.append(Path(path))
    rng = random.Random(seed)
    docs, total, seen = [], 0, set()
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.suffix not in TEXT_SUFFIXES or path in seen or not path.is_file():
                continue
            seen.add(path)
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            piece, target = [], rng.lognormvariate(7.8, 0.8)  # median ~2,400 characters, a long tail
            for para in text.split("\n\n"):
                piece.append(para)
                if sum(map(len, piece)) >= target:
                    docs.append("\n\n".join(piece))
                    total += len(docs[-1])
                    piece, target = [], rng.lognormvariate(7.8, 0.8)
            if piece and "".join(piece).strip():
                docs.append("\n\n".join(piece))
                total += len(docs[-1])
            if total >= max_chars:
                rng.shuffle(docs)
                return docs
    rng.shuffle(docs)
    return docs


def write_shard(path: Path, docs: list[str], chars: int, seed: int) -> None:
    """About `chars` characters of the documents in a seeded order (repeating them when there are too few)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    order, picked, total = list(range(len(docs))), [], 0
    while total < chars:
        rng.shuffle(order)
        for i in order:
            picked.append(docs[i])
            total += len(docs[i])
            if total >= chars:
                break
    pq.write_table(pa.table({"text": picked}), path, row_group_size=1024, compression="zstd")


def build_corpus(folder: Path, shards: int, shard_chars: int, eval_chars: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    start = time.time()
    docs = source_documents(max_chars=max(shard_chars, eval_chars) * 2)
    unique = sum(map(len, docs))
    for i in range(shards):
        write_shard(folder / f"shard_{i:05d}.parquet", docs, shard_chars, seed=i)
    write_shard(folder / f"shard_{VAL_SHARD:05d}.parquet", docs, eval_chars, seed=10_001)
    write_shard(folder / f"shard_{TEST_SHARD:05d}.parquet", docs, eval_chars, seed=10_002)
    print(f"corpus: {len(docs):,} documents, {unique / 1e6:.0f}M unique characters -> {shards} training shards of "
          f"{shard_chars / 1e6:.0f}M characters + validation + test ({time.time() - start:.0f}s)", flush=True)


def serve(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


# ---------------------------------------------------------------------------------------------------------------
# Runs

def run_streaming(cmd: list[str], env: dict, timeout: float, cwd: Path = RECIPE) -> tuple[int, str]:
    """Run in the recipe folder (or cwd), echo the output as it comes, return (exit code, output)."""
    lines = []
    process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1)
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    try:
        for line in process.stdout:
            print("  | " + line, end="", flush=True)
            lines.append(line)
    finally:
        timer.cancel()
    return process.wait(), "".join(lines)


LOADER_PROBE = """
import sys, time, torch
from prepare import make_dataloader, MAX_SEQ_LEN
device = "cuda" if torch.cuda.is_available() else "cpu"
batch, seconds = int(sys.argv[1]), float(sys.argv[2])
loader = make_dataloader("train", batch, MAX_SEQ_LEN, device)
next(loader)  # the first batch waits for the packing buffer to fill
start, tokens = time.time(), 0
while time.time() - start < seconds:
    x, y = next(loader)
    tokens += x.numel()
if device == "cuda":
    torch.cuda.synchronize()
print(f"loader_tokens_per_second: {tokens / (time.time() - start):.0f}")
loader.close()
"""


def parse(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        match = SUMMARY.match(line.strip())
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds (default 300, the recipe's)")
    parser.add_argument("--cache", type=Path, help="cache folder to build and keep (default: a temporary one)")
    parser.add_argument("--shards", type=int, default=4, help="training shards to build (default 4)")
    parser.add_argument("--shard-mchars", type=float, default=50.0, help="million characters per training shard")
    parser.add_argument("--eval-mchars", type=float, default=60.0, help="million characters in validation and test")
    parser.add_argument("--loader-seconds", type=float, default=20.0, help="how long to time the loader alone")
    parser.add_argument("--target-mfu", type=float, default=40.0, help="MFU percent to report against (H100: 40)")
    parser.add_argument("--tiny", action="store_true", help="the recipe's CPU smoke configuration (checks the script)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)

    import torch

    if args.tiny:
        args.shard_mchars, args.eval_mchars, args.shards = min(args.shard_mchars, 2.0), min(args.eval_mchars, 0.5), 2
    elif not torch.cuda.is_available():
        print("no CUDA GPU here: this benchmark measures the recipe on a GPU (use --tiny to check the script on CPU)")
        return 2
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"device: {gpu} | torch {torch.__version__} | budget {args.budget:g}s", flush=True)

    with tempfile.TemporaryDirectory(prefix="nanogpt-bench-") as tmp:
        tmp = Path(tmp)
        cache = args.cache or tmp / "cache"
        build_corpus(tmp / "shards", args.shards, int(args.shard_mchars * 1e6), int(args.eval_mchars * 1e6))
        httpd, url = serve(tmp / "shards")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
        env.update(AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_NANOGPT_DATA_URL=url, AUTORESEARCH_SEED="0",
                   AUTORESEARCH_TIME_BUDGET=f"{args.budget:g}", PYTHONUNBUFFERED="1")
        if args.tiny:
            env["AUTORESEARCH_NANOGPT_TINY"] = "1"
        try:
            start = time.time()
            code, _ = run_streaming([sys.executable, "prepare.py", "--num-shards", str(args.shards)], env, 3600)
            prepare_seconds = time.time() - start
            if code:
                print(f"prepare.py failed (exit {code})")
                return 1
        finally:
            httpd.shutdown()
            httpd.server_close()

        print(f"loader alone, {args.loader_seconds:g}s:", flush=True)
        batch = "4" if args.tiny else "64"
        code, out = run_streaming([sys.executable, "-c", LOADER_PROBE, batch, str(args.loader_seconds)], env, 600)
        loader_rate = parse(out).get("loader_tokens_per_second")

        print("train.py:", flush=True)
        env["AUTORESEARCH_OUTPUT_DIR"] = str(tmp / "model")
        start = time.time()
        code, out = run_streaming([sys.executable, "train.py"], env, args.budget + GRACE_SECONDS + 600)
        wall = time.time() - start
        if code:
            print(f"train.py failed (exit {code})")
            return 1

        print("evaluation (python -I -B prepare.py --evaluate, a fresh folder, a clean environment):", flush=True)
        (tmp / "evaluation").mkdir()
        for name in ("prepare.py", "recipe.yaml"):
            shutil.copy(RECIPE / name, tmp / "evaluation")
        clean = {"PATH": os.environ["PATH"], "AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_MODEL_DIR": str(tmp / "model"),
                 "AUTORESEARCH_SPLIT": "val", "AUTORESEARCH_SEED": "0",
                 **{k: v for k, v in os.environ.items() if k.startswith(("CUDA_", "LD_LIBRARY_PATH"))},
                 **({"AUTORESEARCH_NANOGPT_TINY": "1"} if args.tiny else {})}
        start = time.time()
        code, evaluated = run_streaming([sys.executable, "-I", "-B", "prepare.py", "--evaluate"], clean, 1200,
                                        cwd=tmp / "evaluation")
        evaluation_wall = time.time() - start
        if code:
            print(f"the evaluation failed (exit {code})")
            return 1

    values, scored = parse(out), parse(evaluated)
    warmup = re.search(r"^warm-up: ([\d.]+)s", out, re.M)
    result = {
        "device": gpu,
        "torch": torch.__version__,
        "budget_seconds": args.budget,
        "tokens_per_second": values.get("tokens_per_second"),
        "mfu_percent": values.get("mfu_percent"),
        "peak_memory_mb": values.get("peak_memory_mb"),
        "num_steps": values.get("num_steps"),
        "total_tokens_M": values.get("total_tokens_M"),
        "num_params_M": values.get("num_params_M"),
        "depth": values.get("depth"),
        "training_seconds": values.get("training_seconds"),
        "total_seconds": values.get("total_seconds"),
        "warmup_seconds": float(warmup.group(1)) if warmup else None,
        "export_seconds": values.get("export_seconds"),
        "model_mb": values.get("model_mb"),
        "past_budget_seconds": round(wall - values["training_seconds"], 1) if "training_seconds" in values else None,
        "eval_seconds": round(evaluation_wall, 1),
        "eval_load_seconds": scored.get("load_seconds"),
        "eval_check_seconds": scored.get("check_seconds"),
        "eval_score_seconds": scored.get("score_seconds"),
        "loader_tokens_per_second": loader_rate,
        "prepare_seconds": round(prepare_seconds, 1),
        "wall_seconds": round(wall, 1),
    }

    def show(name, value, fmt="{:,.0f}", note=""):
        text = "n/a" if value is None else fmt.format(value)
        print(f"  {name:<22}{text}{note}")

    print(f"\nnanogpt on {gpu}, {args.budget:g}s budget")
    mfu = result["mfu_percent"]
    verdict = "" if mfu is None else f"   (target >= {args.target_mfu:g}%: {'met' if mfu >= args.target_mfu else 'MISSED'})"
    show("tokens/s", result["tokens_per_second"])
    show("MFU", mfu, "{:.1f}%", verdict)
    show("peak memory", result["peak_memory_mb"], "{:,.0f} MB")
    show("steps", result["num_steps"])
    show("tokens", result["total_tokens_M"], "{:,.0f}M")
    show("loader alone", loader_rate, "{:,.0f} tokens/s",
         "" if not loader_rate or not result["tokens_per_second"] else
         f"   ({loader_rate / result['tokens_per_second']:.1f}x what training used)")
    show("compile warm-up", result["warmup_seconds"], "{:.0f} s")
    show("export", result["export_seconds"], "{:.1f} s", "" if result["model_mb"] is None else f"   ({result['model_mb']:.0f} MB)")
    show("past the budget", result["past_budget_seconds"], "{:.0f} s", f"   (grace_seconds: {GRACE_SECONDS})")
    show("evaluation", result["eval_seconds"], "{:.1f} s",
         f"   (load {result['eval_load_seconds']}, checks {result['eval_check_seconds']}, "
         f"scoring {result['eval_score_seconds']}; a process of its own)")
    total = result["total_seconds"]
    show("total", total, "{:.0f} s", "" if total is None else
         f"   (the runner kills at budget + grace = {args.budget + GRACE_SECONDS:.0f} s)")
    show("prepare (local)", result["prepare_seconds"], "{:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
