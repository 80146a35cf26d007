"""A synthetic recipe whose metric is a known function of its constants plus seeded noise of known size.

val_loss = (LEARNING_RATE - 0.3)^2 + 1 / WIDTH - 0.05 * MEMORIZE + gaussian(0, NOISE_SD), the noise
drawn from the training's seed and the constants (as in real training, another model under the same
seed is another draw): the model the training saves holds its constants and the seed it trained
with. Evaluated on the test split (AUTORESEARCH_SPLIT=test, `verify` only) it gives test_loss, with
its own noise and without the MEMORIZE term: MEMORIZE is a change that fits the validation split only.
"""

from __future__ import annotations

import random
from pathlib import Path

from conftest import make_workspace

NOISE_SD = 0.01

NOISY_TRAIN = '''\
"""Synthetic noisy training script. Run: python train.py"""
import os

from prepare import save_model

LEARNING_RATE = 0.5
WIDTH = 4
MEMORIZE = 0.0

# --- run settings from the harness
seed = int(os.environ.get("AUTORESEARCH_SEED", "0"))

# --- training
save_model(LEARNING_RATE, WIDTH, MEMORIZE, seed)

# --- summary
print("---")
print(f"seed: {seed}")
'''

NOISY_PREPARE = f'''\
"""Fixed parts of the noisy synthetic recipe: the model file and its evaluation on val or test."""
import json
import os
import random
import sys

NOISE_SD = {NOISE_SD}


def true_loss(learning_rate, width):
    return (learning_rate - 0.3) ** 2 + 1.0 / width


def noise(seed, learning_rate, width, memorize, split):
    return random.Random(f"{{split}}/{{seed}}/{{learning_rate}}/{{width}}/{{memorize}}").gauss(0, NOISE_SD)


def save_model(learning_rate, width, memorize, seed):
    with open(os.path.join(os.environ["AUTORESEARCH_OUTPUT_DIR"], "model.json"), "w") as handle:
        json.dump({{"learning_rate": learning_rate, "width": width, "memorize": memorize, "seed": seed}}, handle)


def evaluate(model, split):
    lr, width, memorize, seed = model["learning_rate"], model["width"], model["memorize"], model["seed"]
    if split == "test":
        return true_loss(lr, width) + noise(seed, lr, width, memorize, "test")
    return true_loss(lr, width) - 0.05 * memorize + noise(seed, lr, width, memorize, "val")


if __name__ == "__main__" and sys.argv[1:] == ["--evaluate"]:
    with open(os.path.join(os.environ["AUTORESEARCH_MODEL_DIR"], "model.json")) as handle:
        model = json.load(handle)
    split = os.environ["AUTORESEARCH_SPLIT"]
    print(f"{{'test_loss' if split == 'test' else 'val_loss'}}: {{evaluate(model, split):.6f}}")
'''

NOISY_RECIPE = """\
name: noisy
description: a synthetic recipe with seeded noise, for tests
command: python train.py
evaluate: python prepare.py --evaluate
metric: val_loss
direction: lower
budget_seconds: 5
grace_seconds: 2
editable: [train.py]
fixed: [prepare.py]
test_metric: test_loss
"""


def make_noisy_workspace(root: Path) -> Path:
    return make_workspace(root, train=NOISY_TRAIN, prepare=NOISY_PREPARE, recipe_yaml=NOISY_RECIPE)


def val_noise(seed: int, learning_rate: float = 0.5, width: int = 4, memorize: float = 0.0) -> float:
    """The noise the recipe adds to val_loss under seed (the same formula as its prepare.py)."""
    return random.Random(f"val/{seed}/{learning_rate}/{width}/{memorize}").gauss(0, NOISE_SD)
