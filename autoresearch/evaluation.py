"""The harness's own steps around a training: the recipe's fixed files, its data, and the evaluation of a saved model.

Nothing here trusts the training. Every step runs the recipe's fixed files as committed at the
run's start, written afresh into a folder of their own for that one step (never the worktree's
copies, never anything a training could have touched or left bytecode in), with `python -I -B` and
an environment built from the allowlist. The editable files are not in that folder, so nothing the
agent wrote is imported.

- `prepare_data` runs the recipe's `prepare` command before the first training: it builds the data
  and says which paths the training may read (`show: PATH`) and which it must never see
  (`hide: PATH`: the held-out data and what it is made from); the sandbox acts on both. Its output
  goes to `progress` as it comes (the latest line, at most one every PREPARE_PROGRESS_SECONDS, cut
  and stripped of control characters): a download of gigabytes is not one silent line. It is
  stopped at the recipe's `prepare_seconds`, and a failure stops the run with its last line.
- `evaluate_model` runs the recipe's `evaluate` command on the folder a training saved its model
  into, after the training's process tree is gone, on the validation split (or the test split, for
  `verify` only). Its `name: value` lines are the only source of an experiment's metric. Exit code
  3 with a last line `refused: REASON` means the evaluation refused the model (it looks ahead, it
  keeps state, it uses a forbidden operation): the experiment is `invalid` with that reason.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import subprocess
import tarfile
import uuid
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from autoresearch.errors import UserError
from autoresearch.execution.jobs import RUN_MARKER, Executor, TrainingJob
from autoresearch.execution.leftovers import Limits, digest, survey
from autoresearch.execution.watch import evaluation_watch
from autoresearch.outcomes import EVALUATION, job_outcome, last_line
from autoresearch.quoting import clean
from autoresearch.recipe import Recipe
from autoresearch.repo import safe_git_environment

SPLITS = ("val", "test")
MODEL_DIR_ENV = "AUTORESEARCH_MODEL_DIR"  # the saved model an evaluation reads
MODEL_BYTES_ENV = "AUTORESEARCH_MODEL_BYTES"  # the most of it the evaluation reads (lm.MODEL_BYTES_ENV)
PREPARE_PROGRESS_SECONDS = 5.0  # at most one line of the prepare step's progress this often
PROGRESS_LINE_CHARS = 200


def write_recipe_files(repo_root: Path, commit: str, recipe_path: str, names: tuple[str, ...] | None,
                       into: Path) -> Path:
    """The recipe's files `names` (None: its whole folder) as committed at `commit`, in a new folder.

    Read from git's objects (`git archive`), so what a training did to a worktree does not matter.
    Returns the recipe's folder inside `into`.
    """
    paths = [recipe_path] if names is None else [f"{recipe_path}/{name}" for name in names]
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "--", *paths], cwd=repo_root,
                             env={**os.environ, **safe_git_environment()}, capture_output=True, check=False)
    if archive.returncode != 0:
        raise UserError(f"cannot read {recipe_path} at {commit[:12]}: {archive.stderr.decode(errors='replace').strip()}")
    into.mkdir(parents=True, exist_ok=False)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        try:
            tar.extractall(into, filter="data")
        except TypeError:  # Python before 3.11.4 has no extraction filters; git's own archive needs none
            tar.extractall(into)
    return into / recipe_path


class HarnessFiles:
    """A fresh folder holding the recipe's fixed files at the run's start commit, for one harness step.

    Used as a context manager: the folder is the recipe folder inside it, and it is removed after.
    """

    def __init__(self, repo_root: Path, commit: str, recipe_path: str, recipe: Recipe, scratch: Path):
        self.repo_root, self.commit, self.recipe_path, self.recipe = repo_root, commit, recipe_path, recipe
        self.root = Path(scratch) / f"harness-{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> Path:
        return write_recipe_files(self.repo_root, self.commit, self.recipe_path, self.recipe.fixed, self.root)

    def __exit__(self, *exc_info) -> bool:
        shutil.rmtree(self.root, ignore_errors=True)
        return False


@dataclass(frozen=True)
class PreparedData:
    """What the recipe's prepare step said: the paths the training may read, and those it must never see."""

    show: tuple[Path, ...] = ()
    hide: tuple[Path, ...] = ()


def prepare_data(executor: Executor, recipe: Recipe, folder: Path, log_path: Path, marker: str,
                 progress: Callable[[str], None] | None = None) -> PreparedData:
    """Run the recipe's `prepare` command (if it has one) in `folder`, its progress told to `progress` (from the
    calling thread); a failure, or a step past the recipe's `prepare_seconds`, stops the run."""
    if not recipe.prepare:
        return PreparedData()
    job = TrainingJob(command=recipe.prepare, cwd=folder, log_path=log_path, budget_seconds=recipe.prepare_seconds,
                      grace_seconds=0, passthrough=recipe.env, isolated=True, env={RUN_MARKER: marker})
    latest = _LatestLine()
    handle = executor.submit(job, latest.put)
    told, told_at = None, 0.0
    try:
        while not handle.wait(0.5):
            line = latest.get()
            if progress is not None and line and line != told and time.monotonic() - told_at >= PREPARE_PROGRESS_SECONDS:
                progress(line)
                told, told_at = line, time.monotonic()
    except BaseException:  # Ctrl-C: the step's processes are ended before it goes on up
        handle.cancel()
        handle.wait()
        raise
    result = handle.result()
    if result.timed_out or result.exit_code != 0:
        said = _shown(last_line(result.log_tail) or "")
        why = (f"still running after {recipe.prepare_seconds:g}s, the recipe's prepare_seconds" if result.timed_out
               else f"exit code {result.exit_code}")
        raise UserError(f"the recipe's prepare step failed ({why}" + (f": {said}" if said else "")
                        + f"); see {log_path}")
    show, hide = [], []
    for line in read_text(log_path).splitlines():
        kind, _, path = line.partition(":")
        if kind in ("show", "hide") and path.strip():
            (show if kind == "show" else hide).append(Path(path.strip()))
    return PreparedData(show=tuple(show), hide=tuple(hide))


