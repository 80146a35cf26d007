"""`autoresearch verify`: do a run's gains hold on new seeds, and on a test split no experiment saw?

The run's baseline commit and its best commit are trained again, N new seeds each (seeds the run
never used), each from a fresh copy of its commit, and the harness evaluates every saved model on
validation and on the held-out test split, which no training and no experiment ever saw (only this
command asks the evaluation for it). The two commits alternate seed by seed, so a machine that slows
down during the night hurts both alike. The models the run itself saved of its baseline and its best
are scored on the test split too (`own baseline`, `own best` in the record).

For validation and for test, the gain of the best over the baseline comes with a 95% Student t
interval on the pooled spread of the two commits (`noise.gain_interval` says why not Welch's), and
one verdict says what they mean together:

- `holds`: the gain is real on validation and on test;
- `overfit`: real on validation, but on test it is gone or less than half as large with an interval
  that includes zero: the kept changes fit the validation split rather than the task;
- `inconclusive`: real on validation, about as large on test but not yet certain there (more seeds);
- `unconfirmed`: on new seeds the gain on validation is positive but its interval includes zero;
- `noise`: on new seeds there is no gain even on validation: the kept changes were seed luck;
- `failed`: too few trainings succeeded to say (two per commit are needed).

Each verification is stored in the ledger (`verifications`), with every training's seed and numbers.
It holds the run's lock while it trains (a run going on, or another verify of it, is refused), and
its trainings carry the run's marker: whatever a killed verify leaves running is stopped by the next
verify or `run --resume`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from autoresearch.errors import UserError
from autoresearch.ledger import Ledger, best_row
from autoresearch.console import Reporter
from autoresearch.evaluation import HarnessFiles, prepare_data, scored_metric, write_recipe_files
from autoresearch.execution.jobs import RUN_MARKER, Executor
from autoresearch.execution.leftovers import remove_tree
from autoresearch.execution.local import LocalExecutor
from autoresearch.execution.processes import stop_processes_marked
from autoresearch.noise import CONFIDENCE, GainInterval, gain_interval, verify_seed
from autoresearch.recipe import load_recipe
from autoresearch.recovery import run_marker
from autoresearch.runlock import RunLock, WorkspaceLock
from autoresearch.trainer import SCRATCH_DIR, RunContext, Trained, Trainer, TrainingRequest
from autoresearch.workspace import Workspace

DEFAULT_SEEDS = 3
VERIFY_DIR = "verify"
ROLES = ("baseline", "best")


@dataclass(frozen=True)
class Verification:
    """What one `verify` found."""

    id: int
    tag: str
    baseline_commit: str
    best_commit: str
    metric: str
    test_metric: str
    direction: str
    seeds: list[int]
    runs: list[dict]
    val: GainInterval | None
    test: GainInterval | None
    verdict: str
    message: str


def verify_run(workspace: Workspace, ledger: Ledger, tag: str, seeds: int = DEFAULT_SEEDS,
               executor: Executor | None = None, on_progress: Callable[[str], None] | None = None,
               budget_seconds: float | None = None, allow_concurrent: bool = False) -> Verification:
    """Train the run's baseline and best commits with `seeds` new seeds each, on validation and test; record it.

    Like a run, it trains only when nothing else trains in the workspace, unless `allow_concurrent`.
    """
    if seeds < 2:
        raise UserError("--seeds must be at least 2: an interval needs two trainings of each commit")
    run = ledger.run(tag)
    if run is None:
        raise UserError(f"no run tagged {tag!r}; `autoresearch runs` lists them")
    kept = [row for row in ledger.experiments(tag) if row["outcome"] == "keep"]
    if not kept:
        raise UserError(f"run {tag} has no baseline yet: nothing to verify")
    if len(kept) == 1:
        raise UserError(f"run {tag} kept no change over its baseline: nothing to verify")
    locks = [] if allow_concurrent else [WorkspaceLock(workspace.runs_dir).acquire(f"verify of run {tag}")]
    try:
        locks.append(RunLock(workspace.run_dir(tag), tag).acquire())
        return _verify_locked(workspace, ledger, run, kept, seeds, executor, on_progress, budget_seconds)
    finally:
        for lock in reversed(locks):
            lock.release()


def _verify_locked(workspace: Workspace, ledger: Ledger, run: dict, kept: list[dict], seeds: int,
                   executor: Executor | None, on_progress: Callable[[str], None] | None,
                   budget_seconds: float | None) -> Verification:
    tag = run["tag"]
    run_dir = workspace.run_dir(tag)
    marker = run_marker(run_dir)
    stop_processes_marked(RUN_MARKER, marker)  # what a killed verify or run of this tag left behind
    baseline_commit, best_commit = kept[0]["commit_sha"], best_row(run, kept)["commit_sha"]
    progress = on_progress or (lambda text: None)
    executor = executor or LocalExecutor()
    earlier = sum(len(v["seeds"]) for v in ledger.verifications(tag))
    run_seed = int(run["config"].get("seed", 0))
    chosen_seeds = [verify_seed(run_seed, earlier + index) for index in range(seeds)]
    number = len(ledger.verifications(tag)) + 1
    folder = run_dir / VERIFY_DIR / str(number)
    remove_tree(folder)  # left by a verify that was killed
    recipe_copy = run_dir / SCRATCH_DIR / f"verify-recipe-{number}"
    remove_tree(recipe_copy)
    try:
        recipe = load_recipe(write_recipe_files(workspace.git_root, run["base_commit"], run["recipe"], None,
                                                recipe_copy))
        if not recipe.test_metric:
            raise UserError(f"the recipe {run['recipe']} names no test_metric in recipe.yaml, so it cannot measure "
                            "the test split (see docs/recipe-contract.md)")
        budget = budget_seconds or run["budget_seconds"]
        context = RunContext(tag=tag, recipe=recipe, recipe_path=run["recipe"], repo_root=workspace.git_root,
                             base_commit=run["base_commit"], run_dir=folder, budget_seconds=budget, marker=marker)
        trainer = Trainer(context, ledger, executor, Reporter(), record=False)
        with HarnessFiles(workspace.git_root, run["base_commit"], run["recipe"], recipe, folder / SCRATCH_DIR) as fixed:
            prepare_data(executor, recipe, fixed, folder / "prepare.log", marker)
        own = _own_models(trainer, ledger, tag, kept, progress)
        runs = []
        total = 2 * seeds
        for index, seed in enumerate(chosen_seeds):
            for role, commit in zip(ROLES, (baseline_commit, best_commit)):
                progress(f"training {len(runs) + 1} of {total}: the {role} commit {commit[:7]}, seed {seed}")
                request = TrainingRequest(number=number, attempt=len(runs), kind=role, seed=seed, commit=commit,
                                          description=f"verify {role}", name=f"{role}-{index}")
                runs.append(_training(trainer.train(request, also_test=True), role, commit, seed, recipe))
    finally:
        remove_tree(recipe_copy)
    val = _interval(runs, "metric", run["direction"])
    test = _interval(runs, "test_metric", run["direction"])
    verdict, message = judge(val, test, runs)
    fields = {"baseline_commit": baseline_commit, "best_commit": best_commit, "metric": recipe.metric,
              "test_metric": recipe.test_metric, "confidence": CONFIDENCE, "seeds": chosen_seeds,
              "runs": own + runs, "verdict": verdict, "message": message}
    for name, interval in (("val", val), ("test", test)):
        if interval is not None:
            fields.update({f"{name}_gain": interval.gain, f"{name}_low": interval.low, f"{name}_high": interval.high})
    verification_id = ledger.record_verification(tag, **fields)
    return Verification(id=verification_id, tag=tag, baseline_commit=baseline_commit, best_commit=best_commit,
                        metric=recipe.metric, test_metric=recipe.test_metric, direction=run["direction"],
                        seeds=chosen_seeds, runs=own + runs, val=val, test=test, verdict=verdict, message=message)


def _own_models(trainer: Trainer, ledger: Ledger, tag: str, kept: list[dict],
                progress: Callable[[str], None]) -> list[dict]:
    """The run's own saved models of the baseline and the best, evaluated by the harness on the test split."""
    found = []
    for role, row in zip(ROLES, (kept[0], best_row(ledger.run(tag), kept))):
        first = next((r for r in ledger.training_runs(tag, row["number"]) if r["attempt"] == 0), None)
        if first is None or not first.get("model_path") or not Path(first["model_path"]).is_dir():
            continue
        progress(f"the run's own {role} model (experiment {row['number']}) on the test split")
        evaluation = trainer.evaluate(Path(first["model_path"]), "test", f"own-{role}.test")
        outcome, reason, value = scored_metric(evaluation, trainer.metric_name("test"))
        found.append({"role": f"own {role}", "commit": row["commit_sha"], "seed": first["seed"],
                      "outcome": outcome or "ok", "reason": reason, "metric": first["metric"],
                      "test_metric": value, "seconds": evaluation.seconds, "log_path": str(evaluation.log_path),
                      "model_sha256": first.get("model_sha256")})
    return found


