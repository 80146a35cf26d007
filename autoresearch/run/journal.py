"""The journal: during a run, the only writer of experiment rows, LLM calls, the noise floor, the best pointer
and the run branch, and so of the run's state.

Every experiment's row is written before it can fail (outcome `running`) and its outcome before the
branch moves, so a crash, a Ctrl-C or a kill at any moment leaves a row to find. A candidate is
committed from git's objects on top of its parent, reachable under refs/autoresearch/<tag>/<n>; the
branch `autoresearch/<tag>` (in its own worktree under runs/<tag>/) only ever points at the best
commit once an experiment is decided. After each outcome, results.tsv is written afresh from the
ledger and the saved models no one needs any more are deleted (their size and hash stay on record).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from autoresearch.agents import LLMCall
from autoresearch.execution.leftovers import remove_tree
from autoresearch.console import Reporter
from autoresearch.guard import editable_digest
from autoresearch.keep import DecisionRecord
from autoresearch.ledger import ENDPOINT_CHECK_ATTEMPT, Ledger, best_row, now_iso
from autoresearch.noise import NoiseFloor
from autoresearch.pricing import LivePrices
from autoresearch.repo import EXPERIMENT_REF_PREFIX
from autoresearch.run.state import Best, RunState
from autoresearch.trainer import Trained, information_only

RESULTS_FILE = "results.tsv"


class Journal:
    """Writes a run's record as it happens; the scheduler tells it what happened, it never decides."""

    def __init__(self, ledger: Ledger, state: RunState, run_dir: Path, reporter: Reporter, prices: LivePrices,
                 agent: str, model: str | None, seed: int):
        self.ledger, self.state, self.run_dir, self.reporter, self.prices = ledger, state, run_dir, reporter, prices
        self.agent, self.model, self.seed = agent, model, seed

    # --- experiment rows

    def open_experiment(self, **fields) -> int:
        """The write-ahead row of the next experiment; returns its number."""
        state = self.state
        number = state.next_number
        state.next_number += 1
        self.ledger.start_experiment(state.tag, number, seed=self.seed, agent=self.agent, model=self.model, **fields)
        self.reporter.experiment_started(number)
        return number

    def update(self, number: int, **fields) -> None:
        """What became known of an open experiment (its description, digest, diff, parent)."""
        self.ledger.update_experiment(self.state.tag, number, **fields)

    def commit(self, number: int, parent: str, changed: dict[str, str], description: str) -> str:
        """The candidate's files committed on top of `parent` from git's objects (the branch does not move) and
        kept reachable under the experiment's ref; its row names the commit."""
        state = self.state
        commit = state.worktree.commit_files(parent, {f"{state.recipe_path}/{name}": content
                                                      for name, content in changed.items()}, description)
        state.worktree.set_ref(f"{EXPERIMENT_REF_PREFIX}{state.tag}/{number}", commit)
        self.update(number, commit_sha=commit)
        return commit

    def interrupt(self, number: int, reason: str, propose_seconds: float | None = None) -> None:
        """An experiment that cannot finish (Ctrl-C, a stop, a bug): its row says so, if it is still open, with the
        time it was proposed for when that is known."""
        row = self.ledger.experiment(self.state.tag, number)
        if row and row["outcome"] == "running":
            proposed = {"propose_seconds": propose_seconds} if propose_seconds is not None and \
                row.get("propose_seconds") is None else {}
            self.update(number, outcome="interrupted", reason=reason[:300], finished_at=now_iso(), **proposed)

    def close(self, number: int, outcome: str, reason: str | None, metric: float | None,
              trained: Trained | None = None, commit: str | None = None, files: dict[str, str] | None = None,
              started: float | None = None, decision: DecisionRecord | None = None, **fields) -> None:
        """Write the outcome, then move the branch: to this commit if kept, else back to the best.

        The models of its training runs are deleted then, but for the baseline's and the best's.
        """
        state = self.state
        best_before = state.best.metric
        if trained is not None:
            result = trained.result
            fields.update(summary=information_only(result.summary, state.recipe), log_path=str(result.log_path),
                          train_seconds=result.seconds, log_tail=failure_tail(trained) if outcome != "keep" else None,
                          evaluation=None if trained.evaluation is None else trained.evaluation.values)
        if decision is not None:
            fields["decision"] = decision.as_dict()
        record = dict(reason=reason, metric=metric, best_before=best_before, finished_at=now_iso(),
                      total_seconds=None if started is None else time.monotonic() - started, **fields)
        if outcome == "keep":
            self.ledger.keep_experiment(state.tag, number, **record)
        else:
            self.ledger.update_experiment(state.tag, number, outcome=outcome, **record)
        if files is not None:
            state.seen_hashes.setdefault(editable_digest(state.recipe, files), number)
        if outcome == "keep":
            runs = tuple(decision.metrics) if decision is not None and decision.metrics else (metric,)
            state.best = Best(commit or state.best.commit, number, metric, runs)
            if state.baseline_metric is None:
                state.baseline_metric = metric
        self.rewind()
        self._settle_models()
        row = self.ledger.experiment(state.tag, number)
        self._write_results_tsv()
        self.reporter.experiment_finished({**row, "metric_name": state.recipe.metric}, state.best.metric,
                                          state.baseline_metric)

    def rewind(self) -> None:
        """The run branch back at the best commit."""
        worktree = self.state.worktree
        if worktree.head_commit() != self.state.best.commit:
            worktree.reset_hard(self.state.best.commit)

    # --- the noise floor

    def refine_noise(self, metrics: list[float], restart: bool = False) -> None:
        """One more commit's metrics under several seeds (with `restart`, the first: the baseline's); the noise
        floor is pooled again and recorded."""
        state = self.state
        state.noise_groups = ([] if restart else state.noise_groups) + [list(metrics)]
        state.noise = NoiseFloor.pooled(state.noise_groups)
        self.ledger.set_noise_floor(state.tag, state.noise.std, state.noise.runs)
        self.reporter.noise_floor(state.noise.std, state.noise.runs)

    # --- LLM calls

    def record_call(self, number: int, call: LLMCall) -> None:
        """Every call goes in the ledger; the reporter hears of the tokens of each answered one (a failed call is
        told by the note that retries it, or by the line that stops the run)."""
        self.ledger.record_llm_call(self.state.tag, number, call.attempt, call.model, call.messages, call.reply,
                                    call.error, call.prompt_tokens, call.completion_tokens, call.latency_seconds,
                                    cached_tokens=call.cached_tokens, finish_reason=call.finish_reason)
        if call.error is not None:
            return
        prompt_tokens, completion_tokens = call.prompt_tokens or 0, call.completion_tokens or 0
        cost = self.prices.table().priced(call.model, prompt_tokens, completion_tokens, call.cached_tokens or 0)
        # the endpoint check is filed under the next experiment's number, but is no part of it yet
        self.reporter.tokens_used(prompt_tokens, completion_tokens, cost, call.cached_tokens or 0,
                                  number=None if call.attempt == ENDPOINT_CHECK_ATTEMPT else number)

    def call_recorder(self, number: int) -> Callable[[LLMCall], None]:
        return lambda call: self.record_call(number, call)

    # --- what follows each outcome

    def _write_results_tsv(self) -> None:
        """runs/<tag>/results.tsv, written afresh from the ledger (never appended to: nothing else writes it)."""
        state = self.state
        path = self.run_dir / RESULTS_FILE
        lines = [f"commit\t{state.recipe.metric}\tmemory_gb\tstatus\tdescription\n"]
        for row in self.ledger.experiments(state.tag, ("commit_sha", "metric", "summary_json", "outcome",
                                                       "description")):
            if row["outcome"] == "running":
                continue
            memory_mb = row["summary"].get("peak_memory_mb") or 0.0
            # No metric is an empty cell: a 0 would rank a timeout best for a lower-is-better metric.
            metric = f"{row['metric']:.6f}" if row["metric"] is not None else ""
            description = (row.get("description") or "").replace("\t", " ").replace("\n", " ")
            lines.append(f"{(row['commit_sha'] or '-')[:7]}\t{metric}\t{memory_mb / 1024:.1f}\t{row['outcome']}"
                         f"\t{description}\n")
        staging = path.with_name(path.name + ".writing")
        try:
            staging.write_text("".join(lines))
            os.replace(staging, path)
        except OSError as exc:
            self.reporter.note(f"could not write {path}: {exc.strerror or exc}")

    def _settle_models(self) -> None:
        """Keep the saved models of the baseline's and the best's first runs; delete every other one.

        `verify` evaluates those two on the test split; the others are not needed once decided, and a
        model can be large. Each deleted model's size and sha256 stay in the ledger.
        """
        tag = self.state.tag
        kept = self.ledger.experiments(tag, ("number",), outcome="keep")
        keep = {(kept[0]["number"], 0), (best_row(self.ledger.run(tag), kept)["number"], 0)} if kept else set()
        for run in self.ledger.training_runs(tag):
            if run.get("model_path") and run["outcome"] != "running" and (run["experiment"], run["attempt"]) not in keep:
                remove_tree(Path(run["model_path"]))  # what a training left: no recursion, no link followed
                self.ledger.forget_model(run["id"])


def failure_tail(trained: Trained) -> str:
    """What the ledger and the agent see of a failed training run: its log's tail, then the evaluation's."""
    tail = trained.result.log_tail
    if trained.evaluation is not None and trained.evaluation.outcome is not None and trained.evaluation.log_tail:
        tail = f"{tail}\n[the harness's evaluation of the saved model]\n{trained.evaluation.log_tail}"
    return tail
