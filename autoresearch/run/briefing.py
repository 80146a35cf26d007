"""What the agent is shown for one proposal, gathered from the run: program.md afresh, the files, the standing,
the lineage, the notes, the hardware and what is in flight.

How it is laid out and fitted into the prompt budget is prompts.py's; this module only decides what
goes in. Nothing a training produced on the held-out split reaches it: the lineage carries outcomes,
metrics, gains, descriptions, diffs and the tails of failed trainings' logs (quoted by prompts.py).
"""

from __future__ import annotations

from typing import Callable

from autoresearch.errors import UserError
from autoresearch.gains import gain_or_none
from autoresearch.hardware import describe_hardware
from autoresearch.keep import KeepRule, keep_margin
from autoresearch.ledger import Ledger, best_row
from autoresearch.prompts import AgentContext, LineageEntry, Note, Standing
from autoresearch.review import read_log_tail
from autoresearch.run.state import RunState
from autoresearch.workspace import Workspace


class Briefing:
    """Builds each proposal's AgentContext; holds the last good program.md and the best's diff while it stands."""

    def __init__(self, workspace: Workspace, ledger: Ledger, state: RunState, program: str, rule: KeepRule,
                 token_budget: int, note: Callable[[str], None]):
        self.workspace, self.ledger, self.state = workspace, ledger, state
        self.program, self.rule, self.token_budget, self.note = program, rule, token_budget, note
        self._best_diff: tuple[tuple[str, str] | None, str] = (None, "")  # (baseline, best) and their diff
        self._hardware: str | None = None  # described once, at the first proposal

    def context(self, number: int, files: dict[str, str], in_flight: tuple[str, ...] = (),
                also_seen: frozenset[str] = frozenset()) -> AgentContext:
        """What experiment `number` is drafted from: `files` (the best's), the experiments `in_flight` (each in
        one line), and the digests of the files they train (`also_seen`: proposing one again is a duplicate)."""
        state = self.state
        rows = [row for row in self.ledger.experiments(state.tag) if row["outcome"] != "running"]
        if self._hardware is None:
            self._hardware = describe_hardware()
        return AgentContext(number=number, program=self.read_program(), recipe=state.recipe,
                            budget_seconds=state.budget_seconds, files=files, lineage=self.lineage(rows),
                            best_metric=state.best.metric, baseline_metric=state.baseline_metric,
                            seen_hashes=frozenset(state.seen_hashes) | also_seen,
                            noise_std=state.noise.std, noise_runs=state.noise.runs, keep_margin=self.keep_margin(),
                            token_budget=self.token_budget, in_flight=in_flight, hardware=self._hardware,
                            notes=tuple(Note(row["number"], row["notes"]) for row in rows if row.get("notes")),
                            **self.standing(rows))

    def keep_margin(self) -> float | None:
        """The gain a candidate's first run must show over the best to be kept, as the agent and the person read it."""
        state = self.state
        if not state.best.measured:
            return self.rule.min_delta or None
        return keep_margin(state.best.run_metrics(), state.recipe.direction, state.noise, self.rule)

    def read_program(self) -> str:
        """program.md afresh; if the person removed or emptied it mid-run, the last good text serves."""
        try:
            self.program = self.workspace.read_program()
        except UserError as exc:
            self.note(f"{exc}; using the last version read")
        return self.program

    def lineage(self, rows: list[dict]) -> tuple[LineageEntry, ...]:
        """The closed experiments as the agent sees them (rows: the run's experiments in order).

        What a later success made stale is left out: the log and reason of a baseline that failed before a
        baseline was kept (the recipe was fine; the machine or a fix made the difference), and the reason of an
        interrupted experiment (the person's or the tool's stop, with paths of this machine: nothing about the
        change)."""
        direction = self.state.recipe.direction
        kept_baseline = next((row["number"] for row in rows if row["outcome"] == "keep"
                              and row.get("parent_number") is None), None)
        entries = []
        for row in rows:
            if row["outcome"] == "running":
                continue
            stale = row["outcome"] == "interrupted" or (
                kept_baseline is not None and row["number"] < kept_baseline and row.get("parent_number") is None)
            entries.append(LineageEntry(number=row["number"], outcome=row["outcome"],
                                        reason=None if stale else row["reason"], metric=row["metric"],
                                        gain=gain_or_none(row["metric"], row["best_before"], direction),
                                        description=row["description"] or "",
                                        log_tail="" if stale else row["log_tail"] or "", diff=row["diff"] or ""))
        return tuple(entries)

    def standing(self, rows: list[dict]) -> dict:
        """The baseline and the best with their training numbers, the best's whole diff and its log's end."""
        kept = [row for row in rows if row["outcome"] == "keep"]
        if not kept:
            return {}
        state = self.state
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
