"""A run's session: start a new run or resume one, hold its locks, put it straight, and wire its pieces.

This is the composition root of a run. It checks the settings, takes the run's lock (and the
workspace's training lock), makes the ledger row and the worktree of a new run or puts a resumed one
straight (recovery.reconcile), prepares the recipe's data, chooses the sandbox and the executor (the
only place an executor implementation is chosen), and builds the trainer, the journal, the briefing,
the limits and the proposer, which it hands to the scheduler. Everything an experiment does is theirs.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import replace

from autoresearch.agents import Agent
from autoresearch.console import Reporter
from autoresearch.errors import InvalidSetting, StopRun, UserError
from autoresearch.evaluation import HarnessFiles, prepare_data
from autoresearch.execution.contention import busy_machine_line
from autoresearch.execution.jobs import Executor, Slot
from autoresearch.execution.local import LocalExecutor
from autoresearch.execution.sandbox import choose_sandbox
from autoresearch.ledger import Ledger, now_iso
from autoresearch.pricing import LivePrices
from autoresearch.proposer import Proposer
from autoresearch.recipe import check_tunables, load_recipe
from autoresearch.recovery import reconcile, run_marker
from autoresearch.repo import RUN_BRANCH_PREFIX, Repo
from autoresearch.review import run_usage
from autoresearch.run.briefing import Briefing
from autoresearch.run.journal import Journal
from autoresearch.run.limits import ActiveClock, Limits, check_caps, experiments_done
from autoresearch.run.scheduler import Scheduler
from autoresearch.run.state import Best, RunState, RunSummary, rebuild_state
from autoresearch.runlock import RunLock, WorkspaceLock
from autoresearch.settings import RunOptions, check_options, override_records, run_slots, stored_settings
from autoresearch.trainer import SCRATCH_DIR, RunContext, Trainer
from autoresearch.workspace import Workspace, check_tag

WORKTREE_DIR = "worktree"
PREPARE_LOG = "prepare.log"


def executor_for(options: RunOptions) -> Executor:
    """The executor a run's options name (settings.RunOptions.executor); Ray is imported only when it is named."""
    if options.executor == "ray":
        from autoresearch.execution.ray import RayExecutor

        return RayExecutor(options.ray_address, require_sandbox=options.sandbox == "on")
    return LocalExecutor()


