"""The edit formats: how the agent writes its change, one format for each size of model.

- `search-replace` (large models): `DESCRIPTION:`, optional `NOTES:`, then SEARCH/REPLACE blocks
  (edits.py applies them tolerantly). Cheapest to write, hardest to write right.
- `whole` (small and mid-size models): the whole editable file written back in one fenced block
  whose opening line names it (```python train.py); the tool diffs it against the current file.
  A file with elided code ("...", "rest unchanged", "# existing code") is refused.
- `knobs` (the smallest models): one `NAME = VALUE` line for each of the recipe's `tunable:`
  constants it changes, checked against their ranges and choices; the tool rewrites the
  constants (edits.set_constants, the mutate agent's rewrite). It always applies, and its prompt
  is short: no file, only the constants, their ranges and the last results.

`auto` picks from what the endpoint says of the model (`choose_format`), by this rule:

    parameters <= 4B   -> knobs           (1.5B: whole files take minutes to write on a CPU)
    parameters <= 14B  -> whole           (aider's finding: diffs are unreliable below 14B)
    larger, or unknown -> search-replace  (hosted models and big local ones)

The parameter count is the server's where it gives one (llama.cpp's /v1/models `meta.n_params`),
else read from the model's name (`Qwen2.5-Coder-1.5B-Instruct`, `qwen2.5-coder:1.5b`,
`SmolLM2-135M`); a few hosted families without a size in their name are known to be large.
A format that cannot serve the recipe (knobs for a recipe with no constants) gives way to the
next larger one.

Every format shows the model a short REAL example, made from the recipe's own file, never
placeholders it could copy; a reply that repeats the example, or the placeholder text of the old
reply form, is refused with a message that says so. Pure functions: no I/O.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from autoresearch.edits import (EditBlock, EditError, apply_blocks, blocks_between, parse_description, parse_notes,
                                parse_reply, set_constants)
from autoresearch.guard import editable_digest
from autoresearch.recipe import TOP_LEVEL_CONSTANT, Recipe, Tunable

FORMATS = ("search-replace", "whole", "knobs")
EDIT_FORMATS = ("auto",) + FORMATS
KNOBS_MAX_PARAMETERS = 4e9
WHOLE_MAX_PARAMETERS = 14e9
# Hosted families whose names carry no size: all large enough for search-replace.
LARGE_FAMILIES = ("gpt-", "chatgpt", "o1", "o3", "o4", "claude", "gemini", "grok", "deepseek-chat",
                  "deepseek-reasoner", "mistral-large", "command-r")
SIZE_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*([bm])(?![a-z])", re.IGNORECASE)
# What the old reply form had models fill in: a reply that echoes it wrote no change of its own.
PLACEHOLDERS = ("your reasoning first", "exact lines copied from the current file", "the lines that replace them",
                "one line saying what the change is", "(optional, a few lines)")
LEFT_OUT = "characters left out"  # the mark of a reply shortened in a repair turn (prompts.shorten), copied back by
# a small model into the file it wrote again
ELIDED_CODE = re.compile(rf"\[\.\.\. \d+ {LEFT_OUT}|^\s*(#\s*)?(\.\.\.|…)\s*$|(rest|remainder) of (the )?(file|code)|"
                         r"(rest|remaining|other) "
                         r"(lines|code)? ?(is |are )?unchanged|^\s*#.*\b(existing code|unchanged|same as before)\b.*$",
                         re.IGNORECASE | re.MULTILINE)
MAX_KNOBS_CHANGED = 3
MIN_WRITTEN_SHARE = 0.5  # of the current file's lines, below which a file written back is a fragment of it
# A knobs reply is a few lines: a smaller completion limit stops a small model that rambles within a minute or so
# (a 1.5B model writes about 14 tokens a second on a CPU), instead of the minutes the run's limit allows.
KNOBS_REPLY_TOKENS = 512


@dataclass(frozen=True)
class Edit:
    """A reply read and applied: the description, the notes, the new content of each changed file, the blocks."""

    description: str
    changed: dict[str, str]
    blocks: tuple[EditBlock, ...]
    notes: str = ""


@dataclass(frozen=True)
class ModelFacts:
    """What is known of the model behind an endpoint: its parameters and context, and who said so."""

    name: str
    parameters: float | None = None
    context_tokens: int | None = None
    source: str = ""  # where the parameter count came from


@dataclass(frozen=True)
class Example:
    """A short real example of the reply form, and the change it makes (a reply making it again is refused)."""

    text: str
    values: dict[str, str]


# --- choosing

def parameters_in_name(name: str) -> float | None:
    """The parameter count a model's name carries (`1.5B`, `135M`, `:7b`), else None."""
    sizes = [float(number) * (1e9 if unit.lower() == "b" else 1e6)
             for number, unit in SIZE_IN_NAME.findall(name.rsplit("/", 1)[-1])]
    return sizes[-1] if sizes else None


