"""What the LLM agent is told: the tool, the reply contract, program.md, the recipe and the lineage.

The lineage is what earlier experiments found: outcome (typed, with its reason), metric, gain
over the best before it and description for the most recent ones, and the log tail of recent
failures, so the agent repairs near-misses instead of repeating them.

The prompt stays within a token budget however long the run is: what grows with the run (the
lineage and the failures' logs) gets the budget left after the fixed parts; the most recent
experiments are listed one by one and the older ones summarised (counts by outcome and reason, the
best kept changes). When even that is too long, fewer rows and shorter log tails are shown.
Tokens are estimated at four characters each, which is close enough for a budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from autoresearch.recipe import Recipe

LINEAGE_ROWS = 20
FAILURE_TAILS = 3
FAILURE_TAIL_LINES = 15
PROMPT_TOKEN_BUDGET = 12_000
CHARS_PER_TOKEN = 4
MIN_HISTORY_TOKENS = 1_000
# (rows listed one by one, failures shown with their log, lines of each log), most detailed first
HISTORY_LEVELS = ((LINEAGE_ROWS, FAILURE_TAILS, FAILURE_TAIL_LINES), (20, 2, 10), (12, 2, 8), (8, 1, 8),
                  (5, 1, 5), (3, 0, 0), (0, 0, 0))
SUMMARY_BEST_KEPT = 5
ENTRY_TEXT_CHARS = 200  # a description or a reason, in the lineage table
REPLY_FRACTION = 0.25  # of a model's context, left for the reply by a prompt that must fit it
TAIL_LINE_CHARS = 300

SYSTEM_PROMPT = """\
You are the research agent of autoresearch, a tool that runs machine-learning experiments overnight.
Each experiment: you propose ONE change to the editable files of a training recipe; the tool commits
it, trains it in a sandbox for a fixed wall-clock budget, and keeps the change if the validation
metric improved by more than the run-to-run noise, or reverts it if not. The training only trains
and saves its model (through the fixed prepare.py); the tool itself evaluates the saved model, on
data the training never sees, and refuses a model that looks at future tokens. A number the training
prints is not the metric. You see what earlier experiments found; learn from them, do not repeat
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
    gain: float | None  # over the best before it; positive is better
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
    token_budget: int = PROMPT_TOKEN_BUDGET  # for the whole prompt; the lineage gets what the rest leaves
    in_flight: tuple[str, ...] = ()  # experiments training now (drafting ahead): not to be proposed again


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
    ]
    closing = [f"# Current {name}\n\n```python\n{context.files.get(name, '')}\n```" for name in recipe.editable]
    if context.in_flight:
        closing.append("# Training now\n\nThese experiments are training while you draft; their results are not "
                       "known yet. Do not propose the same changes:\n" + "\n".join(
                           f"- training now: {_clip(entry)}" for entry in context.in_flight))
    closing.append(f"# Your task\n\nPropose experiment {context.number}: one change that you expect to make "
                   f"{recipe.metric} {better}. Answer in the required form.")
    fixed_tokens = estimate_tokens(SYSTEM_PROMPT + "\n\n".join(sections + closing))
    history = format_history(context.lineage, max(MIN_HISTORY_TOKENS, context.token_budget - fixed_tokens))
    user = "\n\n".join(sections + history + closing)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def estimate_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


def prompt_tokens(messages: list[dict]) -> int:
    """The estimated size of a whole conversation, as the budget counts it."""
    return estimate_tokens("\n\n".join(str(message.get("content") or "") for message in messages))


def smallest_prompt_tokens(context: AgentContext) -> int:
    """The estimated size of the shortest first prompt any budget gives: the history at its least."""
    return prompt_tokens(build_messages(replace(context, token_budget=0)))


def budget_that_fits(context_tokens: int, estimated: int, counted: int | None) -> int:
    """A prompt budget whose prompts leave a share of the model's context for the reply.

    The budget is in estimated tokens; when the server counted a prompt the estimate sized, the
    ratio of the two corrects the estimate (code is denser than four characters a token).
    """
    scale = estimated / counted if counted else 1.0
    return int(context_tokens * (1 - REPLY_FRACTION) * scale)


def format_history(lineage: tuple[LineageEntry, ...], budget_tokens: int) -> list[str]:
    """The lineage and the recent failures' logs, as detailed as budget_tokens allows."""
    sections: list[str] = []
    for rows, tails, tail_lines in HISTORY_LEVELS:
        sections = ["# Experiments so far\n\n" + format_lineage(lineage, rows)]
        failures = format_failures(lineage, tails, tail_lines)
        if failures:
            sections.append("# Recent failures, with the end of their logs\n\n" + failures)
        if estimate_tokens("\n\n".join(sections)) <= budget_tokens:
            break
    return sections


