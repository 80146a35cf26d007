"""Make the images of docs/review.md: the plot and a screenshot of the report of a real offline run.

Runs the mutate agent (no LLM needed) for N experiments on a synthetic recipe whose loss is a known
function of its constants and which fails the way real training does in some corners (out of
memory when too wide, a nan loss when the learning rate is too high, a hang past the budget), then
writes `autoresearch plot` and a headless-Chromium screenshot of `autoresearch report` into
docs/images/. Needs chromium for the screenshot (apt-get install chromium).

    .venv/bin/python scripts/review_images.py [--experiments 60] [--out docs/images]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRAIN = '''\
"""Synthetic training with real failure modes: loss is a known function of the constants."""
import sys
import time

from prepare import evaluate

LEARNING_RATE = 0.5
WIDTH = 4
WARMUP = 10

# --- training
if WIDTH > 9:
    raise MemoryError("CUDA out of memory (WIDTH too large for this GPU)")
if LEARNING_RATE > 0.55:
    print("loss is nan at step 3")
    sys.exit(1)
if WARMUP >= 16:
    time.sleep(600)  # hangs past the budget
loss = evaluate(LEARNING_RATE, WIDTH, WARMUP)

# --- summary
print("---")
print(f"val_loss: {loss:.6f}")
print(f"peak_memory_mb: {WIDTH * 300.0:.1f}")
'''
PREPARE = '''\
"""Fixed evaluation of the synthetic recipe."""


def evaluate(learning_rate, width, warmup):
    return 0.9 + (learning_rate - 0.3) ** 2 + 1.0 / width + abs(warmup - 16) / 200
'''
RECIPE = """\
name: synth
description: synthetic recipe with failure modes
command: python train.py
metric: val_loss
direction: lower
budget_seconds: 2
grace_seconds: 1
editable: [train.py]
fixed: [prepare.py]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=60)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_workspace

    cli = str(Path(sys.executable).parent / "autoresearch")
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "COLUMNS": "160"}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
        root = make_workspace(Path(tmp) / "ws", train=TRAIN, prepare=PREPARE, recipe_yaml=RECIPE)
        subprocess.run([cli, "run", "--agent", "mutate", "--seed", "3", "--tag", "nov23", "--max-experiments",
                        str(args.experiments)], cwd=root, env=env, check=True)
        subprocess.run([cli, "plot", "-o", str(args.out / "plot.png")], cwd=root, env=env, check=True)
        report = Path(tmp) / "report.html"
        subprocess.run([cli, "report", "-o", str(report)], cwd=root, env=env, check=True)
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            sys.exit("no chromium: the plot is written, the report screenshot is not")
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1200,2000", f"--screenshot={args.out / 'report.png'}", report.as_uri()],
                       check=True, capture_output=True)
        print(subprocess.run([cli, "log"], cwd=root, env=env, capture_output=True, text=True).stdout)
    for name in ("plot.png", "report.png"):
        shrink(args.out / name)
    print(f"wrote {args.out / 'plot.png'} and {args.out / 'report.png'}")


def shrink(path: Path) -> None:
    """A palette PNG: a third of the bytes, and the few colours of a chart or a page survive it."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=128, method=Image.Quantize.FASTOCTREE)
    small.save(path, optimize=True)


if __name__ == "__main__":
    main()
