"""What the LLM agent is told: the tool, the reply contract, program.md, the recipe and the lineage.

The order is made for caching. A server's prefix cache (llama.cpp's slot cache, vLLM's prefix
caching) and hosted prompt caching (OpenAI's, automatic past 1,024 identical leading tokens) only
reuse the leading part of a prompt that is the same as before, so what changes rarely comes first
and what changes every experiment last:

1. the system message (the tool and the reply contract: never changes);
2. program.md (changes when the person edits it), the recipe's facts and the hardware;
3. the current editable files (they change only when a change is kept);
4. where the run stands: the baseline's and the best's metric and training numbers (steps, time
   per step, memory, parameters), the noise floor, the best commit's whole diff against the
   baseline and the end of its log (all of it changes only when a change is kept);
5. the agent's own notes (its `NOTES:` of earlier replies, most recent first);
6. the lineage: every experiment's outcome (typed, with its reason), metric, gain over the best
   before it and description, the log tails of recent failures and what recent discarded tries
   changed (their diffs' changed lines); it changes every experiment;
7. the task, with the reply contract again in brief (some chat templates drop system messages),
   shown on a real line of the recipe's file, never on placeholders a model could copy.

That is the prompt of the `search-replace` format. The small models' formats (`whole`, `knobs`:
formats.py) get a short prompt instead (`build_short_messages`): a short system message, the start
of program.md, the file (whole) or the constants with their ranges (knobs), where the run stands
and the last results: what a small model's context and its speed (tens of tokens a second of
prefill on a CPU) can take.

The prompt stays within a token budget however long the run is: what grows with the run (the
state's diff and log, the notes, the lineage and its logs and diffs) gets the budget left after
the fixed parts and the room kept for a repair turn; the most recent experiments are listed one by
one and the older ones summarised (counts by outcome and reason, the best kept changes). When even
that is too long, fewer rows, fewer diffs and shorter log tails are shown. Tokens are estimated
from characters (`estimate_tokens`): 3.3 a token, what SmolLM2's and Gemma 3's tokenizers made of
this prompt through llama.cpp (OpenAI's make 3.8 of it: BENCHMARKS.md, so there the estimate errs
on the side of a shorter prompt), or the ratio a server's own tokenizer measured on the first
prompt (`chars_per_token`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from autoresearch import formats
from autoresearch.edits import MAX_NOTES_CHARS
from autoresearch.gains import better_word
from autoresearch.quoting import fence_for, fenced, inline
from autoresearch.recipe import Recipe

LINEAGE_ROWS = 20
FAILURE_TAILS = 3
FAILURE_TAIL_LINES = 15
PROMPT_TOKEN_BUDGET = 12_000
DEFAULT_REPLY_TOKENS = 4_096  # the completion limit of a proposal: a focused change with its reasoning fits
CHARS_PER_TOKEN = 3.3
MIN_HISTORY_TOKENS = 1_000
# (rows listed one by one, failures shown with their log, lines of each log, discarded tries shown with their
# diff), most detailed first
HISTORY_LEVELS = ((LINEAGE_ROWS, FAILURE_TAILS, FAILURE_TAIL_LINES, 5), (20, 2, 10, 3), (12, 2, 8, 2), (8, 1, 8, 1),
                  (5, 1, 5, 0), (3, 0, 0, 0), (0, 0, 0, 0))
# (lines of the best commit's diff against the baseline, lines of its log tail), most detailed first
STATE_LEVELS = ((200, 12), (80, 6), (30, 0), (0, 0))
SUMMARY_BEST_KEPT = 5
ENTRY_TEXT_CHARS = 200  # a description or a reason, in the lineage table
TAIL_LINE_CHARS = 300
TRY_DIFF_LINES = 12  # changed lines shown of each recent discarded try
NOTES_TOKENS = 1_000  # of the notes section in a prompt: the most recent notes first, until it is full
REPAIR_ROOM_TOKENS = 1_500  # of the budget, kept for a repair turn (the failed reply shortened, what went wrong)
MIN_REPAIR_ROOM_FRACTION = 0.25  # ...or this share of a small budget
MIN_KEPT_REPLY_TOKENS = 150  # a failed reply shorter than this in a repair turn is no use to the model
SUMMARY_VALUES = 12  # training numbers shown of the baseline and the best

SYSTEM_PROMPT = """\
You are the research agent of autoresearch, a tool that runs machine-learning experiments overnight.
Each experiment: you propose ONE change to the editable files of a training recipe; the tool commits
it, trains it in a sandbox for a fixed wall-clock budget, and keeps the change if the validation
metric improved by more than the run-to-run noise, or reverts it if not. The training only trains
and saves its model (through the fixed prepare.py); the tool itself evaluates the saved model, on
data the training never sees, and refuses a model that looks at future tokens. A number the training
prints is not the metric. You see what earlier experiments found; learn from them, do not repeat
failures, and prefer changes with a clear hypothesis. The training time is fixed, so a change that
makes each step slower must earn it: the steps reached and the time per step of the baseline and the
best are given. Only the editable files may be changed; the random seed is set by the tool, not by
you: an edit that reads, sets or removes a seed is refused. Your NOTES are shown to you in the next
experiments' prompts (the latest few): use them to follow a plan across experiments."""
# The small models' system message: what they need and no more (their prompt is read at tens of tokens a second).
SHORT_SYSTEM_PROMPT = """\
You improve a machine-learning training recipe, one experiment at a time. The tool trains each
change for a fixed time, measures the validation metric itself and keeps the change only if it is
better. Do not repeat what earlier experiments already tried."""
SHORT_LINEAGE_ROWS = 8
SHORT_TRIES = 3  # the last tries not kept, with their changed lines: which values were tried already
SHORT_PROGRAM_CHARS = 1_500


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
    diff: str = ""  # what it changed, as proposed (for tries that were not kept)


