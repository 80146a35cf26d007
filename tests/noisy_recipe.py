"""A synthetic recipe whose metric is a known function of its constants plus seeded noise of known size.

val_loss = (LEARNING_RATE - 0.3)^2 + 1 / WIDTH - 0.05 * MEMORIZE + gaussian(0, NOISE_SD), the noise
drawn from the harness's seed and the constants (as in real training, another model under the same
seed is another draw). With AUTORESEARCH_EVAL_TEST=1 it also prints test_loss, with its own noise
and without the MEMORIZE term: MEMORIZE is a change that fits the validation split only.
"""

from __future__ import annotations

import random
from pathlib import Path

from conftest import make_workspace

NOISE_SD = 0.01

NOISY_TRAIN = '''\
"""Synthetic noisy training script. Run: python train.py"""
import os

from prepare import evaluate

LEARNING_RATE = 0.5
WIDTH = 4
MEMORIZE = 0.0

# --- run settings from the harness
seed = int(os.environ.get("AUTORESEARCH_SEED", "0"))

# --- training
val_loss, test_loss = evaluate(LEARNING_RATE, WIDTH, MEMORIZE, seed)

# --- summary
print("---")
print(f"val_loss: {val_loss:.6f}")
if test_loss is not None:
    print(f"test_loss: {test_loss:.6f}")
'''

NOISY_PREPARE = f'''\
"""Fixed evaluation of the noisy synthetic recipe; the test split only with AUTORESEARCH_EVAL_TEST=1."""
import os
import random

NOISE_SD = {NOISE_SD}


def true_loss(learning_rate, width):
    return (learning_rate - 0.3) ** 2 + 1.0 / width


def noise(seed, learning_rate, width, memorize, split):
    return random.Random(f"{{split}}/{{seed}}/{{learning_rate}}/{{width}}/{{memorize}}").gauss(0, NOISE_SD)


def evaluate(learning_rate, width, memorize, seed):
    val = true_loss(learning_rate, width) - 0.05 * memorize + noise(seed, learning_rate, width, memorize, "val")
    test = None
    if os.environ.get("AUTORESEARCH_EVAL_TEST") == "1":
        test = true_loss(learning_rate, width) + noise(seed, learning_rate, width, memorize, "test")
    return val, test
'''

NOISY_RECIPE = """\
name: noisy
description: a synthetic recipe with seeded noise, for tests
command: python train.py
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
