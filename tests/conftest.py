"""Shared fixtures: a fake chat-completions endpoint, real git workspaces with a synthetic recipe, runs of the
loop, and a real local Ray cluster (for the tests marked `ray`; skipped where the ray extra is not installed).

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

sys.path.insert(0, str(Path(__file__).parent))  # the helpers beside this file, for every group of tests
# Rich sizes the CLI's consoles when they are made: wide enough that tables do not wrap in tests.
os.environ["COLUMNS"] = "200"

from dataclasses import dataclass  # noqa: E402
from typing import Callable, NamedTuple  # noqa: E402

from fake_llm import FakeLLM  # noqa: E402

from autoresearch.agents import LLMAgent  # noqa: E402
from autoresearch.console import Reporter  # noqa: E402
from autoresearch.execution.local import LocalExecutor  # noqa: E402
from autoresearch.execution.ray import NAMESPACE  # noqa: E402
from autoresearch.ledger import Ledger  # noqa: E402
from autoresearch.pricing import LivePrices  # noqa: E402
from autoresearch.recipe import load_recipe  # noqa: E402
from autoresearch.repo import RUN_BRANCH_PREFIX, TOOL_IDENTITY, Repo  # noqa: E402
from autoresearch.run.journal import Journal  # noqa: E402
from autoresearch.run.session import Session  # noqa: E402
from autoresearch.run.state import Best, RunState  # noqa: E402
from autoresearch.settings import RunOptions  # noqa: E402
from autoresearch.workspace import Workspace  # noqa: E402

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


def nvidia_smi_on_path(folder: Path, answers: dict[str, str] | str | None) -> str:
    """PATH without any nvidia-smi of this machine, and with a script of that name in `folder` that prints what a
    real one would: `answers[query]` for its first argument (a query such as --query-gpu=index,uuid), or the
    one text for every query; None: no nvidia-smi at all."""
    kept = [entry for entry in os.environ["PATH"].split(os.pathsep) if not (Path(entry) / "nvidia-smi").exists()]
    if answers is None:
        return os.pathsep.join(kept)
    cases = answers.items() if isinstance(answers, dict) else [("*", answers)]
    script = "".join(f"  {query}) printf '%s' '{text}' ;;\n" for query, text in cases)
    tool = folder / "nvidia-smi"
    folder.mkdir(parents=True, exist_ok=True)
    tool.write_text(f'#!/bin/sh\ncase "$1" in\n{script}esac\n')
    tool.chmod(0o755)
    return os.pathsep.join([str(folder), *kept])


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


# --- running the loop: the one place a test makes the loop object

KILL_WAIT = 0.5  # seconds between SIGTERM and SIGKILL in small runs (3 s in real runs)
# The small limits of fault tests: no noise or confirmation runs, a backoff of hundredths of a second, serial.
SMALL_OPTIONS = {"noise_runs": 0, "confirm_runs": 0, "agent_backoff_seconds": 0.01, "draft_ahead": False}


class RecordingReporter(Reporter):
    """Keeps the notes a run reports (the loop's one channel to the person), the experiments it finished and the
    tokens it was told of."""

    def __init__(self):
        self.notes: list[str] = []
        self.finished: list[dict] = []
        self.tokens: list[tuple] = []

    def note(self, text: str) -> None:
        self.notes.append(text)

    def experiment_finished(self, row, best, baseline):
        self.finished.append(row)

    def tokens_used(self, prompt_tokens, completion_tokens, cost, cached_tokens=0, number=None):
        self.tokens.append((prompt_tokens, completion_tokens, cost, cached_tokens, number))


class LoopRun(NamedTuple):
    """What a run of the loop left: the loop object, the run's experiment rows, and the run's summary."""

    loop: Session
    rows: list[dict]
    summary: object


@dataclass
class LoopRunner:
    """Runs of the research loop in the test's workspace, against the scripted endpoint (the `run_loop` fixture).

    `run_loop(script, **run_options)` starts run `t` (or resumes it with resume=True) and returns a LoopRun.
    The workspace is the one the test made and went into (the `workspace` fixture, or its own), else a new
    one at tmp_path/ws made by `files` (the synthetic recipe by default).
    """

    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch
    request: pytest.FixtureRequest | None  # for the fake_llm fixture, when no endpoint is given

    def workspace(self, files: Callable[[Path], Path] | None = None) -> Path:
        """The test's workspace: made with `files` (root -> root) at tmp_path/ws and gone into, unless it has one."""
        here = Path.cwd()
        if files is None and here.is_relative_to(self.tmp_path):
            return here
        root = (files or make_workspace)(self.tmp_path / "ws")
        self.monkeypatch.chdir(root)
        return root

    def make(self, script: list | None = None, *, small: bool = False, endpoint: FakeLLM | None = None,
             proposer=None, reporter: Reporter | None = None, executor_object=None, kill_wait: float | None = None,
             files: Callable[[Path], Path] | None = None, **agent_options) -> Session:
        """The loop object, not started: the scripted endpoint (the `fake_llm` fixture unless `endpoint`) with
        `script`, an LLM agent against it with `agent_options` (or `proposer`, any agent), and, when small, a
        RecordingReporter, a 5 s request timeout and a local executor that kills after KILL_WAIT seconds."""
        self.workspace(files)
        if proposer is None:
            endpoint = endpoint or self.request.getfixturevalue("fake_llm")
            if script is not None:
                endpoint.set_script(script)
            proposer = LLMAgent(**{"model": "fake-model", "base_url": endpoint.base_url,
                                   **({"request_timeout": 5} if small else {}), **agent_options})
        if small and reporter is None:
            reporter = RecordingReporter()
        if kill_wait is None and small:
            kill_wait = KILL_WAIT
        if executor_object is None and kill_wait is not None:
            executor_object = LocalExecutor(kill_wait_seconds=kill_wait)
        return Session(Workspace.find(), proposer, reporter=reporter, executor=executor_object)

    def __call__(self, script: list | None = None, *, tag: str = "t", max_experiments: int | None = 2,
                 resume: bool = False, options: RunOptions | None = None, loop: Session | None = None,
                 small: bool = False, endpoint: FakeLLM | None = None, proposer=None, agent_options: dict | None = None,
                 reporter: Reporter | None = None, executor_object=None, kill_wait: float | None = None,
                 files: Callable[[Path], Path] | None = None, **run_options) -> LoopRun:
        """Start run `tag` (or resume it) with RunOptions(**run_options) (the small limits under them when small);
        `options` instead gives the RunOptions whole; `loop` one made by make()."""
        if loop is None:
            loop = self.make(script, small=small, endpoint=endpoint, proposer=proposer, reporter=reporter,
                             executor_object=executor_object, kill_wait=kill_wait, files=files, **(agent_options or {}))
        elif script is not None:
            (endpoint or self.request.getfixturevalue("fake_llm")).set_script(script)
        if options is None:
            options = RunOptions(**{**(SMALL_OPTIONS if small else {}), **({} if resume else {"tag": tag}),
                                    "max_experiments": max_experiments, **run_options})
        summary = loop.resume(tag, options) if resume else loop.start(options)
        return LoopRun(loop, loop.ledger.experiments(options.tag or tag), summary)

    def small(self, script: list | None = None, max_experiments: int | None = 3, **arguments) -> LoopRun:
        """A run with the small limits of fault tests (see SMALL_OPTIONS and make), three experiments unless told."""
        return self(script, small=True, max_experiments=max_experiments, **arguments)


@pytest.fixture
def run_loop(tmp_path, monkeypatch, request) -> LoopRunner:
    """Runs the loop: `run_loop(script, max_experiments=3, sandbox="on", ...)` -> LoopRun(loop, rows, summary);
    `run_loop.make(...)` the loop object alone (to start it in a thread, or to see it stop)."""
    return LoopRunner(tmp_path, monkeypatch, request)


# --- a run without its loop: the run's pieces tried alone

UNIT_TAG = "unit"


@dataclass
class NewRun:
    """A run made the way a session makes one (its ledger row and its worktree), with its journal."""

    workspace: Workspace
    ledger: Ledger
    state: RunState
    journal: Journal
    reporter: RecordingReporter
    prices: LivePrices

    @property
    def run_dir(self) -> Path:
        return self.workspace.run_dir(UNIT_TAG)


@pytest.fixture
def new_run(workspace) -> NewRun:
    """A new run of the synthetic recipe: its row in a real ledger and its worktree in the real repository."""
    found = Workspace.find()
    ledger = Ledger(found.ledger_path)
    base = found.repo.head_commit()
    recipe_path = found.resolve_recipe(None)
    recipe = load_recipe(found.git_root / recipe_path)
    path = found.run_dir(UNIT_TAG) / "worktree"
    ledger.create_run(UNIT_TAG, recipe=recipe_path, branch=RUN_BRANCH_PREFIX + UNIT_TAG, worktree=str(path),
                      base_commit=base, agent="mutate", model=None, metric=recipe.metric, direction=recipe.direction,
                      budget_seconds=5.0, config={})
    worktree = found.repo.add_worktree(path, RUN_BRANCH_PREFIX + UNIT_TAG, base)
    state = RunState(tag=UNIT_TAG, recipe_path=recipe_path, worktree=worktree, recipe=recipe, budget_seconds=5.0,
                     best=Best(base))
    reporter = RecordingReporter()
    prices = LivePrices(found.root, reporter.note)
    journal = Journal(ledger, state, found.run_dir(UNIT_TAG), reporter, prices, "mutate", None, seed=0)
    return NewRun(found, ledger, state, journal, reporter, prices)