@dataclass(frozen=True)
class Standing:
    """One experiment the agent measures against (the baseline, the best): its metric and training numbers."""

    number: int
    metric: float | None
    summary: dict = field(default_factory=dict)  # what its training printed: steps, seconds, memory, parameters


@dataclass(frozen=True)
class Note:
    """What the agent wrote under NOTES: in the reply of one experiment."""

    number: int
    text: str


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
    token_budget: int = PROMPT_TOKEN_BUDGET  # for the whole conversation; the lineage gets what the rest leaves
    in_flight: tuple[str, ...] = ()  # experiments training now (drafting ahead): not to be proposed again
    hardware: str = ""  # what the training runs on, in one line (hardware.describe_hardware)
    baseline: Standing | None = None
    best: Standing | None = None
    best_diff: str = ""  # the best commit against the baseline, whole
    best_log_tail: str = ""  # the end of the best's training log
    notes: tuple[Note, ...] = ()  # oldest first
    chars_per_token: float = CHARS_PER_TOKEN  # measured by the server's tokenizer where it offers one
    edit_format: str = "search-replace"  # how the reply is written (formats.py); the agent sets it
    refused: str = ""  # why this proposal's last replies were refused, when the agent starts again (a change of tack)


def system_message(context: AgentContext) -> str:
    """The system message: the tool (briefly for a short prompt), then how to answer in the context's format."""
    base = SHORT_SYSTEM_PROMPT if formats.named(context.edit_format).short_prompt else SYSTEM_PROMPT
    return f"{base}\n\n{formats.named(context.edit_format).instructions(context.recipe)}"


def reminder(context: AgentContext) -> str:
    """How to answer, again at the end of the user message (some chat templates drop the system message), with a
    real example from the recipe's own file where the format has one."""
    format_ = formats.named(context.edit_format)
    example = formats.example_text(context.edit_format, context.recipe, context.files)
    shown = (f"\n\nThe form, shown on a real line of {context.recipe.editable[0]} (an example of the form only: "
             f"a reply that makes this same change is refused):\n\n{example}" if example else "")
    return format_.instructions(context.recipe) + shown