class Session:
    """Runs experiments for one run of one workspace: `start` a new run, `resume` one, or `put_straight` one."""

    def __init__(self, workspace: Workspace, agent: Agent, reporter: Reporter | None = None,
                 executor: Executor | None = None, ledger: Ledger | None = None):
        self.workspace = workspace
        self.agent = agent
        self.reporter = reporter or Reporter()
        self.executor = executor  # None: the one the run's options name (executor_for), once they are known
        self.ledger = ledger or Ledger(workspace.ledger_path)
        self.prices = LivePrices(workspace.root, self.reporter.note)
        self.tag: str | None = None
        self._program = ""
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
            self._release_locks()
            raise

    def _new_run(self, options: RunOptions) -> tuple[RunState, RunOptions]:
        check_options(options)
        self.executor = self.executor or executor_for(options)
        workspace = self.workspace
        self._program = workspace.read_program()
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
        check_caps(options, self.prices, getattr(self.agent, "model", None))
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
                         recipe=load_recipe(worktree.root / recipe_path), budget_seconds=budget,
                         best=Best(base_commit))
        return state, options

    def _resumed_run(self, tag: str, options: RunOptions) -> tuple[RunState, RunOptions]:
        check_options(options)
        self.executor = self.executor or executor_for(options)
        self.tag = check_tag(tag)
        self._program = self.workspace.read_program()
        check_caps(options, self.prices, getattr(self.agent, "model", None))
        worktree, run = self.put_straight(tag, options)
        if not any(row["outcome"] == "keep" for row in self.ledger.experiments(tag, ("outcome",))):
            run = self._rebase_without_baseline(run, worktree)
        budget = options.budget_seconds or run["budget_seconds"]
        config = stored_settings(replace(options, budget_seconds=budget))
        config["overrides"] = run["config"].get("overrides", []) + override_records(options, now_iso())
        self.ledger.set_run_config(tag, config)
        state = rebuild_state(self.ledger, run, worktree, load_recipe(worktree.root / run["recipe"]), budget)
        if state.noise.runs:
            self.reporter.noise_floor(state.noise.std, state.noise.runs)
        worktree.reset_hard(state.best.commit)
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
            self._release_locks()
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
        self._release_locks()

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

    def _release_locks(self) -> None:
        while self._locks:
            self._locks.pop().release()

    # --- the loop

    def _loop(self, state: RunState, options: RunOptions) -> RunSummary:
        recipe = state.recipe
        self.tag = state.tag
        described = self.agent.describe()
        self.reporter.run_started(state.tag, recipe.name, recipe.metric, recipe.direction, state.budget_seconds,
                                  f"{self.agent.name} ({described})" if described else self.agent.name)
        if busy := busy_machine_line():
            self.reporter.note(busy)
        spent = run_usage(self.ledger, state.tag, self.prices.table())
        if spent["prompt_tokens"] or spent["completion_tokens"]:  # a resumed run: what it spent before
            self.reporter.tokens_used(spent["prompt_tokens"], spent["completion_tokens"], spent["cost_usd"],
                                      spent["cached_tokens"])
        clock = ActiveClock(self.ledger, state.tag)
        limits = Limits(self.ledger, state, options, clock, self.prices)
        journal = Journal(self.ledger, state, self.workspace.run_dir(state.tag), self.reporter, self.prices,
                          self.agent.name, getattr(self.agent, "model", None), options.seed)
        proposer = Proposer(self.agent, options.max_agent_failures, options.agent_backoff_seconds, self.reporter.note)
        try:
            stop_reason = limits.reached() or ""
            if not stop_reason:
                # before anything trains: a wrong URL, key or model costs no training
                proposer.check(journal.call_recorder(state.next_number))
                if proposer.edit_format is not None:
                    self.reporter.edit_format(state.tag, *proposer.edit_format)
                trainer, slots, draft_ahead = self._make_trainer(state, options, proposer.shares_with)
                clock.record()
                clock.slots = len(slots)
                self.reporter.limits(options.max_experiments, experiments_done(self.ledger, state.tag),
                                     None if options.hours is None else options.hours * 3600 - clock.seconds(),
                                     slots=len(slots))
                briefing = Briefing(self.workspace, self.ledger, state, self._program, options.keep_rule,
                                    options.prompt_tokens, self.reporter.note)
                stop_reason = Scheduler(state, journal, briefing, limits, proposer, options.keep_rule, trainer,
                                        self.reporter, slots, draft_ahead, seed=options.seed,
                                        noise_runs=options.noise_runs, confirm_runs=options.confirm_runs).run()
        except KeyboardInterrupt:
            self.ledger.set_run_status(state.tag, "interrupted")
            raise
        except StopRun as exc:
            self.ledger.set_run_status(state.tag, "stopped")
            raise StopRun(f"run {state.tag} stopped: {exc}", exc.remedy, exc.baseline_failed, exc.cause) from None
        except BaseException:
            self.ledger.set_run_status(state.tag, "failed")
            raise
        finally:
            clock.record()
            self.executor.close()  # on a cluster: every worker of this invocation is given back
            self._release_locks()
        self.ledger.set_run_status(state.tag, "finished")
        rows = self.ledger.experiments(state.tag, ("outcome",))
        keeps = sum(row["outcome"] == "keep" for row in rows)
        return RunSummary(tag=state.tag, experiments=len(rows), counted=experiments_done(self.ledger, state.tag),
                          kept_changes=max(0, keeps - 1),
                          best_metric=state.best.metric, baseline_metric=state.baseline_metric,
                          direction=state.recipe.direction, stop_reason=stop_reason)

    def _make_trainer(self, state: RunState, options: RunOptions,
                      model_server_shares: Callable[[list[str | None]], str | None]
                      ) -> tuple[Trainer, list[Slot], bool]:
        """The harness's side of every training of this invocation: the data prepared, what to hide, the sandbox;
        the slots, and whether proposals are drafted ahead: only where the sandbox holds, and, unless the
        setting forces it, not where the model server is on this machine and computes on what the trainings use
        (`model_server_shares` of the slots' devices: this machine's CPU, or a GPU of theirs): a prefill of
        thousands of tokens would take the training's cores, and a fixed-time training would buy fewer steps,
        or time out."""
        run = self.ledger.run(state.tag)
        run_dir = self.workspace.run_dir(state.tag)
        context = RunContext(tag=state.tag, recipe=state.recipe, recipe_path=state.recipe_path,
                             repo_root=self.workspace.git_root, base_commit=run["base_commit"], run_dir=run_dir,
                             budget_seconds=state.budget_seconds, marker=run_marker(run_dir), worktree=state.worktree)
        if state.recipe.prepare:
            self.reporter.note(f"run {state.tag}: preparing the data ({state.recipe.prepare})")
        with HarnessFiles(context.repo_root, context.base_commit, context.recipe_path, state.recipe,
                          run_dir / SCRATCH_DIR) as folder:
            data = prepare_data(self.executor, state.recipe, folder, run_dir / PREPARE_LOG, context.marker,
                                progress=lambda line: self.reporter.note(f"run {state.tag}: prepare: {line}"))
        sandbox = choose_sandbox(options.sandbox, self.workspace.git_root, data)
        if sandbox.problem:
            self.reporter.note(f"run {state.tag}: {sandbox.problem}")
        context.sandbox, context.sandbox_level = sandbox.policy, sandbox.level
        self.ledger.set_run_sandbox(state.tag, context.sandbox_level)
        slots = run_slots(options, self.executor.offered_slots())
        draft_ahead = options.draft_ahead is not False
        if draft_ahead and options.draft_ahead is None and options.executor == "local" and sandbox.policy is not None:
            shared = model_server_shares([slot.device for slot in slots])
            if shared:
                draft_ahead = False
                self.reporter.serial_beside_local_model(state.tag, getattr(self.agent, "base_url", ""), shared)
        if sandbox.policy is None and (len(slots) > 1 or draft_ahead):
            if len(slots) > 1:
                raise InvalidSetting("slots", f"is {len(slots)}, but several trainings at once need the sandbox: "
                                              "without it the check of the record after each training cannot tell "
                                              "what a training wrote from what the tool wrote meanwhile")
            draft_ahead = False  # the same reason: the tool writes nothing while a training runs unsandboxed
        return Trainer(context, self.ledger, self.executor, self.reporter), slots, draft_ahead