def with_parameters(facts: ModelFacts) -> ModelFacts:
    """facts with a parameter count: the server's, else the name's."""
    if facts.parameters:
        return facts
    found = parameters_in_name(facts.name)
    return facts if found is None else ModelFacts(facts.name, found, facts.context_tokens, "the model's name")


def choose_format(facts: ModelFacts) -> tuple[str, str]:
    """The format `auto` picks for a model, and why, in words for the run's first lines (the module's rule)."""
    facts = with_parameters(facts)
    if facts.parameters is None:
        family = next((f for f in LARGE_FAMILIES if facts.name.lower().startswith(f)), None)
        if family:
            return "search-replace", f"model {facts.name} is a large hosted model"
        return "search-replace", (f"the endpoint does not say how large model {facts.name} is; "
                                  "give the edit format to choose another")
    size = f"model {facts.name} has {_size(facts.parameters)} parameters, by {facts.source}"
    if facts.parameters <= KNOBS_MAX_PARAMETERS:
        return "knobs", f"{size}; up to {_size(KNOBS_MAX_PARAMETERS)} a model changes the recipe's constants only"
    if facts.parameters <= WHOLE_MAX_PARAMETERS:
        return "whole", f"{size}; up to {_size(WHOLE_MAX_PARAMETERS)} a model writes the whole file back"
    return "search-replace", f"{size}; a larger model writes SEARCH/REPLACE blocks"


def _size(parameters: float) -> str:
    return f"{parameters / 1e9:.3g}B" if parameters >= 1e9 else f"{parameters / 1e6:.3g}M"


def simpler(name: str, recipe: Recipe, files: dict[str, str]) -> str:
    """The format to change to when a reply fails the same way twice: knobs where the recipe has some, else whole."""
    if name != "knobs" and knobs_of(recipe, files):
        return "knobs"
    return "whole" if name == "search-replace" else name


WHOLE_OVERHEAD_TOKENS = 1_500  # of a whole-file conversation besides the file shown and the file written back


def fitting(name: str, recipe: Recipe, files: dict[str, str], file_tokens: int = 0,
            context_tokens: int | None = None) -> str:
    """The format itself, or another where it cannot serve: knobs with no constants gives way to whole; whole
    with a context that cannot hold the editable files twice (shown, and written back: `file_tokens` each) to
    knobs where the recipe has constants, else to search-replace."""
    if name == "knobs" and not knobs_of(recipe, files):
        name = "whole"
    if name == "whole" and context_tokens and 2 * file_tokens + WHOLE_OVERHEAD_TOKENS > context_tokens:
        return "knobs" if knobs_of(recipe, files) else "search-replace"
    return name


# --- the knobs

@dataclass(frozen=True)
class Knob:
    """A constant the knobs format may set: its current value's text, its range or choices, its comment."""

    name: str
    current: str
    tunable: Tunable | None
    comment: str = ""

    def allowed(self) -> str:
        if self.tunable is None:
            return "any value"
        if self.tunable.choices:
            return "one of " + ", ".join(_plain(choice) for choice in self.tunable.choices)
        return f"{_plain(self.tunable.low)} to {_plain(self.tunable.high)}" + (", whole numbers"
                                                                             if self.tunable.integer else "")


def knobs_of(recipe: Recipe, files: dict[str, str]) -> list[Knob]:
    """The recipe's tunable constants with their current values (every top-level numeric constant of the first
    editable file when the recipe declares none, as the mutate agent reads it)."""
    source = files.get(recipe.editable[0], "")
    tunables = {tunable.name: tunable for tunable in recipe.tunable}
    knobs = []
    for match in TOP_LEVEL_CONSTANT.finditer(source):
        name = match.group("name")
        if tunables and name not in tunables:
            continue
        comment = match.group("rest").strip().lstrip("#").strip()
        knobs.append(Knob(name, match.group("value"), tunables.get(name), comment))
    return knobs


