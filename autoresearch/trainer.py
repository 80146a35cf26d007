"""One training run of an experiment's commit, start to finish, and the harness's measurement of it.

1. A fresh copy of the commit's recipe folder, written from git's objects into its own folder, is
   the training's working folder; it is deleted afterwards, so nothing a training leaves there
   (bytecode, a patched file, a cache) reaches a later experiment.
2. The training runs there (in the sandbox when there is one; `sandbox.py`), with the budget, a
   seed, and an empty folder outside the copy to save its model into. The harness's clock and
   process-tree kill bound it (runner.py); what it prints is information only.
3. If it exited cleanly and saved a model, the harness evaluates that model in a separate process
   from the recipe's fixed files as committed at the run's start (evaluation.py): that process's
   output is the metric. A model it refuses makes the training `invalid`.
4. Without the sandbox the training could reach the ledger and the run's git worktree; both are
   checked afterwards (and put back), and touching them makes the training `invalid`.

Every training run has a row in `training_runs`, written before it starts and finished after it,
with its sandbox level, the harness's numbers, the measured steal, and the model's size and hash.
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from autoresearch.console import Reporter
from autoresearch.evaluation import (Evaluation, HarnessFiles, evaluate_model, evaluation_job, has_model, last_line,
                                     model_digest, scored_metric, write_recipe_files)
from autoresearch.isolation import SandboxPolicy
from autoresearch.ledger import Ledger
from autoresearch.recipe import Recipe
from autoresearch.recovery import GitGuard, LedgerGuard
from autoresearch.repo import Repo
from autoresearch.runner import Executor, TrainingResult, recipe_job

MODELS_DIR = "models"
WORK_DIR = "work"
SCRATCH_DIR = "scratch"
OOM_MARKERS = ("out of memory", "memoryerror", "cuda error: out of memory", "outofmemoryerror")
NAN_MARKERS = ("loss is nan", "nan loss", "loss is inf", "non-finite loss", "loss exploded")
SEED_SPACE = 2 ** 31


@dataclass(frozen=True)
class TrainingRequest:
    """Which training run: of which experiment and commit, its attempt and kind, its seed."""

    number: int
    attempt: int
    kind: str  # first | noise | confirm
    seed: int
    commit: str
    description: str
    name: str | None = None  # the name of its log and model folders; default from number and attempt

    @property
    def stem(self) -> str:
        """`3` for an experiment's first run, `3.1` for its next: the name of its log and model folders."""
        if self.name:
            return self.name
        return f"{self.number}" if self.attempt == 0 else f"{self.number}.{self.attempt}"


@dataclass
class Trained:
    """One finished training run: the training's result, the harness's evaluation and the verdict on both."""

    run_id: int | None
    result: TrainingResult
    outcome: str | None  # None: trained and scored
    reason: str | None
    metric: float | None
    evaluation: Evaluation | None
    model_dir: Path


@dataclass
class RunContext:
    """What every training run of one run shares."""

    tag: str
    recipe: Recipe
    recipe_path: str  # relative to the repository's top
    repo_root: Path
    base_commit: str  # whose fixed files the evaluation runs
    run_dir: Path
    budget_seconds: float
    marker: str  # the run's process marker (recovery.run_marker)
    worktree: Repo | None = None  # the run's worktree, checked after each training without the sandbox
    sandbox: SandboxPolicy | None = None  # None: no sandbox (isolation.py)
    sandbox_level: str = "none"

    @property
    def sandboxed(self) -> bool:
        return self.sandbox is not None