TACK_CHANGES = formats.MAX_KNOBS_CHANGED  # changes offered when a knobs proposal starts again: copied all, still a
# reply in the form (Qwen2.5-Coder-1.5B copied a whole list, of 12 or of 6, in 5 of 10 restarts; the diff in the
# lineage, not its description, says what such a reply set)
SET_CONSTANT = re.compile(r"^\+([A-Za-z_][A-Za-z0-9_]*)\s*=", re.MULTILINE)  # a diff's line that sets a constant


def task(context: AgentContext) -> str:
    """The prompt's last section: the experiment to propose, why the last replies were refused where the agent
    starts again (in knobs, with changes not tried yet to copy), and how to answer."""
    better = better_word(context.recipe.direction)
    text = (f"# Your task\n\nPropose experiment {context.number}: one change that you expect to make "
            f"{context.recipe.metric} {better}.")
    if context.refused:
        text += (f"\n\nYour last two answers to this could not be applied, both for the same reason: "
                 f"{inline(context.refused)}. Answer differently this time.")
        if context.edit_format == "knobs":
            changed_before = {name for entry in context.lineage for name in SET_CONSTANT.findall(entry.diff)}
            offered = formats.untried_changes(context.recipe, context.files, context.seen_hashes,
                                              changed_before)[:TACK_CHANGES]
            if offered:
                text += (" Each of these lines is a change no experiment of this run has made; copy one of them "
                         "(or give another value of your own):\n" + "\n".join(f"- {line}" for line in offered))
    return f"{text}\n\n{reminder(context)}"


def build_messages(context: AgentContext) -> list[dict]:
    """The chat messages for one proposal, in the layout its edit format asks for."""
    if formats.named(context.edit_format).short_prompt:
        return build_short_messages(context)
    return build_full_messages(context)


def build_short_messages(context: AgentContext) -> list[dict]:
    """A small model's prompt: program.md (its start), the recipe's facts, the file (whole) or the constants and
    their ranges (knobs), where the run stands and the last results; what its context and its speed can take."""
    recipe = context.recipe
    better = better_word(recipe.direction)
    program = context.program.strip()
    if len(program) > SHORT_PROGRAM_CHARS:
        program = program[:SHORT_PROGRAM_CHARS].rsplit("\n", 1)[0] + "\n[... the rest of program.md left out]"
    parts = [format_program(program),
             f"# The recipe\n\n- metric: {recipe.metric} ({better} is better)\n- training budget: "
             f"{context.budget_seconds:g} seconds"]
    if context.edit_format == "knobs":
        untried = formats.untried_values(recipe, context.files, context.seen_hashes)
        rows = [f"- {knob.name} = {knob.current} (may be {knob.allowed()}"
                + (f"; not tried yet: {', '.join(untried[knob.name])}" if knob.name in untried else "") + ")"
                + (f": {knob.comment}" if knob.comment else "")
                for knob in formats.knobs_of(recipe, context.files)]
        parts.append(f"# The constants you may change, at their current values ({recipe.editable[0]})\n\n"
                     + "\n".join(rows))
    else:
        parts += [f"# Current {name}\n\n{_block(context.files.get(name, ''), 'python')}" for name in recipe.editable]
    standing = [f"- baseline {recipe.metric}: {context.baseline_metric:.6g}"] if context.baseline_metric is not None \
        else []
    if context.best_metric is not None:
        standing.append(f"- best {recipe.metric} so far: {context.best_metric:.6g}")
    noise = format_noise(context)
    parts.append("# Where the run stands\n\n" + "\n".join(standing + ([noise.rstrip()] if noise else []))
                 if standing else "")
    parts.append("# Last results\n\n" + format_lineage(context.lineage, SHORT_LINEAGE_ROWS))
    tried = format_tries(context.lineage, SHORT_TRIES)
    parts.append("# What the last tries that were not kept changed\n\n" + tried if tried else "")
    if context.edit_format == "whole":  # a change of code can crash: the last crash's log says why
        failures = format_failures(context.lineage, 1, 8)
        parts.append("# The last failure, with the end of its log\n\n" + failures if failures else "")
    if context.in_flight:
        parts.append("# Training now (do not propose these again)\n\n"
                     + "\n".join(f"- {_clip(entry)}" for entry in context.in_flight))
    parts.append(task(context))
    user = "\n\n".join(part for part in parts if part)
    return [{"role": "system", "content": system_message(context)}, {"role": "user", "content": user}]