class _LatestLine:
    """The latest line a step printed, shown (no show:/hide: lines): written by its output's thread, read by
    the caller's."""

    def __init__(self):
        self._line = ""
        self._lock = threading.Lock()

    def put(self, line: str) -> None:
        shown = _shown(line)
        if shown and not shown.startswith(("show:", "hide:")):
            with self._lock:
                self._line = shown

    def get(self) -> str:
        with self._lock:
            return self._line


def _shown(line: str) -> str:
    """A line of a step's output as a person may see it: printable characters only, cut to a bound."""
    text = clean(line).replace("\t", " ").replace("\n", " ").strip()
    return text if len(text) <= PROGRESS_LINE_CHARS else text[:PROGRESS_LINE_CHARS - 1] + "…"


@dataclass(frozen=True)
class Evaluation:
    """What the harness's evaluation of one saved model found.

    `outcome` is None when it scored the model; else `invalid` (it refused the model), `crash` (it
    failed on it) or `timeout`, with `reason`.
    """

    outcome: str | None
    reason: str | None
    values: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    log_path: Path | None = None
    log_tail: str = ""

    def metric(self, name: str) -> float | None:
        return self.values.get(name)


def evaluation_job(recipe: Recipe, folder: Path, model_dir: Path, split: str, seed: int, log_path: Path,
                   marker: str) -> TrainingJob:
    """The job that evaluates one saved model on one split with the recipe's fixed `evaluate` command."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return TrainingJob(command=recipe.evaluate, cwd=folder, log_path=log_path, budget_seconds=recipe.evaluation_seconds,
                       grace_seconds=0, passthrough=recipe.env, isolated=True,
                       env={MODEL_DIR_ENV: str(model_dir), "AUTORESEARCH_SPLIT": split,
                            "AUTORESEARCH_SEED": str(seed), RUN_MARKER: marker,
                            MODEL_BYTES_ENV: str(model_limits(recipe).bytes)},
                       carries=(MODEL_DIR_ENV,), watch=evaluation_watch(recipe.evaluation_memory_mb))


def evaluate_model(executor: Executor, job: TrainingJob) -> Evaluation:
    """Run an evaluation job; its printed `name: value` lines are the model's numbers."""
    result = executor.run(job)
    outcome, reason = job_outcome(result, EVALUATION, job.budget_seconds)
    return Evaluation(outcome=outcome, reason=reason, values=result.summary, seconds=result.seconds,
                      log_path=job.log_path, log_tail=result.log_tail)


def scored_metric(evaluation: Evaluation, name: str) -> tuple[str | None, str | None, float | None]:
    """(outcome, reason, metric) for a finished evaluation; outcome None means the metric is usable."""
    if evaluation.outcome is not None:
        return evaluation.outcome, evaluation.reason, None
    value = evaluation.metric(name)
    if value is None:
        printed = ", ".join(list(evaluation.values)[:12])
        return "crash", f"the evaluation printed no {name} line (" + (
            f"it printed: {printed})" if printed else "it printed no `name: value` line)"), None
    if not is_finite(value):
        return "crash", "nan", None
    return None, None, value


def model_limits(recipe: Recipe) -> Limits:
    """How much a training of this recipe may leave in its model folder (recipe.yaml `disk_quota_mb`)."""
    return Limits.for_quota(recipe.disk_quota_mb)


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def model_folder_outcome(model_dir: Path, limits: Limits) -> tuple[str | None, str | None]:
    """(outcome, reason) of what a training left in its model folder, from lstat alone; None when it may be evaluated.

    The folder is hostile input (execution/leftovers.py): a link, a special file, too many entries, too deep a
    tree or more than the quota (apparent or on disk) is `invalid`; nothing at all is a crash.
    """
    found = survey(model_dir, limits)
    if found.problem:
        return "invalid", f"its model folder {found.problem}"
    if not found.has_files:
        return "crash", "it saved no model (nothing in AUTORESEARCH_OUTPUT_DIR)"
    return None, None


def model_digest(model_dir: Path, limits: Limits = Limits()) -> tuple[int, str] | None:
    """(bytes, sha256) of every file of a saved model, in name order: what the ledger keeps of it.

    None when the folder is out of bounds (then nothing of it is read) or holds no file.
    """
    found = survey(model_dir, limits)
    if found.problem or not found.has_files:
        return None
    try:
        return digest(model_dir, found)
    except OSError:
        return None


def has_model(model_dir: Path, limits: Limits = Limits()) -> bool:
    found = survey(model_dir, limits)
    return found.problem is None and found.has_files


def read_text(path: Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""