def format_noise(context: AgentContext) -> str:
    """The noise floor as the agent is told it: gains below it are seed luck and are not kept."""
    if context.noise_std is None or context.noise_std <= 0:
        return ""
    metric = context.recipe.metric
    margin = (f" A change is kept only when it beats the best by more than {context.keep_margin:.3g} and the gain "
              "holds on other seeds (the tool re-runs it with new seeds)." if context.keep_margin is not None else "")
    return (f"- run-to-run noise: the unmodified recipe's {metric} varies by {context.noise_std:.3g} (standard "
            f"deviation over {context.noise_runs} runs with different seeds); a smaller difference is seed luck, "
            f"not progress.{margin}\n")


def format_lineage(lineage: tuple[LineageEntry, ...], rows: int = LINEAGE_ROWS) -> str:
    """The last `rows` experiments one by one, after a summary of the ones before them."""
    if not lineage:
        return "None yet."
    recent = lineage[-rows:] if rows > 0 else ()
    older = lineage[:len(lineage) - len(recent)]
    parts = [summarize_lineage(older)] if older else []
    if recent:
        table = ["| # | outcome | metric | gain over the best before (+ is better) | description |", "|---|---|---|---|---|"]
        for entry in recent:
            outcome = _clip(f"{entry.outcome}: {entry.reason}" if entry.reason else entry.outcome)
            metric = f"{entry.metric:.6g}" if entry.metric is not None else "-"
            gain = f"{entry.gain:+.4g}" if entry.gain is not None else "-"
            table.append(f"| {entry.number} | {outcome} | {metric} | {gain} | {_clip(entry.description)} |")
        parts.append("\n".join(table))
    return "\n\n".join(parts)


def summarize_lineage(entries: tuple[LineageEntry, ...]) -> str:
    """Experiments too old to list: how many ended how (and why), and the best kept changes."""
    counts: dict[str, dict[str, int]] = {}
    for entry in entries:
        kinds = counts.setdefault(entry.outcome, {})
        kind = reason_kind(entry.outcome, entry.reason)
        if kind:
            kinds[kind] = kinds.get(kind, 0) + 1
        kinds[""] = kinds.get("", 0) + 1
    described = []
    for outcome, kinds in sorted(counts.items(), key=lambda item: -item[1][""]):
        detail = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda item: -item[1]) if k)
        described.append(f"{kinds['']} {outcome}" + (f" ({detail})" if detail else ""))
    lines = [f"Experiments {entries[0].number} to {entries[-1].number}, summarised: {'; '.join(described)}."]
    kept = [e for e in entries if e.outcome == "keep" and e.gain is not None]
    best = sorted(kept, key=lambda e: e.gain, reverse=True)[:SUMMARY_BEST_KEPT]
    if best:
        lines.append("Largest kept gains among them: " + "; ".join(
            f"#{e.number} ({e.gain:+.4g}) {_clip(e.description)}" for e in sorted(best, key=lambda e: e.number)) + ".")
    return "\n".join(lines)


def reason_kind(outcome: str, reason: str | None) -> str:
    """The type of a failure, to count alike ones together: oom, nan, duplicate, edit did not apply..."""
    if not reason or outcome in ("keep", "discard"):
        return ""
    text = reason.lower()
    for kind in ("oom", "nan", "duplicate", "edit did not apply", "does not compile", "touched"):
        if text.startswith(kind):
            return kind
    return "other" if outcome in ("crash", "invalid") else ""


def format_failures(lineage: tuple[LineageEntry, ...], count: int = FAILURE_TAILS,
                    lines: int = FAILURE_TAIL_LINES) -> str:
    if count <= 0:
        return ""
    failed = [e for e in lineage if e.outcome in ("crash", "timeout") and e.log_tail][-count:]
    parts = []
    for entry in failed:
        tail = "\n".join(line[-TAIL_LINE_CHARS:] for line in entry.log_tail.splitlines()[-lines:])
        parts.append(f"Experiment {entry.number} ({entry.outcome}: {_clip(entry.reason or 'no reason')}): "
                     f"{_clip(entry.description)}\n```\n{tail}\n```")
    return "\n\n".join(parts)


def _clip(text: str, limit: int = ENTRY_TEXT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def repair_message(error: str) -> dict:
    """What the agent is told when its reply could not be applied."""
    return {"role": "user", "content": f"Your reply could not be applied: {error}\n\n"
                                       "Answer again in the required form, with SEARCH parts copied exactly "
                                       "from the current file."}