class Trainer:
    """Trains one request and measures it, for the loop and for `verify`.

    With `record` (the loop), every training run has its row in the ledger's `training_runs`, written
    before it starts; `verify` keeps its own record of its trainings.
    """

    def __init__(self, context: RunContext, ledger: Ledger, executor: Executor, reporter: Reporter,
                 record: bool = True):
        self.context, self.ledger, self.executor, self.reporter = context, ledger, executor, reporter
        self.record = record

    def train(self, request: TrainingRequest, split: str = "val", also_test: bool = False) -> Trained:
        context = self.context
        log_path = context.run_dir / f"{request.stem}.log"
        model_dir = fresh_folder(context.run_dir / MODELS_DIR / request.stem)
        copy_root = context.run_dir / WORK_DIR / request.stem
        shutil.rmtree(copy_root, ignore_errors=True)
        run_id = None
        if self.record:
            run_id = self.ledger.start_training_run(context.tag, request.number, request.attempt, request.kind,
                                                    request.seed, request.commit, str(log_path))
        guard = None if context.sandboxed else LedgerGuard(self.ledger, context.run_dir, context.tag)
        if guard is not None and (problem := guard.before()):
            self.reporter.note(problem)
        git_guard = None if context.sandboxed or context.worktree is None else GitGuard(context.worktree, context.tag)
        head = None
        if git_guard is not None:
            git_guard.before()
            head = context.worktree.head_commit()  # the best: the run branch does not move while it trains
        try:
            try:
                workdir = write_recipe_files(context.repo_root, request.commit, context.recipe_path, None, copy_root)
                job = recipe_job(context.recipe, workdir, log_path, context.budget_seconds, request.seed,
                                 context.marker, model_dir)
                if context.sandbox is not None:
                    job = replace(job, sandbox=context.sandbox.training(workdir, model_dir))
                result = self.executor.run(job, on_output=self.reporter.training_output)
            finally:
                shutil.rmtree(copy_root, ignore_errors=True)
            touched = self._check_after(guard, git_guard, head)
            if result.log_error:
                self.reporter.note(f"{result.log_path}: {result.log_error}; the experiment went on without it")
            outcome, reason = training_outcome(result, touched, context.budget_seconds)
            evaluation, metric = None, None
            if outcome is None and not has_model(model_dir):
                outcome, reason = "crash", "it saved no model (nothing in AUTORESEARCH_OUTPUT_DIR)"
            if outcome is None:
                self.reporter.phase("evaluating")
                evaluation = self.evaluate(model_dir, split, f"{request.stem}.eval")
                outcome, reason, metric = scored_metric(evaluation, self.metric_name(split))
                if outcome is None and also_test:
                    test = self.evaluate(model_dir, "test", f"{request.stem}.test")
                    evaluation = Evaluation(test.outcome, test.reason, {**evaluation.values, **test.values},
                                            evaluation.seconds + test.seconds, evaluation.log_path, test.log_tail)
        except BaseException:
            if run_id is not None:
                self.ledger.finish_training_run(run_id, "interrupted", "stopped during training or its evaluation")
            raise
        if run_id is not None:
            self.ledger.finish_training_run(
                run_id, outcome or "ok", reason, metric, information_only(result.summary, context.recipe),
                result.seconds, evaluation=None if evaluation is None else evaluation.values,
                evaluation_seconds=None if evaluation is None else evaluation.seconds,
                sandbox=context.sandbox_level, stolen_seconds=result.stolen_seconds, **model_record(model_dir))
        return Trained(run_id, result, outcome, reason, metric, evaluation, model_dir)

    def metric_name(self, split: str) -> str:
        return self.context.recipe.test_metric if split == "test" else self.context.recipe.metric

    def evaluate(self, model_dir: Path, split: str, stem: str) -> Evaluation:
        """The harness's evaluation of a saved model, from the fixed files of the run's start commit."""
        context = self.context
        files = HarnessFiles(context.repo_root, context.base_commit, context.recipe_path, context.recipe,
                             context.run_dir / SCRATCH_DIR)
        with files as folder:
            # A seed the training never saw: which windows and cut points the evaluation draws.
            job = evaluation_job(context.recipe, folder, model_dir, split, secrets.randbelow(SEED_SPACE),
                                 context.run_dir / f"{stem}.log", context.marker)
            if context.sandbox is not None:
                job = replace(job, sandbox=context.sandbox.evaluation(folder, model_dir))
            return evaluate_model(self.executor, job)

    def _check_after(self, guard: LedgerGuard | None, git_guard: GitGuard | None, head: str | None) -> list[str]:
        """Without the sandbox: what the training touched of the record, each put back.

        The git files go back first: no git command runs while a training's config or hook is in place.
        """
        touched = [] if git_guard is None else git_guard.after()
        if guard is not None and guard.after():
            touched.append("the ledger")
            self.reporter.note(f"the training changed or removed {self.ledger.path}; restored it")
        worktree = self.context.worktree
        if worktree is None or head is None:
            return touched
        if worktree.head_commit() != head:
            touched.append("the run branch")
        if not worktree.is_clean():
            touched.append("the run's worktree")
        if touched:
            worktree.reset_hard(head)
        return touched


def training_outcome(result: TrainingResult, touched: list[str], budget_seconds: float) -> tuple[str | None, str | None]:
    """(outcome, reason) of the training process alone; None when it exited cleanly within its limit."""
    if touched:
        return "invalid", f"touched {', '.join(touched)} during training"
    if result.timed_out:
        return "timeout", f"still running after {result.seconds:.0f}s (budget {budget_seconds:g}s)"
    if result.exit_code != 0:
        tail = result.log_tail.lower()
        if any(marker in tail for marker in OOM_MARKERS):
            return "crash", "oom"
        if any(marker in tail for marker in NAN_MARKERS):
            return "crash", "nan"
        return "crash", f"exit code {result.exit_code}: {last_line(result.log_tail)}"
    return None, None


def information_only(summary: dict[str, float], recipe: Recipe) -> dict[str, float]:
    """The training's own `name: value` lines without the metric's names: it printed them, the harness measures them."""
    return {name: value for name, value in summary.items() if name not in (recipe.metric, recipe.test_metric)}


def model_record(model_dir: Path) -> dict:
    if not has_model(model_dir):
        return {"model_path": None}
    size, sha = model_digest(model_dir)
    return {"model_path": str(model_dir), "model_bytes": size, "model_sha256": sha}


def fresh_folder(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