def _training(trained: Trained, role: str, commit: str, seed: int, recipe) -> dict:
    """One verify training as the ledger keeps it: its validation and test numbers from the harness."""
    outcome, reason = trained.outcome, trained.reason
    test_value = None
    if outcome is None:
        test_outcome, test_reason, test_value = scored_metric(trained.evaluation, recipe.test_metric)
        outcome, reason = test_outcome, test_reason
    return {"role": role, "commit": commit, "seed": seed, "outcome": outcome or "ok", "reason": reason,
            "metric": trained.metric if outcome is None else None, "test_metric": test_value if outcome is None else None,
            "seconds": trained.result.seconds, "log_path": str(trained.result.log_path)}


def _interval(runs: list[dict], key: str, direction: str) -> GainInterval | None:
    by_role = {role: [r[key] for r in runs if r["role"] == role and r["outcome"] == "ok"] for role in ROLES}
    return gain_interval(by_role["baseline"], by_role["best"], direction)


def judge(val: GainInterval | None, test: GainInterval | None, runs: list[dict] | None = None) -> tuple[str, str]:
    """The verdict and one plain sentence for it (see the module docstring)."""
    if val is None or test is None:
        failed = [r for r in runs or [] if r["outcome"] != "ok"]
        first = f"; first failure: {failed[0]['role']} seed {failed[0]['seed']}: {failed[0]['reason']}" if failed else ""
        return "failed", f"too few trainings succeeded to compute an interval (two per commit are needed){first}"
    if val.gain <= 0:
        return "noise", "the gain is gone on new seeds, even on validation: the kept changes were seed luck"
    if not val.excludes_zero:
        return "unconfirmed", ("on new seeds the validation gain's interval includes zero: it may be seed luck; "
                               "verify again with more --seeds to tell")
    if test.excludes_zero:
        smaller = ", though less than half as large as on validation" if test.gain < val.gain / 2 else ""
        return "holds", f"the gain holds on the test split{smaller}"
    if test.gain <= val.gain / 2:
        return "overfit", ("the gain is real on validation but not on the test split: it looks like overfitting "
                           "to validation")
    return "inconclusive", ("the gain is real on validation and about as large on test, but not certain there yet: "
                            "verify again with more --seeds")


def format_interval(interval: GainInterval) -> str:
    """`gain +0.0123 (95% CI +0.0051 to +0.0195)`."""
    return f"gain {interval.gain:+.4g} (95% CI {interval.low:+.4g} to {interval.high:+.4g})"
