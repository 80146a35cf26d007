"""One training run of an experiment's commit, start to finish, and the harness's measurement of it.

1. A fresh copy of the commit's recipe folder, written from git's objects into its own folder, is
   the training's working folder; it is deleted afterwards, so nothing a training leaves there
   (bytecode, a patched file, a cache) reaches a later experiment.
2. The training runs there (in the sandbox when there is one; execution/sandbox.py), with the
   budget, a seed, and an empty folder outside the copy to save its model into (`recipe_job`). The
   harness's clock and process-tree kill bound it (the executor: execution/); what it prints is
   information only.
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
from dataclasses import dataclass, replace
from pathlib import Path

from autoresearch.console import Reporter
from autoresearch.evaluation import (Evaluation, HarnessFiles, evaluate_model, evaluation_job, model_digest,
                                     model_folder_outcome, model_limits, scored_metric, write_recipe_files)
from autoresearch.execution.contention import BUSY_SHARE, busy_share, made_up
from autoresearch.execution.jobs import (OUTPUT_DIR_ENV, RUN_MARKER, Executor, JobHandle, Slot, TrainingJob,
                                         TrainingResult, new_job_id)
from autoresearch.execution.sandbox import SandboxPolicy
from autoresearch.execution.leftovers import Limits, remove_tree
from autoresearch.ledger import Ledger
from autoresearch.outcomes import EVALUATION, TRAINING, job_outcome
from autoresearch.recipe import Recipe
from autoresearch.recovery import GitGuard, LedgerGuard
from autoresearch.repo import Repo
from autoresearch.execution.watch import training_watch

MODELS_DIR = "models"
WORK_DIR = "work"
SCRATCH_DIR = "scratch"
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
    sandbox: SandboxPolicy | None = None  # None: no sandbox (execution/sandbox.py)
    sandbox_level: str = "none"

    @property
    def sandboxed(self) -> bool:
        return self.sandbox is not None


@dataclass
class Ticket:
    """One training run on its way: what the harness made for it, and what cancels it."""

    request: TrainingRequest
    slot: Slot
    run_id: int | None
    log_path: Path
    model_dir: Path
    copy_root: Path
    guard: LedgerGuard | None = None
    git_guard: GitGuard | None = None
    head: str | None = None  # the run branch's commit while it trains (checked afterwards, without the sandbox)
    job_id: str = ""  # the executor's name for its training (its evaluation's: with a suffix)
    cancelled: bool = False
    _handle: JobHandle | None = None

    def cancel(self) -> None:
        """Stop it where it is: the process tree of the training (or of its evaluation) is ended."""
        self.cancelled = True
        if self._handle is not None:
            self._handle.cancel()

    def attach(self, handle: JobHandle) -> None:
        """The job it now waits for (its training, then its evaluation): a cancel stops that one."""
        self._handle = handle
        if self.cancelled:
            handle.cancel()


class Trainer:
    """Trains one request and measures it, for the loop and for `verify`.

    In stages, so that a scheduler can keep several in flight: `start` and the two `finish_*` steps
    write the ledger and check the record (the scheduler's own thread, the single writer);
    `run_training` and `run_evaluation` wait for processes (a slot's thread). `train` runs all the
    stages in a row. With `record` (the loop), every training run has its row in `training_runs`,
    written before it starts; `verify` keeps its own record of its trainings.
    """

    def __init__(self, context: RunContext, ledger: Ledger, executor: Executor, reporter: Reporter,
                 record: bool = True):
        self.context, self.ledger, self.executor, self.reporter = context, ledger, executor, reporter
        self.record = record

    def train(self, request: TrainingRequest, split: str = "val", also_test: bool = False,
              slot: Slot = Slot(0)) -> Trained:
        ticket = self.start(request, slot)
        try:
            result = self.run_training(ticket)
            outcome, reason = self.finish_training(ticket, result)
            evaluation = None
            if outcome is None:
                self.reporter.phase("evaluating", slot=slot.index)
                evaluation = self.run_evaluation(ticket, split, also_test)
        except BaseException:
            self.interrupted(ticket)
            raise
        return self.finish(ticket, result, outcome, reason, evaluation, split)

    def start(self, request: TrainingRequest, slot: Slot) -> Ticket:
        """The write-ahead row, a fresh model folder, and (without the sandbox) the record's guards."""
        context = self.context
        ticket = Ticket(request, slot, None, context.run_dir / f"{request.stem}.log",
                        fresh_folder(context.run_dir / MODELS_DIR / request.stem),
                        context.run_dir / WORK_DIR / request.stem, job_id=new_job_id())
        remove_tree(ticket.copy_root)
        if self.record:
            ticket.run_id = self.ledger.start_training_run(context.tag, request.number, request.attempt,
                                                           request.kind, request.seed, request.commit,
                                                           str(ticket.log_path), slot=slot.index, device=slot.device,
                                                           job=self.executor.job_ref(ticket.job_id, slot.index))
        if not context.sandboxed:
            ticket.guard = LedgerGuard(self.ledger, context.run_dir, context.tag)
            if problem := ticket.guard.before():
                self.reporter.note(problem)
            if context.worktree is not None:
                ticket.git_guard = GitGuard(context.worktree, context.tag)
                ticket.git_guard.before()
                ticket.head = context.worktree.head_commit()  # the best: the run branch does not move meanwhile
        return ticket

    def run_training(self, ticket: Ticket) -> TrainingResult:
        """The training itself, in a fresh copy of its commit (deleted after); waits for it to end."""
        context, request = self.context, ticket.request
        try:
            workdir = write_recipe_files(context.repo_root, request.commit, context.recipe_path, None,
                                         ticket.copy_root)
            job = recipe_job(context.recipe, workdir, ticket.log_path, context.budget_seconds, request.seed,
                             context.marker, ticket.model_dir)
            job = self._placed(job, ticket, workdir, context.sandbox.training if context.sandbox else None)
            job = replace(job, watch=training_watch((ticket.copy_root, ticket.model_dir), context.recipe.disk_quota_mb))
            return self._wait(ticket, job, on_output=lambda line: self.reporter.training_output(
                line, slot=ticket.slot.index))
        finally:
            remove_tree(ticket.copy_root)  # what the training left there is hostile: no recursion, no link followed

    def finish_training(self, ticket: Ticket, result: TrainingResult) -> tuple[str | None, str | None]:
        """What the training process alone came to: None when it ended cleanly within its limit with a model.

        Without the sandbox the git files go back first: no git command runs while a training's config
        or hook is in place.
        """
        if result.log_error:
            self.reporter.note(f"{result.log_path}: {result.log_error}; the experiment went on without it")
        outcome, reason = job_outcome(result, TRAINING, self.context.budget_seconds, self._check_after(ticket))
        if outcome is None:
            outcome, reason = model_folder_outcome(ticket.model_dir, model_limits(self.context.recipe))
            if outcome == "invalid":
                remove_tree(ticket.model_dir)  # refused unread; the reason stays in the ledger
        return outcome, reason

    def run_evaluation(self, ticket: Ticket, split: str = "val", also_test: bool = False) -> Evaluation:
        """The harness's evaluation of the saved model (and, for `verify`, on the test split too)."""
        evaluation = self.evaluate(ticket.model_dir, split, f"{ticket.request.stem}.eval", ticket)
        if also_test and scored_metric(evaluation, self.metric_name(split))[0] is None:
            test = self.evaluate(ticket.model_dir, "test", f"{ticket.request.stem}.test", ticket)
            evaluation = Evaluation(test.outcome, test.reason, {**evaluation.values, **test.values},
                                    evaluation.seconds + test.seconds, evaluation.log_path, test.log_tail)
        return evaluation

    def finish(self, ticket: Ticket, result: TrainingResult, outcome: str | None, reason: str | None,
               evaluation: Evaluation | None, split: str = "val") -> Trained:
        """The verdict on the training and its evaluation, written to its row."""
        metric = None
        if outcome is None and evaluation is not None:
            outcome, reason, metric = scored_metric(evaluation, self.metric_name(split))
        if result.cancelled and outcome is None:
            outcome, reason = "interrupted", "stopped by the harness"
        model = model_record(ticket.model_dir, model_limits(self.context.recipe))
        if model["model_path"] is None:
            remove_tree(ticket.model_dir)  # nothing of it is kept on record, and nothing of it is read
        if ticket.run_id is not None:
            placed = {} if result.device is None else {"device": result.device}  # chosen where it ran (Ray)
            self.ledger.finish_training_run(
                ticket.run_id, outcome or "ok", reason, metric, information_only(result.summary, self.context.recipe),
                result.seconds, evaluation=None if evaluation is None else evaluation.values,
                evaluation_seconds=None if evaluation is None else evaluation.seconds,
                sandbox=result.sandbox_level or self.context.sandbox_level, stolen_seconds=result.stolen_seconds,
                contention_seconds=result.contention_seconds, other_gpu_processes=result.other_gpu_processes,
                startup_seconds=result.startup_seconds, **placed, **model)
        share = busy_share(result.contention_seconds, result.seconds)
        if (share or 0) >= BUSY_SHARE or result.other_gpu_processes:  # the live view: the machine was part of it
            gpu = f"; {result.other_gpu_processes} other processes on its GPU" if result.other_gpu_processes else ""
            moved = made_up(result.contention_seconds, self.context.budget_seconds)
            self.reporter.note(f"training {ticket.request.stem}: the machine was busy: other processes took "
                               f"{share or 0:.0%} of it ({result.contention_seconds:.0f}s of its {result.seconds:.0f}s)"
                               f"{gpu}; its deadline moved by {moved:.0f}s for that")
        return Trained(ticket.run_id, result, outcome, reason, metric, evaluation, ticket.model_dir)

    def interrupted(self, ticket: Ticket) -> None:
        if ticket.run_id is not None:
            self.ledger.finish_training_run(ticket.run_id, "interrupted", "stopped during training or its evaluation")

    def metric_name(self, split: str) -> str:
        return self.context.recipe.test_metric if split == "test" else self.context.recipe.metric

    def evaluate(self, model_dir: Path, split: str, stem: str, ticket: Ticket | None = None) -> Evaluation:
        """The harness's evaluation of a saved model, from the fixed files of the run's start commit."""
        context = self.context
        with HarnessFiles(context.repo_root, context.base_commit, context.recipe_path, context.recipe,
                          context.run_dir / SCRATCH_DIR) as folder:
            # A seed the training never saw: which windows and cut points the evaluation draws.
            job = evaluation_job(context.recipe, folder, model_dir, split, secrets.randbelow(SEED_SPACE),
                                 context.run_dir / f"{stem}.log", context.marker)
            if ticket is None:
                if context.sandbox is not None:
                    job = replace(job, sandbox=context.sandbox.evaluation(folder, model_dir))
                return evaluate_model(self.executor, job)
            job = self._placed(job, ticket, folder, context.sandbox.evaluation if context.sandbox else None,
                               suffix=f"-{split}")
            result = self._wait(ticket, job)
            outcome, reason = job_outcome(result, EVALUATION, job.budget_seconds)
            return Evaluation(outcome=outcome, reason=reason, values=result.summary, seconds=result.seconds,
                              log_path=job.log_path, log_tail=result.log_tail)

    def _placed(self, job, ticket: Ticket, workdir: Path, sandbox_for, suffix: str = ""):
        """The job on its slot: its device only, inside the sandbox when there is one, named after its ticket."""
        job = replace(job, job_id=ticket.job_id + suffix, slot=ticket.slot.index)
        if ticket.slot.device is not None:
            job = replace(job, env={**job.env, "CUDA_VISIBLE_DEVICES": ticket.slot.device})
        if sandbox_for is not None:
            job = replace(job, sandbox=sandbox_for(workdir, ticket.model_dir))
        return job

    def _wait(self, ticket: Ticket, job, on_output=None) -> TrainingResult:
        handle = self.executor.submit(job, on_output)
        ticket.attach(handle)
        return handle.result()

    def _check_after(self, ticket: Ticket) -> list[str]:
        """Without the sandbox: what the training touched of the record, each put back."""
        touched = [] if ticket.git_guard is None else ticket.git_guard.after()
        if ticket.guard is not None and ticket.guard.after():
            touched.append("the ledger")
            self.reporter.note(f"the training changed or removed {self.ledger.path}; restored it")
        worktree = self.context.worktree
        if worktree is None or ticket.head is None:
            return touched
        if worktree.head_commit() != ticket.head:
            touched.append("the run branch")
        if not worktree.is_clean():
            touched.append("the run's worktree")
        if touched:
            worktree.reset_hard(ticket.head)
        return touched


def recipe_job(recipe: Recipe, cwd: Path, log_path: Path, budget_seconds: float, seed: int, run_marker: str,
               output_dir: Path) -> TrainingJob:
    """The job that trains a recipe once: for the loop's experiments and for `verify` alike.

    Every such job carries its run's marker, so a resume (or the next verify) finds what a killed
    tool left running. The training saves its model into `output_dir`; it never evaluates.
    """
    return TrainingJob(command=recipe.command, cwd=cwd, log_path=log_path, budget_seconds=budget_seconds,
                       grace_seconds=recipe.grace(budget_seconds), passthrough=recipe.env, makes_up_steal=True,
                       startup_seconds=recipe.startup_seconds, export_seconds=recipe.export_seconds,
                       env={"AUTORESEARCH_SEED": str(seed), OUTPUT_DIR_ENV: str(output_dir),
                            RUN_MARKER: run_marker}, brings_back=(OUTPUT_DIR_ENV,))


def information_only(summary: dict[str, float], recipe: Recipe) -> dict[str, float]:
    """The training's own `name: value` lines without the metric's names: it printed them, the harness measures them."""
    return {name: value for name, value in summary.items() if name not in (recipe.metric, recipe.test_metric)}


def model_record(model_dir: Path, limits: Limits = Limits()) -> dict:
    """What the ledger keeps of a saved model: its folder, size and sha256 (none for a folder out of bounds)."""
    found = model_digest(model_dir, limits)
    if found is None:
        return {"model_path": None}
    size, sha = found
    return {"model_path": str(model_dir), "model_bytes": size, "model_sha256": sha}


def fresh_folder(path: Path) -> Path:
    remove_tree(path)
    path.mkdir(parents=True)
    return path