UNTRIED_PER_KNOB = 2  # values not tried yet shown beside each constant


def untried_values(recipe: Recipe, files: dict[str, str], seen: frozenset[str] | set[str],
                   per_knob: int = UNTRIED_PER_KNOB) -> dict[str, list[str]]:
    """For each constant, a few values near its current one, inside its range, that no experiment of the run
    tried (their files' digest is not in `seen`): concrete choices for a small model, which otherwise answers
    with an example it was shown, or with its last change again (measured: BENCHMARKS.md)."""
    target = recipe.editable[0]
    found: dict[str, list[str]] = {}
    for knob in knobs_of(recipe, files):
        values = []
        for value in _near_values(knob):
            changed, _, _ = set_constants(files[target], {knob.name: value}, target)
            if editable_digest(recipe, {**files, target: changed}) not in seen:
                values.append(value)
            if len(values) == per_knob:
                break
        if values:
            found[knob.name] = values
    return found


def tried_already(name: str, recipe: Recipe, files: dict[str, str], seen: frozenset[str] | set[str]) -> str:
    """What the model is told when its change is one an experiment of the run already made (a repair turn, not
    an experiment: a small model otherwise proposes the same value again and again); in knobs, with values
    not tried yet to choose from."""
    message = "this change was tried already in this run (the last results say how it went): propose another"
    if name != "knobs":
        return message
    offered = untried_changes(recipe, files, seen)[:8]
    return message + ("; not tried yet, for instance: " + ", ".join(offered) if offered else "")


