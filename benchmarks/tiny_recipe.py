"""Benchmark of the unmodified `tiny` recipe: its baseline, its run-to-run noise, what saving and the
separate evaluation cost, and gzip's score.

Each run is what the harness does: recipes/tiny/train.py as a subprocess (real AUTORESEARCH_*
environment, an empty AUTORESEARCH_OUTPUT_DIR), then the evaluation in its own process, from a fresh
folder holding the fixed files, `python -I -B prepare.py --evaluate` with a clean environment. It
prints every val_bpb, the spread among the same-seed runs and among all runs, the seconds the
training spent past its budget (start-up and saving the model: what grace_seconds must cover), the
evaluation's seconds, and gzip -9's bits per byte on the exact validation bytes the evaluation scores.

Usage: python benchmarks/tiny_recipe.py [--budget 60] [--seed 0] [--repeats 3] [--other-seeds 1 2]
A full run at the default budget takes about six minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes" / "tiny"
SUMMARY_LINE = re.compile(r"^([A-Za-z_]\w*): ([-+0-9.eEnaif]+)$")


def load_prepare():
    """The recipe's prepare.py as a module (it is a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location("tiny_prepare", RECIPE_DIR / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gzip_bits_per_byte(data: bytes) -> float:
    return 8 * len(gzip.compress(data, compresslevel=9)) / len(data)


def values_of(output: str) -> dict[str, float]:
    """The `name: value` lines of an output, the last occurrence winning."""
    return {match[1]: float(match[2]) for line in output.splitlines() if (match := SUMMARY_LINE.match(line.strip()))}


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[dict[str, float], float]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {result.returncode}):\n"
                         f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return values_of(result.stdout), seconds


def run_recipe(budget: float, seed: int, scratch: Path) -> dict[str, float]:
    """One training of the unmodified recipe, then the harness's evaluation of the model it saved."""
    output, evaluation = Path(tempfile.mkdtemp(dir=scratch)), Path(tempfile.mkdtemp(dir=scratch))
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUTORESEARCH_")}
    cache = os.environ.get("AUTORESEARCH_CACHE")
    env.update(AUTORESEARCH_TIME_BUDGET=f"{budget:g}", AUTORESEARCH_SEED=str(seed), AUTORESEARCH_OUTPUT_DIR=str(output),
               **({"AUTORESEARCH_CACHE": cache} if cache else {}))
    training, training_wall = run([sys.executable, "train.py"], RECIPE_DIR, env, budget + 300)

    for name in ("prepare.py", "recipe.yaml"):
        shutil.copy(RECIPE_DIR / name, evaluation)
    clean = {"PATH": os.environ["PATH"], "AUTORESEARCH_MODEL_DIR": str(output), "AUTORESEARCH_SPLIT": "val",
             "AUTORESEARCH_SEED": str(seed), **({"AUTORESEARCH_CACHE": cache} if cache else {})}
    scored, evaluation_wall = run([sys.executable, "-I", "-B", "prepare.py", "--evaluate"], evaluation, clean, 600)
    return {**training, **scored, "training_wall": training_wall, "evaluation_wall": evaluation_wall,
            "model_bytes": sum(path.stat().st_size for path in output.iterdir())}


def spread(values: list[float]) -> float:
    return max(values) - min(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the repeated runs")
    parser.add_argument("--repeats", type=int, default=3, help="runs with --seed")
    parser.add_argument("--other-seeds", type=int, nargs="*", default=[1, 2], help="one run each")
    args = parser.parse_args()

    prepare = load_prepare()
    prepare.prepare(verbose=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"budget {args.budget:g}s, seed {args.seed} x{args.repeats}, other seeds {args.other_seeds}")

    plan = [args.seed] * args.repeats + list(args.other_seeds)
    runs: list[tuple[int, dict[str, float]]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tiny-benchmark-") as scratch:
        for seed in plan:
            result = run_recipe(args.budget, seed, Path(scratch))
            runs.append((seed, result))
            past_budget = result["training_wall"] - result["training_seconds"] - result["stolen_seconds"]
            print(f"seed {seed}: val_bpb {result['val_bpb']:.4f}  steps {result['num_steps']:.0f}  "
                  f"training {result['training_seconds']:.1f}s  stolen {result['stolen_seconds']:.1f}s  "
                  f"process {result['training_wall']:.1f}s (past the budget {past_budget:.1f}s, export "
                  f"{result['export_seconds']:.1f}s)  model {result['model_bytes'] / 2**20:.1f} MB  "
                  f"evaluation {result['evaluation_wall']:.1f}s (load {result['load_seconds']:.1f}, checks "
                  f"{result['check_seconds']:.1f}, scoring {result['score_seconds']:.1f})", flush=True)

    same_seed = [result["val_bpb"] for _, result in runs[: args.repeats]]
    every_run = [result["val_bpb"] for _, result in runs]
    print(f"same-seed spread (max - min of {len(same_seed)} runs): {spread(same_seed):.4f}")
    print(f"all-runs spread (max - min over {len(every_run)} runs, {len(set(plan))} seeds): {spread(every_run):.4f}")
    print(f"mean val_bpb: {sum(every_run) / len(every_run):.4f}")
    validation = bytes(prepare.evaluation_stream("val").tolist())[1:]  # the first byte is context only
    print(f"gzip -9 on the same {len(validation)} validation bytes: {gzip_bits_per_byte(validation):.4f} bpb")
    print(f"benchmark took {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