def build_full_messages(context: AgentContext) -> list[dict]:
    """The chat messages for one proposal: what changes rarely first (see the module's docstring)."""
    recipe = context.recipe
    better = better_word(recipe.direction)
    leading = [format_program(context.program),
               "# The recipe\n\n"
               f"- metric: {recipe.metric} ({better} is better)\n"
               f"- training budget: {context.budget_seconds:g} seconds of wall clock\n"
               f"- editable files: {', '.join(recipe.editable)}\n"
               f"- fixed files (data and evaluation, cannot be changed): {', '.join(recipe.fixed)}\n"
               + (f"- hardware: {context.hardware}\n" if context.hardware else "")]
    leading += [f"# Current {name}\n\n{_block(context.files.get(name, ''), 'python')}" for name in recipe.editable]
    closing = []
    if context.in_flight:  # it changes with every draft, so it comes last, with the task
        closing.append("# Training now\n\nThese experiments are training while you draft; their results are not "
                       "known yet. Do not propose the same changes:\n" + "\n".join(
                           f"- training now: {_clip(entry)}" for entry in context.in_flight))
    closing.append(task(context))
    size = lambda parts: estimate_tokens("\n\n".join(parts), context.chars_per_token)  # noqa: E731
    system = system_message(context)
    room = context.token_budget - repair_room(context.token_budget) - size([system, *leading, *closing])
    state = []
    for diff_lines, tail_lines in STATE_LEVELS:  # the standing takes at most half of what the history needs not
        state = [format_standing(context, diff_lines, tail_lines)]
        if size(state) <= max(0, room - MIN_HISTORY_TOKENS) // 2:
            break
    notes = format_notes(context.notes, min(NOTES_TOKENS, max(0, room - size(state) - MIN_HISTORY_TOKENS)),
                         context.chars_per_token)
    history = format_history(context.lineage, max(MIN_HISTORY_TOKENS, room - size(state + notes)),
                             context.chars_per_token)
    user = "\n\n".join(part for part in leading + state + notes + history + closing if part)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def estimate_tokens(text: str, chars_per_token: float = CHARS_PER_TOKEN) -> int:
    """The one token estimate of the tool: characters at a measured ratio (see the module's docstring)."""
    return int(len(text) / chars_per_token) + 1


def prompt_tokens(messages: list[dict], chars_per_token: float = CHARS_PER_TOKEN) -> int:
    """The estimated size of a whole conversation, as the budget counts it."""
    return estimate_tokens("\n\n".join(str(message.get("content") or "") for message in messages), chars_per_token)


def repair_room(budget: int) -> int:
    """Tokens of the budget a first prompt leaves for one repair turn."""
    return min(REPAIR_ROOM_TOKENS, int(budget * MIN_REPAIR_ROOM_FRACTION))


def smallest_prompt_tokens(context: AgentContext) -> int:
    """The estimated size of the shortest first prompt any budget gives: the history at its least."""
    return prompt_tokens(build_messages(replace(context, token_budget=0)), context.chars_per_token)


def budget_that_fits(context_tokens: int, reply_tokens: int, estimated: int | None = None,
                     counted: int | None = None) -> int:
    """A prompt budget whose conversations leave the completion limit's room in the model's context.

    The budget is in estimated tokens; when the server counted a prompt the estimate sized, the
    ratio of the two corrects the estimate.
    """
    scale = estimated / counted if estimated and counted else 1.0
    return max(0, int((context_tokens - reply_tokens) * scale))


