"""What the LLM agent is told: the tool, the reply contract, program.md, the recipe and the lineage.

The lineage is what earlier experiments found: outcome (typed, with its reason), metric, delta
against the best before it and description for the most recent ones, and the log tail of recent
failures, so the agent repairs near-misses instead of repeating them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from autoresearch.recipe import Recipe

LINEAGE_ROWS = 20
FAILURE_TAILS = 3
FAILURE_TAIL_LINES = 15

SYSTEM_PROMPT = """\
You are the research agent of autoresearch, a tool that runs machine-learning experiments overnight.
Each experiment: you propose ONE change to the editable files of a training recipe; the tool commits
it, trains for a fixed wall-clock budget, measures the validation metric with evaluation code you
cannot change, and keeps the change if the metric improved by more than the run-to-run noise, or
reverts it if not. You see what earlier experiments found; learn from them, do not repeat
failures, and prefer changes with a clear hypothesis. The training time is fixed, so a change that
makes each step slower must earn it.

Answer in exactly this form:

DESCRIPTION: one line saying what the change is (it becomes the commit message)
(your reasoning, briefly)
train.py
<<<<<<< SEARCH
exact lines copied from the current file
=======
the lines that replace them
>>>>>>> REPLACE

The line before each block names the file it edits. Several blocks may follow each other. The
SEARCH part must match the current file exactly (copy whole lines) and must be unique in it. Only
the editable files may be changed; the random seed is set by the tool, not by you: an edit that
reads, sets or removes a seed is refused."""


@dataclass(frozen=True)
class LineageEntry:
    """One earlier experiment as the agent sees it."""

    number: int
    outcome: str
    reason: str | None
    metric: float | None
    delta: float | None
    description: str
    log_tail: str = ""


@dataclass(frozen=True)
class AgentContext:
    """Everything an agent needs to propose the next experiment."""

    number: int
    program: str
    recipe: Recipe
    budget_seconds: float
    files: dict[str, str]
    lineage: tuple[LineageEntry, ...] = ()
    best_metric: float | None = None
    baseline_metric: float | None = None
    seen_hashes: frozenset[str] = field(default_factory=frozenset)
    noise_std: float | None = None  # run-to-run spread of the metric across seeds (docs/noise.md)
    noise_runs: int = 0
    keep_margin: float | None = None  # the gain a first run must show over the best to be kept


def build_messages(context: AgentContext) -> list[dict]:
    """The chat messages for one proposal."""
    recipe = context.recipe
    better = "lower" if recipe.direction == "lower" else "higher"
    sections = [
        "# Research direction (program.md)\n\n" + (context.program.strip() or "(empty)"),
        "# The recipe\n\n"
        f"- metric: {recipe.metric} ({better} is better)\n"
        f"- training budget: {context.budget_seconds:g} seconds of wall clock\n"
        f"- editable files: {', '.join(recipe.editable)}\n"
        f"- fixed files (data and evaluation, cannot be changed): {', '.join(recipe.fixed)}\n"
        + (f"- baseline {recipe.metric}: {context.baseline_metric:.6g}\n" if context.baseline_metric is not None else "")
        + (f"- best {recipe.metric} so far: {context.best_metric:.6g}\n" if context.best_metric is not None else "")
        + format_noise(context),
        "# Experiments so far\n\n" + format_lineage(context.lineage),
    ]
    failures = format_failures(context.lineage)
    if failures:
        sections.append("# Recent failures, with the end of their logs\n\n" + failures)
    for name in recipe.editable:
        sections.append(f"# Current {name}\n\n```python\n{context.files.get(name, '')}\n```")
    sections.append(f"# Your task\n\nPropose experiment {context.number}: one change that you expect to make "
                    f"{recipe.metric} {better}. Answer in the required form.")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(sections)}]


def format_noise(context: AgentContext) -> str:
    """The noise floor as the agent is told it: gains below it are seed luck and are not kept."""
    if context.noise_std is None or context.noise_std <= 0:
        return ""
    metric = context.recipe.metric
    margin = (f" A change is kept only when it beats the best by more than {context.keep_margin:.3g} and the gain "
              "holds on other seeds (the tool re-runs it with new seeds)." if context.keep_margin is not None else "")
    return (f"- run-to-run noise: the unmodified recipe's {metric} varies by {context.noise_std:.3g} (standard "
            f"deviation over {context.noise_runs} seeds); a smaller difference is seed luck, not progress.{margin}\n")


def format_lineage(lineage: tuple[LineageEntry, ...]) -> str:
    if not lineage:
        return "None yet."
    rows = ["| # | outcome | metric | delta vs best before | description |", "|---|---|---|---|---|"]
    for entry in lineage[-LINEAGE_ROWS:]:
        outcome = f"{entry.outcome}: {entry.reason}" if entry.reason else entry.outcome
        metric = f"{entry.metric:.6g}" if entry.metric is not None else "-"
        delta = f"{entry.delta:+.4g}" if entry.delta is not None else "-"
        rows.append(f"| {entry.number} | {outcome} | {metric} | {delta} | {entry.description} |")
    hidden = len(lineage) - LINEAGE_ROWS
    if hidden > 0:
        rows.insert(0, f"({hidden} earlier experiments are not listed.)")
    return "\n".join(rows)


def format_failures(lineage: tuple[LineageEntry, ...]) -> str:
    failed = [e for e in lineage if e.outcome in ("crash", "timeout") and e.log_tail][-FAILURE_TAILS:]
    parts = []
    for entry in failed:
        tail = "\n".join(entry.log_tail.splitlines()[-FAILURE_TAIL_LINES:])
        parts.append(f"Experiment {entry.number} ({entry.outcome}: {entry.reason or 'no reason'}): "
                     f"{entry.description}\n```\n{tail}\n```")
    return "\n\n".join(parts)


def repair_message(error: str) -> dict:
    """What the agent is told when its reply could not be applied."""
    return {"role": "user", "content": f"Your reply could not be applied: {error}\n\n"
                                       "Answer again in the required form, with SEARCH parts copied exactly "
                                       "from the current file."}