def untried_changes(recipe: Recipe, files: dict[str, str], seen: frozenset[str] | set[str],
                    changed_before: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Changes of one constant that no experiment of the run made, as `NAME = value` lines: the nearest value
    of each constant first, then the next; the constants in `changed_before` left out while others remain (a
    small model that is shown the constant it keeps changing changes it again, with its usual companions)."""
    found = untried_values(recipe, files, seen)
    fresh = {name: values for name, values in found.items() if name not in changed_before}
    found = fresh or found
    rounds = max((len(values) for values in found.values()), default=0)
    return [f"{name} = {values[index]}" for index in range(rounds) for name, values in found.items()
            if index < len(values)]


def _near_values(knob: Knob) -> list[str]:
    """Values of a constant near its current one, nearest first, inside its range or among its choices."""
    current = float(knob.current.replace("_", ""))
    tunable = knob.tunable
    if tunable is not None and tunable.choices:
        others = [choice for choice in tunable.choices if choice != current]
        return [_plain(choice) for choice in sorted(others, key=lambda choice: abs(choice - current))]
    integer = (tunable.integer if tunable is not None
               else "." not in knob.current and "e" not in knob.current.lower())
    if integer:  # a count steps by one; a size (8 and more) by halves and doubles
        steps = [current * 2, current // 2, current + 1, current - 1] if current >= 8 else \
            [current + 1, current - 1, current * 2, current // 2]
    else:
        steps = [current * 2, current / 2, current * 4, current / 4]
    near = []
    for value in steps:
        value = int(value) if integer else value
        inside = tunable is None or tunable.contains(value)
        if value != current and inside and _plain(value) not in near and (not integer or value > 0):
            near.append(_plain(value))
    return near


# a value may be followed by its range copied from the list, a comment, or words after a comma ("DEPTH = 3, inside
# range [1, 4]", as Qwen2.5-Coder-1.5B wrote); ASSIGNMENTS_APART splits `A = 1, B = 2` into two lines first
KNOB_LINE = re.compile(r"^[\s>*\-`]*(?:SET\s+)?(?:NAME\s*=\s*)?`?([A-Za-z][A-Za-z0-9_]*)`?\s*(?::\s*\w+\s*)?(?:=|:|->|to)\s*`?"
                       r"([-+]?(?:\d[\d_]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)`?\s*(?:[,;]\s+[^=]*|[,;.]?\s*(?:\(.*\))?)\s*(?:#.*)?$")
ASSIGNMENTS_APART = re.compile(r"[,;]\s*(?=`?[A-Za-z_][A-Za-z0-9_]*`?\s*=)")


def parse_knobs(reply: str, knobs: list[Knob]) -> dict[str, str]:
    """The `NAME = VALUE` lines of a reply for known constants, checked against their ranges; EditError otherwise."""
    by_name = {knob.name: knob for knob in knobs}
    values: dict[str, str] = {}
    problems = []
    for line in (part for whole in reply.splitlines() for part in ASSIGNMENTS_APART.split(whole)):
        match = KNOB_LINE.match(line)
        if not match or match.group(1).upper() in ("DESCRIPTION", "NOTES"):
            continue
        name, text = match.group(1), match.group(2)
        knob = by_name.get(name) or by_name.get(name.upper())
        if knob is None:
            if name.isupper():
                near = [k for k in by_name if k.startswith(name[:3])][:1]
                problems.append(f"{name} is not one of the constants you may set"
                                + (f" (did you mean {near[0]}?)" if near else ""))
            continue
        value = float(text.replace("_", ""))
        tunable = knob.tunable
        if tunable is not None and tunable.integer and value != int(value):
            problems.append(f"{knob.name} takes whole numbers, not {text}")
        elif tunable is not None and not tunable.contains(int(value) if tunable.integer else value):
            problems.append(f"{knob.name} = {text} is outside what it may be ({knob.allowed()})")
        else:
            chosen = str(int(value)) if tunable is not None and tunable.integer else text
            if values.get(knob.name, chosen) != chosen:  # a SEARCH/REPLACE pair read as knobs says both
                problems.append(f"{knob.name} is given two values ({values[knob.name]} and {chosen}): give it one")
            values[knob.name] = chosen
    if problems:
        raise EditError("; ".join(problems))
    return values


# --- the formats

class SearchReplace:
    name = "search-replace"
    short_prompt = False
    reply_tokens: int | None = None  # the run's completion limit
    repair_hint = "Answer again in the same form, with SEARCH parts copied exactly from the current file."

    def instructions(self, recipe: Recipe) -> str:
        return ("Answer with your reasoning in a few sentences, then a line `DESCRIPTION:` with the change in one "
                "line (it becomes the commit message), optionally `NOTES:` with a few lines you want to remember in "
                "later experiments, then one block per place you change: the file's name on its own line, "
                "`<<<<<<< SEARCH`, lines copied exactly from the current file (whole lines, unique in it), "
                "`=======`, the lines that take their place, `>>>>>>> REPLACE`. A line `...` in both parts skips "
                "unchanged lines.")

    def example(self, recipe: Recipe, files: dict[str, str]) -> Example | None:
        knob = _example_knob(recipe, files)
        if knob is None:
            return None
        name, old, new = knob
        line = _constant_line(files[recipe.editable[0]], name)
        text = (f"DESCRIPTION: {name} {old} -> {new}\n{recipe.editable[0]}\n<<<<<<< SEARCH\n{line}\n=======\n"
                f"{line.replace(old, new, 1)}\n>>>>>>> REPLACE")
        return Example(text, {name: new})

    def apply(self, reply: str, recipe: Recipe, files: dict[str, str]) -> Edit:
        parsed = parse_reply(reply)
        changed = apply_blocks(files, parsed.blocks)
        return Edit(parsed.description, changed, parsed.blocks, parsed.notes)


class Whole:
    name = "whole"
    short_prompt = True
    reply_tokens: int | None = None  # the run's: the whole file must fit in it
    repair_hint = ("Answer again in the same form: DESCRIPTION, then the whole file in one fenced block named by "
                   "its file, every line written out.")

    def instructions(self, recipe: Recipe) -> str:
        name = recipe.editable[0]
        return (f"Answer with a line `DESCRIPTION:` with your change in one line (it becomes the commit message), "
                f"optionally `NOTES:` with a few lines to remember, then the whole new {name} in one fenced block "
                f"whose opening line names it: ```python {name}. Write out every line of the file, changed or "
                "not: a file with lines left out (`...`, \"rest unchanged\", \"existing code\") is refused.")

    def example(self, recipe: Recipe, files: dict[str, str]) -> Example | None:
        return None  # the whole file is its own example: the current file, shown in full

    def apply(self, reply: str, recipe: Recipe, files: dict[str, str]) -> Edit:
        written = fenced_files(reply, {name: files[name] for name in recipe.editable if name in files})
        if not written:
            raise EditError(f"the reply has no fenced block named by its file (```python {recipe.editable[0]})")
        changed, blocks = {}, []
        for name, content in written.items():
            content = with_head_restored(content, files[name])
            elided = [match.group(0).strip() for match in ELIDED_CODE.finditer(content)
                      if match.group(0).strip() not in files[name]]
            if elided:
                raise EditError(f"the {name} written back leaves code out ({elided[0]!r}): write out every line of "
                                "the file, the unchanged ones too")
            written_lines, current_lines = len(content.splitlines()), len(files[name].splitlines())
            if written_lines < current_lines * MIN_WRITTEN_SHARE:  # a fragment: only the lines it changed
                raise EditError(f"the {name} written back has {written_lines} lines where the current one has "
                                f"{current_lines}: write out every line of the file, the unchanged ones too")
            if name.endswith(".py"):
                try:
                    ast.parse(content)
                except SyntaxError as exc:  # it could only crash: said before it trains, with where
                    raise EditError(f"the {name} written back is not valid Python (line {exc.lineno}: {exc.msg}): "
                                    "write the whole file again, as Python only") from None
            if content != files[name]:
                changed[name] = content
                blocks += blocks_between(name, files[name], content)
        return Edit(parse_description(reply) or _first_changes(files, changed), changed, tuple(blocks),
                    parse_notes(reply))


class Knobs:
    name = "knobs"
    short_prompt = True
    reply_tokens: int | None = KNOBS_REPLY_TOKENS
    repair_hint = ("Answer again in the same form: DESCRIPTION, then one line per constant you change: its name, `=`, "
                   "its new value.")

    def instructions(self, recipe: Recipe) -> str:
        return ("Answer with a line `DESCRIPTION:` saying what you change and why in one line, then one line for "
                f"each constant you change (one to {MAX_KNOBS_CHANGED}): the constant's name, `=`, its new value, "
                "inside its range (the list gives values not tried yet beside each). Only the constants listed may "
                "change; nothing else is read.")

    def example(self, recipe: Recipe, files: dict[str, str]) -> Example | None:
        # None: the list of constants shows the form on real lines, with values not tried yet. An example change
        # is what a 1.5B model answered again and again after its first, refused each time (BENCHMARKS.md).
        return None

    def apply(self, reply: str, recipe: Recipe, files: dict[str, str]) -> Edit:
        knobs = knobs_of(recipe, files)
        values = parse_knobs(reply, knobs)
        if not values:
            raise EditError("the reply sets no constant: write one line per constant you change, its name, an equals "
                            "sign and its new value, with a name from the list")
        target = recipe.editable[0]
        source, changes, blocks = set_constants(files[target], values, target)
        if len(changes) > MAX_KNOBS_CHANGED:  # a small model given a list to choose from copied all of it
            raise EditError(f"the reply changes {len(changes)} constants; change at most {MAX_KNOBS_CHANGED} at a "
                            "time, so that the result says which change did what")
        changed = {target: source} if changes else {}
        return Edit(parse_description(reply) or ", ".join(changes), changed, tuple(blocks), parse_notes(reply))


FORMAT_OBJECTS = {format_.name: format_ for format_ in (SearchReplace(), Whole(), Knobs())}


def named(name: str):
    """The format called name (one of FORMATS)."""
    return FORMAT_OBJECTS[name]


def read_reply(name: str, reply: str, recipe: Recipe, files: dict[str, str]) -> Edit:
    """A reply in format `name`, applied to files; EditError (for the model) when it cannot be, echoes the reply
    form's example or placeholders, or changes nothing."""
    echoed = next((text for text in PLACEHOLDERS if text in reply.lower()), None)
    if echoed:
        raise EditError(f"the reply repeats the placeholder text {echoed!r} of an answer's form instead of a change "
                        "of your own: write your own change, in the form shown")
    format_ = named(name)
    edit = format_.apply(reply, recipe, files)
    if not edit.changed:
        raise EditError("the reply changes nothing: every value or line it gives is the current one")
    example = format_.example(recipe, files)
    if example is not None and example.values:
        target = recipe.editable[0]
        copied, _, _ = set_constants(files[target], example.values, target)
        if edit.changed == {target: copied}:
            raise EditError("the reply repeats the example of the answer's form word for word; the example only "
                            "shows the form: propose your own change")
    return edit


def example_text(name: str, recipe: Recipe, files: dict[str, str]) -> str:
    """The format's example as the prompt shows it ("" where it has none)."""
    example = named(name).example(recipe, files)
    return "" if example is None else example.text


def fenced_files(reply: str, files: dict[str, str]) -> dict[str, str]:
    """The files (of `files`, the editable ones) a reply writes back whole: each fenced block named by one (on its
    opening line or the line above it); with one editable file and no block named, the unnamed block with the
    most lines of that file (a small model pasted program.md in a block of its own before the file)."""
    lines = reply.splitlines(keepends=True)
    found: dict[str, str] = {}
    unnamed: list[str] = []
    index = 0
    while index < len(lines):
        opening = lines[index].strip()
        if not opening.startswith("```"):
            index += 1
            continue
        fence = opening[:len(opening) - len(opening.lstrip("`"))]
        end = next((i for i in range(index + 1, len(lines)) if lines[i].strip() == fence), None)
        # an opening line with a language inside the block: the block before it was never closed (a small model
        # opened one for program.md and began the file in another), so the file starts there
        reopened = next((i for i in range(index + 1, end or len(lines))
                         if lines[i].strip().startswith(fence) and lines[i].strip().strip("`").strip()), None)
        if reopened is not None:
            index = reopened
            continue
        if end is None:
            raise EditError("the file's fenced block is cut off: no closing ``` line")
        body = "".join(lines[index + 1:end])
        words = opening.strip("`").split() + (lines[index - 1].strip().strip("*:`#").split() if index else [])
        name = next((close for word in words if (close := _named(word, files))), None)
        if name:
            found[name] = body
        else:
            unnamed.append(body)
        index = end + 1
    if not found and len(files) == 1 and unnamed:
        name, current = next(iter(files.items()))
        current_lines = set(current.splitlines())
        best = max(unnamed, key=lambda body: sum(line in current_lines for line in body.splitlines()))
        if any(line.strip() and line in current_lines for line in best.splitlines()):
            found[name] = best
    return found


HEAD_MATCH_LINES = 3  # lines of a file written back that must match the current file's, in order, to place it


def with_head_restored(written: str, current: str) -> str:
    """A file written back from a line of the current file below its first, with the lines above it (unchanged,
    the docstring and imports) put back: a small model wrote the whole file from its first constants on, a
    training that could only crash. Anything else is returned as written."""
    lines, old = written.splitlines(keepends=True), current.splitlines(keepends=True)
    start = next((index for index, line in enumerate(lines) if line.strip()), None)
    if start is None:
        return written
    opening = lines[start:start + HEAD_MATCH_LINES]
    places = [index for index in range(1, len(old)) if old[index:index + len(opening)] == opening]
    if len(places) != 1 or any(line.strip() and line in lines for line in old[:places[0]]):
        return written
    return "".join(old[:places[0]] + lines[start:])


def _named(word: str, files: dict[str, str]) -> str | None:
    cleaned = word.strip("`*:'\"()")
    return next((name for name in files if cleaned == name or cleaned.endswith("/" + name)), None)


def _example_knob(recipe: Recipe, files: dict[str, str]) -> tuple[str, str, str] | None:
    """A real constant of the recipe and a value it could take: (name, current text, new text)."""
    for knob in knobs_of(recipe, files):
        tunable = knob.tunable
        current = float(knob.current.replace("_", ""))
        if tunable is not None and tunable.choices:
            new = next((c for c in tunable.choices if c != current), None)
        elif tunable is not None:
            new = tunable.high if current * 2 > tunable.high else current * 2
            new = int(new) if tunable.integer else new
        else:
            new = int(current * 2) if "." not in knob.current and "e" not in knob.current.lower() else current * 2
        if new is not None and new != current:
            return knob.name, knob.current, _plain(new)
    return None


def _constant_line(source: str, name: str) -> str:
    match = next(m for m in TOP_LEVEL_CONSTANT.finditer(source) if m.group("name") == name)
    return match.group(0)


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e6 and not isinstance(value, float) \
        else f"{value:g}"


def _first_changes(before: dict[str, str], changed: dict[str, str]) -> str:
    """A description for a whole file with none: its first changed line."""
    for name, content in changed.items():
        for block in blocks_between(name, before[name], content, context=0):
            new = [line.strip() for line in block.replace.splitlines() if line.strip()]
            return f"{name}: {new[0][:80]}" if new else f"{name}: lines removed"
    return ""
