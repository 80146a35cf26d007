"""Benchmark of the unmodified `tiny` recipe: its baseline, its run-to-run noise, and gzip's score.

Runs recipes/tiny/train.py as a subprocess (real AUTORESEARCH_* environment) several times with
one seed and once each with other seeds, prints every val_bpb, the spread among the same-seed runs
and among all runs, and gzip -9's bits per byte on the exact validation bytes the recipe scores.

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
import subprocess
import sys
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


def run_recipe(budget: float, seed: int) -> dict[str, float]:
    """One training run of the unmodified recipe; its summary lines, last occurrence winning."""
    env = {**os.environ, "AUTORESEARCH_TIME_BUDGET": f"{budget:g}", "AUTORESEARCH_SEED": str(seed)}
    env.pop("AUTORESEARCH_EVAL_TEST", None)
    result = subprocess.run([sys.executable, "train.py"], cwd=RECIPE_DIR, env=env, capture_output=True,
                            text=True, timeout=budget + 300)
    if result.returncode != 0:
        raise SystemExit(f"train.py failed (exit {result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    summary = {}
    for line in result.stdout.splitlines():
        if match := SUMMARY_LINE.match(line.strip()):
            summary[match[1]] = float(match[2])
    return summary


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
    for seed in plan:
        summary = run_recipe(args.budget, seed)
        runs.append((seed, summary))
        print(f"seed {seed}: val_bpb {summary['val_bpb']:.4f}  steps {summary['num_steps']:.0f}  "
              f"training {summary['training_seconds']:.1f}s  stolen {summary.get('stolen_seconds', 0):.1f}s  "
              f"total {summary['total_seconds']:.1f}s", flush=True)

    same_seed = [summary["val_bpb"] for seed, summary in runs[: args.repeats]]
    every_run = [summary["val_bpb"] for _, summary in runs]
    print(f"same-seed spread (max - min of {len(same_seed)} runs): {spread(same_seed):.4f}")
    print(f"all-runs spread (max - min over {len(every_run)} runs, {len(set(plan))} seeds): {spread(every_run):.4f}")
    print(f"mean val_bpb: {sum(every_run) / len(every_run):.4f}")
    validation = prepare.evaluation_bytes("val")[1:]  # the first byte is context only, never scored
    print(f"gzip -9 on the same {len(validation)} validation bytes: {gzip_bits_per_byte(validation):.4f} bpb")
    print(f"benchmark took {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
