"""Shared fixtures: a fake chat-completions endpoint, real git workspaces with a synthetic recipe, and a
real local Ray cluster (for the tests marked `ray`; skipped where the ray extra is not installed).

The synthetic recipe trains nothing: the model it saves is its constants, and the harness's evaluation
(its fixed prepare.py) scores them by a known function, so each test knows which edit is better, and
it finishes in a fraction of a second.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "faults"))  # faultkit, for the attack tests too
# Rich sizes the CLI's consoles when they are made: wide enough that tables do not wrap in tests.
os.environ["COLUMNS"] = "200"

from fake_llm import FakeLLM  # noqa: E402

from autoresearch.execution.ray import NAMESPACE  # noqa: E402
from autoresearch.repo import TOOL_IDENTITY, Repo  # noqa: E402

RAY_GPUS = 4  # the logical GPUs of the test cluster

SYNTH_TRAIN = '''\
"""Synthetic training script: the model it saves is its constants, scored by the harness. Run: python train.py"""
import os
import time

from prepare import save_model

LEARNING_RATE = 0.5
WIDTH = 4
SLEEP_SECONDS = 0.0

# --- training
time.sleep(SLEEP_SECONDS)
save_model(LEARNING_RATE, WIDTH)

# --- summary
print("---")
print("peak_memory_mb: 512.0")
print(f"seed: {os.environ.get('AUTORESEARCH_SEED')}")
'''

SYNTH_PREPARE = '''\
"""Fixed parts of the synthetic recipe: the model file, and its evaluation (python prepare.py --evaluate)."""
import json
import os
import sys


def evaluate(learning_rate, width):
    return (learning_rate - 0.3) ** 2 + 1.0 / width


def save_model(learning_rate, width):
    with open(os.path.join(os.environ["AUTORESEARCH_OUTPUT_DIR"], "model.json"), "w") as handle:
        json.dump({"learning_rate": learning_rate, "width": width}, handle)


if __name__ == "__main__" and sys.argv[1:] == ["--evaluate"]:
    with open(os.path.join(os.environ["AUTORESEARCH_MODEL_DIR"], "model.json")) as handle:
        model = json.load(handle)
    print(f"val_loss: {evaluate(float(model['learning_rate']), float(model['width'])):.6f}")
'''

SYNTH_RECIPE = """\
name: synth
description: a synthetic recipe for tests
command: python train.py
evaluate: python prepare.py --evaluate
metric: val_loss
direction: lower
budget_seconds: 5
grace_seconds: 1
editable: [train.py]
fixed: [prepare.py]
"""


def reply(description: str, search: str, replace: str, filename: str = "train.py") -> str:
    """A well-formed agent reply with one SEARCH/REPLACE block."""
    return (f"DESCRIPTION: {description}\nBecause it should help.\n{filename}\n<<<<<<< SEARCH\n{search}\n"
            f"=======\n{replace}\n>>>>>>> REPLACE\n")


def make_workspace(root: Path, train: str = SYNTH_TRAIN, prepare: str = SYNTH_PREPARE,
                   recipe_yaml: str = SYNTH_RECIPE, commit: bool = True) -> Path:
    """The synthetic recipe, program.md and .gitignore in root, committed in a new repository if commit."""
    recipe = root / "recipes" / "synth"
    recipe.mkdir(parents=True)
    (recipe / "train.py").write_text(train)
    (recipe / "prepare.py").write_text(prepare)
    (recipe / "recipe.yaml").write_text(recipe_yaml)
    (root / "program.md").write_text("Lower the validation loss.\n")
    (root / ".gitignore").write_text("runs/\n__pycache__/\n")
    if commit:
        Repo.init(root).commit_all("workspace")
    return root


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    root = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(root)
    return root


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No test may reach a real endpoint or depend on the developer's git identity."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AUTORESEARCH_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture
def fake_llm():
    server = FakeLLM()
    yield server
    server.close()


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray head on 127.0.0.1 with four logical GPUs, owned by this process; the tool's processes join it
    through RAY_ADDRESS. Stopped at the end, and nothing of it may be left."""
    ray = pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths live under it
    context = ray.init(address="local", num_cpus=4, num_gpus=RAY_GPUS, include_dashboard=False, _temp_dir=temp,
                       _node_ip_address="127.0.0.1", namespace=NAMESPACE, logging_level=logging.ERROR,
                       log_to_driver=False)
    before = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = context.address_info["gcs_address"]
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = before
        deadline = time.monotonic() + 15
        while processes_mentioning(temp) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not processes_mentioning(temp), processes_mentioning(temp)
        shutil.rmtree(temp, ignore_errors=True)


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line mentions text."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(text in part for part in process.info["cmdline"] or ()) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


def git(root: Path, *args: str) -> str:
    env = {**os.environ, **TOOL_IDENTITY}
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def write(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text))
