"""The research loop: propose, guard, commit, train and evaluate, decide, record; then again.

Every experiment's ledger row is written before it can fail (outcome `running`) and its outcome
before the branch moves, so a crash, a Ctrl-C or a kill at any moment leaves a row to find. The
branch `autoresearch/<tag>` lives in its own worktree under runs/<tag>/ and only ever points at
the best commit once an experiment is decided; every commit an experiment made stays reachable
under refs/autoresearch/<tag>/<n>. The state of a run (best commit, next number) is derived from
the ledger, which is what makes `--resume` possible. A training and the harness's evaluation of
its model are trainer.py's; the run's settings are settings.py's; the sandbox is chosen once per
invocation, after the recipe's data is prepared (execution/sandbox.py); what is in flight at once (drafts
of proposals, trainings on slots) and the order of things is scheduler.py's, which calls back here
to open, record and close experiments.
"""

from __future__ import annotations

import os
import shlex
import shutil
import time
from functools import partial
from dataclasses import dataclass, field, replace
from pathlib import Path

from autoresearch.agents import Agent, LLMCall
from autoresearch.errors import AgentUnavailable, Remedy
from autoresearch.console import Reporter, times
from autoresearch.errors import StopRun, UserError
from autoresearch.gains import gain_or_none
from autoresearch.evaluation import HarnessFiles, prepare_data
from autoresearch.execution.sandbox import choose_sandbox
from autoresearch.guard import editable_digest
from autoresearch.ledger import ENDPOINT_CHECK_ATTEMPT, Ledger, best_row, now_iso
from autoresearch.noise import NoiseFloor, decide
from autoresearch.prompts import LineageEntry, Standing
from autoresearch.recipe import Recipe, check_tunables, load_recipe
from autoresearch.repo import RUN_BRANCH_PREFIX, Repo
from autoresearch.pricing import LivePrices
from autoresearch.recovery import reconcile, run_marker
from autoresearch.review import read_log_tail, run_usage
from autoresearch.runlock import RunLock, WorkspaceLock
from autoresearch.errors import InvalidSetting
from autoresearch.settings import RunOptions, check_options, override_records, run_slots, stored_settings
from autoresearch.execution.jobs import Executor
from autoresearch.execution.local import LocalExecutor
from autoresearch.execution.ray import RayExecutor
from autoresearch.spending import SpendingCap, run_spending
from autoresearch.scheduler import Scheduler
from autoresearch.trainer import SCRATCH_DIR, RunContext, Trained, Trainer, information_only
from autoresearch.workspace import Workspace, check_tag

WORKTREE_DIR = "worktree"
RESULTS_FILE = "results.tsv"
PREPARE_LOG = "prepare.log"
MAX_BACKOFF_SECONDS = 300.0


def executor_for(options) -> Executor:
    """The executor a run's options name (settings.RunOptions.executor)."""
    if options.executor == "ray":
        return RayExecutor(options.ray_address, require_sandbox=options.sandbox == "on")
    return LocalExecutor()


@dataclass
class RunState:
    """Where a run stands; rebuilt from the ledger on resume."""

    tag: str
    recipe_path: str
    worktree: Repo
    recipe: Recipe
    budget_seconds: float
    best_commit: str
    best_number: int | None = None  # the best experiment (runs.best_number)
    best_metric: float | None = None
    baseline_metric: float | None = None
    next_number: int = 0
    seen_hashes: dict[str, int] = field(default_factory=dict)
    noise: NoiseFloor = field(default_factory=lambda: NoiseFloor(std=None, runs=0))
    best_runs: list[float] = field(default_factory=list)  # the best commit's metric in each of its runs
    noise_groups: list[list[float]] = field(default_factory=list)  # each multi-seed commit's metrics
    trainer: Trainer | None = None  # made once the data is prepared, before the first training

    @property
    def recipe_dir(self) -> Path:
        return self.worktree.root / self.recipe_path