def format_program(program: str) -> str:
    """program.md under a heading of its own, unless it begins with one (no heading twice)."""
    text = program.strip() or "(empty)"
    if text.startswith("#"):
        return f"{text}\n\n(the research direction above is program.md, the person's own words)"
    return "# Research direction (program.md)\n\n" + text


def format_standing(context: AgentContext, diff_lines: int, tail_lines: int) -> str:
    """Where the run stands: the baseline and the best, their training numbers, the noise, the best's diff and log."""
    metric = context.recipe.metric
    lines = ["# Where the run stands", ""]
    if context.baseline_metric is not None:
        lines.append(f"- baseline {metric}: {context.baseline_metric:.6g}")
    if context.best_metric is not None:
        number = f" (experiment {context.best.number})" if context.best is not None else ""
        lines.append(f"- best {metric} so far{number}: {context.best_metric:.6g}")
    noise = format_noise(context)
    if noise:
        lines.append(noise.rstrip("\n"))
    table = format_training_numbers(context.baseline, context.best)
    if table:
        lines += ["", "What the trainings printed (information, not the metric):", "", table]
    if diff_lines and context.best_diff:
        diff = context.best_diff.rstrip("\n").splitlines()
        shown = "\n".join(diff[:diff_lines]) + (f"\n[... {len(diff) - diff_lines} more lines]"
                                                if len(diff) > diff_lines else "")
        lines += ["", "The best commit against the baseline (every change kept so far):", _block(shown, "diff")]
    if tail_lines and context.best_log_tail:
        tail = "\n".join(line[-TAIL_LINE_CHARS:] for line in context.best_log_tail.splitlines()[-tail_lines:])
        lines += ["", "The end of the best's training log (the training's own output, quoted):", fenced(tail)]
    return "\n".join(lines) if len(lines) > 2 else ""