@dataclass(frozen=True)
class RunSummary:
    tag: str
    experiments: int
    kept: int
    best_metric: float | None
    baseline_metric: float | None
    direction: str
    stop_reason: str


class ResearchLoop:
    """Runs experiments for one run of one workspace."""

    def __init__(self, workspace: Workspace, agent: Agent, reporter: Reporter | None = None,
                 executor: Executor | None = None, ledger: Ledger | None = None):
        self.workspace = workspace
        self.agent = agent
        self.reporter = reporter or Reporter()
        self.executor = executor  # None: the one the run's options name (executor_for), once they are known
        self.ledger = ledger or Ledger(workspace.ledger_path)
        self.prices = LivePrices(workspace.root, self.reporter.note)
        self.program = ""
        self._best_diff: tuple[tuple[str, str] | None, str] = (None, "")  # (baseline, best) and their diff
        self.tag: str | None = None
        self._locks: list[RunLock | WorkspaceLock] = []

    # --- starting and resuming

    def start(self, options: RunOptions) -> RunSummary:
        """A new run from the workspace's HEAD."""
        return self._loop(*self._holding_locks_on_failure(self._new_run, options))

    def resume(self, tag: str, options: RunOptions) -> RunSummary:
        """Go on with a run (with `options`, normally its own settings: settings.resumed_options).

        Lost experiments become `interrupted` and the branch goes back to the best commit. A run whose
        baseline never succeeded starts again from the workspace's last commit, so a recipe fixed
        and committed since is what it trains.
        """
        return self._loop(*self._holding_locks_on_failure(self._resumed_run, tag, options))

    def _holding_locks_on_failure(self, prepare, *args):
        """What `prepare` returns; the locks it took are let go if it fails (nothing then runs)."""
        try:
            return prepare(*args)
        except BaseException:
            self._release_lock()
            raise

    def _new_run(self, options: RunOptions) -> tuple[RunState, RunOptions]:
        check_options(options)
        self.executor = self.executor or executor_for(options)
        workspace = self.workspace
        self.program = workspace.read_program()
        recipe_path = workspace.resolve_recipe(options.recipe)
        self._check_committed(recipe_path)
        recipe = load_recipe(workspace.git_root / recipe_path)
        check_tunables(recipe)
        taken = {run["tag"] for run in self.ledger.runs()}
        tag = check_tag(options.tag) if options.tag is not None else workspace.new_tag(taken)
        self.tag = tag
        branch = RUN_BRANCH_PREFIX + tag
        if tag in taken:
            raise UserError(f"a run tagged {tag!r} already exists; resume it with --resume {shlex.quote(tag)} or "
                            "choose another --tag")
        if workspace.repo.branch_exists(branch) or workspace.run_dir(tag).exists():
            raise UserError(f"branch {branch} or folder {workspace.run_dir(tag)} already exists but no run of this "
                            f"ledger made it; choose another --tag, or remove them with: autoresearch rm "
                            f"{shlex.quote(tag)}")
        self._check_caps(options)
        base_commit = workspace.repo.head_commit()
        self._hold_workspace(options, tag)  # before anything of the new run is made
        self._locks.append(RunLock(workspace.run_dir(tag), tag).acquire())
        budget = options.budget_seconds or recipe.budget_seconds
        options = replace(options, budget_seconds=budget)
        # The ledger row comes first: a tool killed while the worktree is made leaves a run to resume.
        worktree_path = workspace.run_dir(tag) / WORKTREE_DIR
        self.ledger.create_run(tag, recipe=recipe_path, branch=branch, worktree=str(worktree_path),
                               base_commit=base_commit, agent=self.agent.name, model=getattr(self.agent, "model", None),
                               metric=recipe.metric, direction=recipe.direction, budget_seconds=budget,
                               config=stored_settings(options))
        worktree = workspace.repo.add_worktree(worktree_path, branch, base_commit)
        state = RunState(tag=tag, recipe_path=recipe_path, worktree=worktree,
                         recipe=load_recipe(worktree.root / recipe_path), budget_seconds=budget, best_commit=base_commit)
        return state, options

    def _resumed_run(self, tag: str, options: RunOptions) -> tuple[RunState, RunOptions]:
        check_options(options)
        self.executor = self.executor or executor_for(options)
        self.tag = check_tag(tag)
        self.program = self.workspace.read_program()
        self._check_caps(options)
        worktree, run = self.put_straight(tag, options)
        rows = self.ledger.experiments(tag)
        kept = [row for row in rows if row["outcome"] == "keep"]
        if not kept:
            run = self._rebase_without_baseline(run, worktree)
        budget = options.budget_seconds or run["budget_seconds"]
        config = stored_settings(replace(options, budget_seconds=budget))
        config["overrides"] = run["config"].get("overrides", []) + override_records(options, now_iso())
        self.ledger.set_run_config(tag, config)
        best = best_row(run, kept)
        state = RunState(tag=tag, recipe_path=run["recipe"], worktree=worktree,
                         recipe=load_recipe(worktree.root / run["recipe"]), budget_seconds=budget,
                         best_commit=best["commit_sha"] if best else run["base_commit"],
                         best_number=best["number"] if best else None,
                         best_metric=best["metric"] if best else None,
                         baseline_metric=kept[0]["metric"] if kept else None,
                         next_number=max((row["number"] for row in rows), default=-1) + 1,
                         # An interrupted experiment never got a result: proposing it again is no duplicate.
                         seen_hashes={row["files_hash"]: row["number"] for row in rows
                                      if row["files_hash"] and row["outcome"] != "interrupted"})
        self._restore_noise(state, run, best)
        worktree.reset_hard(state.best_commit)
        self.ledger.set_run_status(tag, "running")
        return state, options

    def put_straight(self, tag: str, options: RunOptions | None = None) -> tuple[Repo, dict]:
        """Take the run's lock and bring it back to a state it can go on from (recovery.reconcile).

        With `options` (a resume that will train), the workspace's training lock is taken too,
        before anything is changed. Returns the run's worktree and its ledger row; the locks stay
        held until the loop ends or `close` is called.
        """
        run = self.ledger.run(tag)
        if run is None:
            raise UserError(f"no run tagged {tag!r} in {self.workspace.ledger_path}")
        self._locks.append(RunLock(self.workspace.run_dir(tag), tag).acquire())
        try:
            if options is not None:
                self._hold_workspace(options, tag)
            worktree, reconciled = reconcile(self.ledger, self.workspace.repo, run, self.workspace.run_dir(tag))
            if options is not None:
                self._look_up_jobs(tag)
            self.ledger.mark_unfinished_training_runs_interrupted(tag)
        except BaseException:
            self._release_lock()
            raise
        if reconciled.describe():
            self.reporter.note(f"run {tag}: {reconciled.describe()}")
        return worktree, run

    def _look_up_jobs(self, tag: str) -> None:
        """The jobs a killed tool left in flight where they ran (a Ray cluster): each is stopped if it still
        runs, and the person is told which they were; their training runs are then recorded as interrupted."""
        in_flight = [row for row in self.ledger.training_runs(tag) if row["outcome"] == "running" and row.get("job")]
        if not in_flight:
            return
        found = self.executor.find_jobs([row["job"] for row in in_flight], run_marker(self.workspace.run_dir(tag)))
        said = [f"experiment {row['experiment']} run {row['attempt']} ({row['job']}: {found[row['job']]})"
                for row in in_flight if row["job"] in found]
        if said:
            self.reporter.note(f"run {tag}: in flight when the tool stopped: {', '.join(said)}; recorded as "
                               "interrupted")

    def close(self) -> None:
        """Let go of the run (after `put_straight` without a loop)."""
        self._release_lock()

    def _check_committed(self, recipe_path: str) -> None:
        """A run starts from the last commit: the recipe must be committed, with nothing pending."""
        repo = self.workspace.repo
        if not repo.has_commits() or not repo.is_tracked(recipe_path):
            raise UserError(f"{recipe_path} is not committed; commit it first (a run starts from the last commit)")
        pending = repo.uncommitted_paths(recipe_path)
        if pending:
            raise UserError(f"{recipe_path} has uncommitted changes ({', '.join(pending[:3])}); commit or stash "
                            "them first (a run starts from the last commit)")

    def _rebase_without_baseline(self, run: dict, worktree: Repo) -> dict:
        """A run with no baseline yet starts again from the workspace's last commit, if that changed the recipe.

        The baseline is what every experiment is measured against; until one succeeded, nothing of the
        run depends on its start commit, so a fix of the recipe committed since is taken.
        """
        try:
            self._check_committed(run["recipe"])
        except UserError as exc:
            raise UserError(f"run {run['tag']} has no baseline yet, so a resume starts from the workspace's last "
                            f"commit, but {exc}") from None
        head = self.workspace.repo.head_commit()
        if head == run["base_commit"] or not self.workspace.repo.diff(run["base_commit"], head, run["recipe"]).strip():
            return run
        self.ledger.rebase_run(run["tag"], head)
        worktree.reset_hard(head)
        self.reporter.note(f"run {run['tag']} has no baseline yet: it starts again from the workspace's last commit "
                           f"{head[:7]}, where {run['recipe']} changed")
        return self.ledger.run(run["tag"])

    def _hold_workspace(self, options: RunOptions, tag: str) -> None:
        """One run trains in a workspace at a time, unless the person allows more (runlock.WorkspaceLock)."""
        if not options.allow_concurrent:
            self._locks.append(WorkspaceLock(self.workspace.runs_dir).acquire(f"run {tag}"))

    def _release_lock(self) -> None:
        while self._locks:
            self._locks.pop().release()

    # --- limits a person set on LLM spending

    def _check_caps(self, options: RunOptions) -> None:
        cap = SpendingCap(options.max_cost, options.max_tokens)
        if cap.is_set:
            cap.check_prices(self.prices.table(), getattr(self.agent, "model", None))

    def _spending_stop_reason(self, state: RunState, options: RunOptions, drafting: int = 0) -> str | None:
        """Why the next experiment must not start (it would pass --max-cost or --max-tokens), or None;
        `drafting` proposals under way, whose calls are not recorded yet, count at the next one's cost."""
        cap = SpendingCap(options.max_cost, options.max_tokens)
        if not cap.is_set or state.best_metric is None:
            return None
        return cap.stop_reason(run_spending(self.ledger, state.tag, self.prices.table()), drafting)

    def _spending_unmeasured(self, state: RunState, options: RunOptions) -> bool:
        """A spending cap is set, but no proposal's cost is known yet to count the drafts under way at."""
        if not SpendingCap(options.max_cost, options.max_tokens).is_set:
            return False
        spending = run_spending(self.ledger, state.tag, self.prices.table())
        return spending.next_tokens == 0 and spending.next_cost == 0

    # --- the loop

    def _loop(self, state: RunState, options: RunOptions) -> RunSummary:
        recipe = state.recipe
        self.tag = state.tag
        described = self.agent.describe()
        self.reporter.run_started(state.tag, recipe.name, recipe.metric, recipe.direction, state.budget_seconds,
                                  f"{self.agent.name} ({described})" if described else self.agent.name)
        spent = run_usage(self.ledger, state.tag, self.prices.table())
        if spent["prompt_tokens"] or spent["completion_tokens"]:  # a resumed run: what it spent before
            self.reporter.tokens_used(spent["prompt_tokens"], spent["completion_tokens"], spent["cost_usd"],
                                      spent["cached_tokens"])
        clock = _ActiveClock(self.ledger, state.tag)
        done = sum(n for outcome, n in self.ledger.outcome_counts().get(state.tag, {}).items() if outcome != "interrupted")
        try:
            stop_reason = self._limit_reached(state, options, clock) or ""
            if not stop_reason:
                self._check_agent(state, options)  # before anything trains: a wrong URL, key or model costs no training
                state.trainer, slots, draft_ahead = self._make_trainer(state, options)
                clock.record()
                clock.slots = len(slots)
                self.reporter.limits(options.max_experiments, done, None if options.hours is None else
                                     options.hours * 3600 - clock.seconds(), slots=len(slots))
                stop_reason = Scheduler(self, state, options, clock, slots, draft_ahead).run()
        except KeyboardInterrupt:
            self.ledger.set_run_status(state.tag, "interrupted")
            raise
        except StopRun as exc:
            self.ledger.set_run_status(state.tag, "stopped")
            raise StopRun(f"run {state.tag} stopped: {exc}", exc.remedy, exc.baseline_failed) from None
        except BaseException:
            self.ledger.set_run_status(state.tag, "failed")
            raise
        finally:
            clock.record()
            self.executor.close()  # on a cluster: every worker of this invocation is given back
            self._release_lock()
        self.ledger.set_run_status(state.tag, "finished")
        rows = self.ledger.experiments(state.tag)
        return RunSummary(tag=state.tag, experiments=len(rows), kept=sum(r["outcome"] == "keep" for r in rows),
                          best_metric=state.best_metric, baseline_metric=state.baseline_metric,
                          direction=state.recipe.direction, stop_reason=stop_reason)

    def _limit_reached(self, state: RunState, options: RunOptions, clock: "_ActiveClock",
                       in_flight: int = 0, drafting: int = 0, asks_agent: bool = True) -> str | None:
        """Why no new experiment may start: a limit of the run (counted over its resumes, and with the
        `in_flight` experiments already started, `drafting` of them still waiting for the agent), or None.
        One that `asks_agent` nothing (a combination) spends no tokens, so the spending caps do not stop it."""
        if options.max_experiments is not None:
            done = sum(count for outcome, count in self.ledger.outcome_counts().get(state.tag, {}).items()
                       if outcome not in ("interrupted", "running"))
            if done + in_flight >= options.max_experiments:
                return f"reached --max-experiments {options.max_experiments}"
        if options.hours is not None and clock.seconds() >= options.hours * 3600:
            return f"reached --hours {options.hours:g}"
        return self._spending_stop_reason(state, options, drafting) if asks_agent else None

    def _check_agent(self, state: RunState, options: RunOptions) -> None:
        """The agent proves it can propose (one cheap LLM call), recorded under the next experiment's number."""
        number = state.next_number
        self._ask_agent(options, "endpoint check",
                        lambda: self.agent.check(lambda call: self._record_call(state.tag, number, call)))

    def _ask_agent(self, options: RunOptions, what: str, ask, note=None):
        """ask(), under the one retry policy of LLM calls; `what` names the asking in the notes.

        A failed call is tried again after a wait that doubles, until max_agent_failures in a row; a
        refusal no retry can mend (the key, the model, a prompt too long) stops the run at once. From
        a draft's thread the notes go through `note` (the scheduler's queue).
        """
        note = note or self.reporter.note
        failures = 0
        while True:
            try:
                return ask()
            except AgentUnavailable as exc:
                failures += 1
                if not exc.retryable:
                    raise StopRun(str(exc), exc.remedy) from None
                if failures >= options.max_agent_failures:
                    in_a_row = f"{times(failures)} in a row (last: {exc})" if failures > 1 else f"{times(1)} ({exc})"
                    raise StopRun(f"the LLM endpoint failed {in_a_row}") from None
                wait = min(MAX_BACKOFF_SECONDS, options.agent_backoff_seconds * 2 ** (failures - 1))
                note(f"{what}: LLM call failed: {exc}; trying again in {wait:g}s")
                time.sleep(wait)

    def _record_call(self, tag: str, number: int, call: LLMCall) -> None:
        """Every call goes in the ledger; the reporter hears of the tokens of each answered one (a failed
        call is told by the note that retries it, or by the line that stops the run)."""
        self.ledger.record_llm_call(tag, number, call.attempt, call.model, call.messages, call.reply, call.error,
                                    call.prompt_tokens, call.completion_tokens, call.latency_seconds,
                                    cached_tokens=call.cached_tokens, finish_reason=call.finish_reason)
        if call.error is not None:
            return
        prices = self.prices.table()
        prompt_tokens, completion_tokens = call.prompt_tokens or 0, call.completion_tokens or 0
        cost = (prices.cost(call.model, prompt_tokens, completion_tokens, call.cached_tokens or 0)
                if prices.is_known(call.model) else None)
        # the endpoint check is filed under the next experiment's number, but is no part of it yet
        self.reporter.tokens_used(prompt_tokens, completion_tokens, cost, call.cached_tokens or 0,
                                  number=None if call.attempt == ENDPOINT_CHECK_ATTEMPT else number)

    def _make_trainer(self, state: RunState, options: RunOptions) -> Trainer:
        """The harness's side of every training of this invocation: the data prepared, what to hide, the sandbox."""
        run = self.ledger.run(state.tag)
        run_dir = self.workspace.run_dir(state.tag)
        context = RunContext(tag=state.tag, recipe=state.recipe, recipe_path=state.recipe_path,
                             repo_root=self.workspace.git_root, base_commit=run["base_commit"], run_dir=run_dir,
                             budget_seconds=state.budget_seconds, marker=run_marker(run_dir), worktree=state.worktree)
        if state.recipe.prepare:
            self.reporter.note(f"run {state.tag}: preparing the data ({state.recipe.prepare})")
        with HarnessFiles(context.repo_root, context.base_commit, context.recipe_path, state.recipe,
                          run_dir / SCRATCH_DIR) as folder:
            data = prepare_data(self.executor, state.recipe, folder, run_dir / PREPARE_LOG, context.marker)
        sandbox = choose_sandbox(options.sandbox, self.workspace.git_root, data)
        if sandbox.problem:
            self.reporter.note(f"run {state.tag}: {sandbox.problem}")
        context.sandbox, context.sandbox_level = sandbox.policy, sandbox.level
        self.ledger.set_run_sandbox(state.tag, context.sandbox_level)
        slots = run_slots(options, self.executor.offered_slots())
        draft_ahead = options.draft_ahead
        if sandbox.policy is None and (len(slots) > 1 or draft_ahead):
            if len(slots) > 1:
                raise InvalidSetting("slots", f"is {len(slots)}, but several trainings at once need the sandbox: "
                                              "without it the check of the record after each training cannot tell "
                                              "what a training wrote from what the tool wrote meanwhile")
            draft_ahead = False  # the same reason: the tool writes nothing while a training runs unsandboxed
        return Trainer(context, self.ledger, self.executor, self.reporter), slots, draft_ahead

    # --- the noise floor and confirmation runs (docs/noise.md)

    def _refine_noise(self, state: RunState, metrics: list[float]) -> None:
        """One more commit's metrics under several seeds: the noise floor is pooled again and recorded."""
        state.noise_groups.append(list(metrics))
        state.noise = NoiseFloor.pooled(state.noise_groups)
        self.ledger.set_noise_floor(state.tag, state.noise.std, state.noise.runs)
        self.reporter.noise_floor(state.noise.std, state.noise.runs)

    def _keep_margin(self, state: RunState, options: RunOptions) -> float | None:
        """The gain a candidate's first run must show over the best to be kept (what the agent is told)."""
        if not state.noise.known:
            return options.min_delta or None
        return decide([state.best_metric], state.best_runs or [state.best_metric], state.recipe.direction,
                      state.noise.std, options.keep_rule).margin

    def _restore_noise(self, state: RunState, run: dict, best: dict | None) -> None:
        """On resume: the noise floor from the run's row, the best commit's runs from its decision record."""
        state.noise = NoiseFloor(std=run.get("noise_std"), runs=run.get("noise_runs") or 0)
        state.noise_groups = [list(row["decision"]["metrics"]) for row in self.ledger.experiments(state.tag)
                              if row["outcome"] in ("keep", "discard") and row.get("decision")
                              and len(row["decision"].get("metrics") or ()) > 1]
        if best:
            state.best_runs = list((best.get("decision") or {}).get("metrics") or [best["metric"]])
        if state.noise.runs:
            self.reporter.noise_floor(state.noise.std, state.noise.runs)

    # --- the ledger rows

    def _open_experiment(self, state: RunState, options: RunOptions, **fields) -> int:
        number = state.next_number
        state.next_number += 1
        self.ledger.start_experiment(state.tag, number, seed=options.seed, agent=self.agent.name,
                                     model=getattr(self.agent, "model", None), **fields)
        self.reporter.experiment_started(number)
        return number

    def _interrupt_experiment(self, state: RunState, number: int, reason: str) -> None:
        """An experiment that cannot finish (Ctrl-C, a stop, a bug): its row says so, if it is still open."""
        row = self.ledger.experiment(state.tag, number)
        if row and row["outcome"] == "running":
            self.ledger.update_experiment(state.tag, number, outcome="interrupted", reason=reason[:300],
                                          finished_at=now_iso())

    def _close_experiment(self, state: RunState, number: int, outcome: str, reason: str | None,
                          metric: float | None, trained: Trained | None = None, commit: str | None = None,
                          files: dict[str, str] | None = None, started: float | None = None, **fields) -> None:
        """Write the outcome, then move the branch: to this commit if kept, else back to the best.

        The models of its training runs are deleted then, but for the baseline's and the best's.
        """
        best_before = state.best_metric
        if trained is not None:
            result = trained.result
            fields.update(summary=information_only(result.summary, state.recipe), log_path=str(result.log_path),
                          train_seconds=result.seconds, log_tail=failure_tail(trained) if outcome != "keep" else None,
                          evaluation=None if trained.evaluation is None else trained.evaluation.values)
        record = self.ledger.keep_experiment if outcome == "keep" else partial(self.ledger.update_experiment,
                                                                               outcome=outcome)
        record(state.tag, number, reason=reason, metric=metric, best_before=best_before, finished_at=now_iso(),
               total_seconds=None if started is None else time.monotonic() - started, **fields)
        if files is not None:
            state.seen_hashes.setdefault(editable_digest(state.recipe, files), number)
        if outcome == "keep":
            state.best_commit = commit or state.best_commit
            state.best_number = number
            state.best_metric = metric
            state.best_runs = list((fields.get("decision") or {}).get("metrics") or [metric])
            if state.baseline_metric is None:
                state.baseline_metric = metric
        self._rewind(state)
        self._settle_models(state.tag)
        row = self.ledger.experiment(state.tag, number)
        self._write_results_tsv(state)
        self.reporter.experiment_finished({**row, "metric_name": state.recipe.metric}, state.best_metric,
                                          state.baseline_metric)

    def _rewind(self, state: RunState) -> None:
        if state.worktree.head_commit() != state.best_commit:
            state.worktree.reset_hard(state.best_commit)

    def _write_results_tsv(self, state: RunState) -> None:
        """runs/<tag>/results.tsv, written afresh from the ledger (never appended to: nothing else writes it)."""
        path = self.workspace.run_dir(state.tag) / RESULTS_FILE
        lines = [f"commit\t{state.recipe.metric}\tmemory_gb\tstatus\tdescription\n"]
        for row in self.ledger.experiments(state.tag, ("commit_sha", "metric", "summary_json", "outcome", "description")):
            if row["outcome"] == "running":
                continue
            memory_mb = row["summary"].get("peak_memory_mb") or 0.0
            metric = row["metric"] if row["metric"] is not None else 0.0
            description = (row.get("description") or "").replace("\t", " ").replace("\n", " ")
            lines.append(f"{(row['commit_sha'] or '-')[:7]}\t{metric:.6f}\t{memory_mb / 1024:.1f}\t{row['outcome']}"
                         f"\t{description}\n")
        staging = path.with_name(path.name + ".writing")
        try:
            staging.write_text("".join(lines))
            os.replace(staging, path)
        except OSError as exc:
            self.reporter.note(f"could not write {path}: {exc.strerror or exc}")

    def _settle_models(self, tag: str) -> None:
        """Keep the saved models of the baseline's and the best's first runs; delete every other one.

        `verify` evaluates those two on the test split; the others are not needed once decided, and a
        model can be large. Each deleted model's size and sha256 stay in the ledger.
        """
        kept = self.ledger.experiments(tag, ("number",), outcome="keep")
        keep = {(kept[0]["number"], 0), (best_row(self.ledger.run(tag), kept)["number"], 0)} if kept else set()
        for run in self.ledger.training_runs(tag):
            if run.get("model_path") and run["outcome"] != "running" and (run["experiment"], run["attempt"]) not in keep:
                shutil.rmtree(run["model_path"], ignore_errors=True)
                self.ledger.forget_model(run["id"])

    # --- what the agent is shown

    def _read_files(self, state: RunState, names: tuple[str, ...]) -> dict[str, str]:
        return {name: (state.recipe_dir / name).read_text() for name in names}

    def _read_program(self) -> str:
        """program.md afresh; if the person removed or emptied it mid-run, the last good text serves."""
        try:
            self.program = self.workspace.read_program()
        except UserError as exc:
            self.reporter.note(f"{exc}; using the last version read")
        return self.program

    def _lineage(self, tag: str, rows: list[dict]) -> tuple[LineageEntry, ...]:
        """The closed experiments as the agent sees them (rows: the run's experiments in order)."""
        direction = self.ledger.run(tag)["direction"]
        return tuple(LineageEntry(number=row["number"], outcome=row["outcome"], reason=row["reason"],
                                  metric=row["metric"], gain=gain_or_none(row["metric"], row["best_before"], direction),
                                  description=row["description"] or "", log_tail=row["log_tail"] or "",
                                  diff=row["diff"] or "")
                     for row in rows if row["outcome"] != "running")

    def _standing(self, state: RunState, rows: list[dict]) -> dict:
        """The baseline and the best with their training numbers, the best's whole diff and its log's end."""
        kept = [row for row in rows if row["outcome"] == "keep"]
        if not kept:
            return {}
        baseline, best = kept[0], best_row(self.ledger.run(state.tag), kept)
        diff = ""
        if best["number"] != baseline["number"] and baseline["commit_sha"] and best["commit_sha"]:
            key = (baseline["commit_sha"], best["commit_sha"])
            if self._best_diff[0] != key:
                self._best_diff = (key, state.worktree.diff(*key, state.recipe_path))
            diff = self._best_diff[1]
        return {"baseline": Standing(baseline["number"], baseline["metric"], baseline.get("summary") or {}),
                "best": Standing(best["number"], best["metric"], best.get("summary") or {}),
                "best_diff": diff, "best_log_tail": read_log_tail(best["log_path"]) or ""}


class _ActiveClock:
    """The time a run has been going: what earlier invocations recorded, plus this one so far."""

    def __init__(self, ledger: Ledger, tag: str):
        self.ledger, self.tag = ledger, tag
        self.before = ledger.run(tag).get("active_seconds") or 0.0
        self.started = self._recorded_at = time.monotonic()
        self.slots = 1  # trainings it can have at once: the run's duty cycle is measured against them

    def seconds(self) -> float:
        return self.before + time.monotonic() - self.started

    def record(self) -> None:
        """Add this invocation's time since the last record to the run's row."""
        now = time.monotonic()
        self.ledger.add_active_seconds(self.tag, now - self._recorded_at, self.slots)
        self._recorded_at = now


def failure_tail(trained: Trained) -> str:
    """What the ledger and the agent see of a failed training run: its log's tail, then the evaluation's."""
    tail = trained.result.log_tail
    if trained.evaluation is not None and trained.evaluation.outcome is not None and trained.evaluation.log_tail:
        tail = f"{tail}\n[the harness's evaluation of the saved model]\n{trained.evaluation.log_tail}"
    return tail