def format_training_numbers(baseline: Standing | None, best: Standing | None) -> str:
    """The baseline's and the best's training numbers side by side, with the time per step where it shows."""
    columns = [(f"baseline (#{s.number})" if s is baseline else f"best (#{s.number})", with_step_time(s.summary))
               for s in (baseline, best) if s is not None and s.summary]
    if best is not None and baseline is not None and best.number == baseline.number:
        columns = columns[:1]
    if not columns:
        return ""
    names = list(dict.fromkeys(name for _, summary in columns for name in summary))[:SUMMARY_VALUES]
    rows = ["| | " + " | ".join(title for title, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name in names:
        rows.append(f"| {name} | " + " | ".join(_number(summary.get(name)) for _, summary in columns) + " |")
    return "\n".join(rows)


def with_step_time(summary: dict) -> dict:
    """The summary, with seconds per step when it says both the steps and the training time."""
    steps = next((summary[k] for k in ("num_steps", "steps") if isinstance(summary.get(k), (int, float))), None)
    seconds = next((summary[k] for k in ("training_seconds", "train_seconds", "training_time")
                    if isinstance(summary.get(k), (int, float))), None)
    if steps and seconds and "seconds_per_step" not in summary:
        return {**summary, "seconds_per_step": seconds / steps}
    return summary


def _number(value) -> str:
    return "-" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def format_notes(notes: tuple[Note, ...], budget_tokens: int, chars_per_token: float = CHARS_PER_TOKEN) -> list[str]:
    """The agent's notes of earlier experiments, most recent first, as many as budget_tokens holds."""
    shown: list[str] = []
    heading = "# Your notes from earlier experiments (most recent first)"
    for note in reversed(notes):
        entry = f"Experiment {note.number}:\n{note.text[:MAX_NOTES_CHARS]}"
        if estimate_tokens("\n\n".join([heading, *shown, entry]), chars_per_token) > budget_tokens:
            break
        shown.append(entry)
    return ["\n\n".join([heading, *shown])] if shown else []


def format_history(lineage: tuple[LineageEntry, ...], budget_tokens: int,
                   chars_per_token: float = CHARS_PER_TOKEN) -> list[str]:
    """The lineage, the recent failures' logs and the recent tries' diffs, as detailed as budget_tokens allows."""
    sections: list[str] = []
    for rows, tails, tail_lines, tries in HISTORY_LEVELS:
        sections = ["# Experiments so far\n\n" + format_lineage(lineage, rows)]
        failures = format_failures(lineage, tails, tail_lines)
        if failures:
            sections.append("# Recent failures, with the end of their logs\n\n" + failures)
        changed = format_tries(lineage, tries)
        if changed:
            sections.append("# What recent tries that were not kept changed (most recent first)\n\n" + changed)
        if estimate_tokens("\n\n".join(sections), chars_per_token) <= budget_tokens:
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
            # a reason can quote the training's own output (its last error line): quoted, never the tool's words
            outcome = f"{entry.outcome}: {inline(_clip(entry.reason), table=True)}" if entry.reason else entry.outcome
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
        parts.append(f"Experiment {entry.number} ({entry.outcome}: {inline(_clip(entry.reason or 'no reason'))}): "
                     f"{_clip(entry.description)}\n{fenced(tail)}")
    return "\n\n".join(parts)


def format_tries(lineage: tuple[LineageEntry, ...], count: int) -> str:
    """The changed lines of the last `count` tries that were not kept (what they did, beyond their description)."""
    if count <= 0:
        return ""
    tried = [e for e in lineage if e.outcome != "keep" and e.diff][-count:]
    parts = []
    for entry in reversed(tried):
        changed = [line[:TAIL_LINE_CHARS] for line in entry.diff.splitlines()
                   if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
        more = f"\n[... {len(changed) - TRY_DIFF_LINES} more changed lines]" if len(changed) > TRY_DIFF_LINES else ""
        parts.append(f"Experiment {entry.number} ({entry.outcome}): {_clip(entry.description)}\n"
                     + _block("\n".join(changed[:TRY_DIFF_LINES]) + more, "diff"))
    return "\n\n".join(parts)


def _block(text: str, info: str) -> str:
    """text in a fenced block no line of it can close (the agent's own files and diffs, unchanged)."""
    fence = fence_for(text)
    return f"{fence}{info}\n{text}\n{fence}"


def _clip(text: str, limit: int = ENTRY_TEXT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def repair_message(error: str, hint: str = formats.named("search-replace").repair_hint) -> dict:
    """What the agent is told when its reply could not be applied, and how to answer again."""
    return {"role": "user", "content": f"Your reply could not be applied: {error}\n\n{hint}"}


def repair_conversation(messages: list[dict], reply: str, error: str, budget_tokens: int,
                        chars_per_token: float = CHARS_PER_TOKEN, hint: str | None = None) -> list[dict] | None:
    """The conversation for the next attempt, within budget_tokens; None when no repair turn fits.

    The failed reply is shortened to the room left (its head and tail, where the description and
    the last blocks are). When even a short reply does not fit, the earlier repair turns go first,
    oldest first: the first prompt and the latest failure are what the model needs.
    """
    repair = repair_message(error, hint) if hint else repair_message(error)
    earlier = list(messages)
    while True:
        room = budget_tokens - prompt_tokens(earlier + [repair], chars_per_token)
        if room >= MIN_KEPT_REPLY_TOKENS:
            kept = shorten(reply, int(room * chars_per_token))
            return earlier + [{"role": "assistant", "content": kept}, repair]
        if len(earlier) <= 2:
            return None
        earlier = earlier[:2] + earlier[4:]  # the oldest repair turn: a failed reply and what was said of it


def shorten(text: str, limit: int) -> str:
    """text, or its head and tail with a note of how much was left out between them."""
    if len(text) <= limit:
        return text
    half = max(0, limit - 60) // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} {formats.LEFT_OUT} ...]\n{text[-half:] if half else ''}"
