"""How a run reports while it works: a Rich live panel on a terminal, plain lines elsewhere.

Domain code never prints: the loop calls a Reporter. `PlainReporter` writes one line per event to
stderr (log files, nohup, CI); `LiveReporter` keeps a live panel: the run, the experiment and its
phase (while proposing, how much the model has written of its streamed reply), a progress bar of
the training budget with the latest values the training printed (`name: value`, `name=value` or
`| name value |`), the best so far and its gain over the baseline, the counts of outcomes, the
tokens (and how many the server read from its prompt cache) and dollars spent on the LLM so far,
and the last few experiments.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections import Counter, deque

from rich.console import Console, Group
from rich.text import Text

from autoresearch import gains
from autoresearch.pricing import Usage
from autoresearch.quoting import printable

MAX_PROGRESS_VALUES = 6
BUSY_PHASES = ("training", "evaluating", "deciding")  # a slot's row shows no draft over these
OUTCOME_STYLES = {"keep": "green", "discard": "yellow", "crash": "red", "timeout": "magenta",
                  "invalid": "bright_black", "interrupted": "cyan", "running": "blue"}


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 experiment`, `2 experiments`: the count with its noun in the right number."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def times(count: int) -> str:
    """`once`, `2 times`."""
    return "once" if count == 1 else f"{count} times"


def format_metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def format_noise(std: float | None, runs: int) -> str:
    """The measured run-to-run spread of the metric, as the live view, `log` and `show` print it."""
    if std is None:
        return "not measured"
    if std == 0:
        return f"0 (the same value under {plural(runs, 'seed')})"
    return f"±{std:.3g} (std over {plural(runs, 'seeded run')})"


def format_contention(contention_seconds: float | None, seconds: float | None,
                      other_gpu_processes: int | None = None) -> str:
    """The machine while a training ran, as `show`, the report and the live view print it: the share of the
    machine other processes took (and how long), and the other processes on its GPU where that was known."""
    if contention_seconds is None:
        text = "-"
    else:
        share = contention_seconds / seconds if seconds else 0.0
        text = f"others {min(share, 1.0):.0%} ({contention_seconds:.0f}s)"
    if other_gpu_processes:
        text += f", GPU +{other_gpu_processes}"
    return text


def format_tokens(count: int | None) -> str:
    if not count:
        return "-"
    if count < 1000:
        return str(count)
    return f"{count / 1000:.1f}k" if count < 1_000_000 else f"{count / 1e6:.2f}M"


def format_cost(cost: float | None, tokens: int = 1) -> str:
    """Dollars; `-` when nothing was spent or the model has no price (a local endpoint)."""
    if cost is None or not tokens:
        return "-"
    return f"${cost:.4f}" if cost < 1 else f"${cost:.2f}"


PROGRESS_PAIR = re.compile(r"([A-Za-z_][\w./-]*)\s*[:=]\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?%?)(?![\w.])")
PROGRESS_SEGMENT = re.compile(r"^\s*([A-Za-z_][\w./-]*)\s+([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[%\w/]*)\s*$")


def progress_values(line: str) -> dict[str, str]:
    """The named numbers in one progress line: `loss: 3.2`, `lr=1e-3`, or `step 120 | loss 3.2` segments."""
    values = {match.group(1): match.group(2) for match in PROGRESS_PAIR.finditer(line)}
    if not values and "|" in line:
        for segment in line.split("|"):
            match = PROGRESS_SEGMENT.match(segment)
            if match:
                values[match.group(1)] = match.group(2)
    return values


def describe_usage(usage: Usage) -> str:
    """The LLM tokens and dollars of a run so far, in one phrase."""
    cached = f", {format_tokens(usage.cached_tokens)} of them cached" if usage.cached_tokens else ""
    return (f"tokens {format_tokens(usage.tokens)} ({format_tokens(usage.prompt_tokens)} in{cached}, "
            f"{format_tokens(usage.completion_tokens)} out), cost {format_cost(usage.cost_usd, usage.tokens)}")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def stop_writing_to(stream) -> None:
    """A stream whose reader went away (`| head`, a dead `tee`, a closed ssh) is pointed at /dev/null: what is
    written to it afterwards (this tool's lines, what is left in its buffer) goes nowhere, and the run goes on.
    An overnight run must not die of its progress lines."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, stream.fileno())
        finally:
            os.close(null)
    except (OSError, ValueError, AttributeError):  # no file descriptor (an in-memory stream): nothing to point
        pass


class Reporter:
    """The events of a run; this base class ignores them all."""

    def run_started(self, tag: str, recipe: str, metric: str, direction: str, budget: float, agent: str) -> None: ...
    def limits(self, max_experiments: int | None, done: int, seconds_left: float | None, slots: int = 1) -> None:
        """The run's limits as they stand when it starts: --max-experiments, the time --hours leaves, the slots."""
    def experiment_started(self, number: int) -> None: ...
    def phase(self, name: str, description: str | None = None, budget: float | None = None,
              grace: float | None = None, slot: int | None = None, number: int | None = None) -> None:
        """An experiment (`number`, default the one started last) entered a phase; on `slot` when it trains."""
    def training_output(self, line: str, slot: int | None = None) -> None: ...
    def drafting(self, numbers: list[int]) -> None:
        """The experiments whose proposals are being drafted now (while others train)."""
    def experiment_finished(self, row: dict, best: float | None, baseline: float | None) -> None: ...
    def noise_floor(self, std: float | None, runs: int) -> None: ...
    def keep_margin(self, margin: float | None) -> None:
        """The gain the next change must show over the best to be kept (beside the noise, it says why
        nothing is kept)."""
    def tokens_used(self, prompt_tokens: int, completion_tokens: int, cost: float | None,
                    cached_tokens: int = 0, number: int | None = None) -> None: ...
    def llm_writing(self, characters: int, number: int | None = None) -> None:
        """How much of its reply the model has written so far for experiment `number` (called from the
        thread reading the stream)."""
    def note(self, text: str) -> None: ...
    def close(self) -> None: ...

    def edit_format(self, tag: str, name: str, reason: str) -> None:
        """The edit format the agent writes in, and why (formats.choose_format), when the run starts."""
        self.note(f"run {tag}: edit format {name}" + (f": {reason}" if reason else "")
                  + ("; --edit-format chooses another" if reason and not reason.startswith("as set") else ""))

    def serial_beside_local_model(self, tag: str, url: str, shared: str) -> None:
        """No drafting ahead: the model server is on this machine and computes on what the trainings use."""
        remedy = ("pin the server to other cores (taskset)" if shared == "its CPU"
                  else "give the server another GPU (CUDA_VISIBLE_DEVICES) or the trainings other ones (--gpus)")
        self.note(f"run {tag}: the model server at {url} is on this machine and uses {shared}, as the trainings do, "
                  f"so nothing is proposed while a training runs (each would slow the other); {remedy} and give "
                  "--draft-ahead to draft ahead anyway")


def outcome_text(row: dict) -> str:
    """`crash: why`; the reason can quote the training's output, so its control characters are shown escaped."""
    return f"{row['outcome']}: {printable(row['reason'], keep_lines=False)}" if row.get("reason") else row["outcome"]


def format_margin(margin: float | None) -> str:
    """Why nothing is kept when changes look better: the gain the next one must show over the best."""
    return "" if margin is None else f"a change must gain more than {margin:.3g} over the best to be kept"


class RunProgress:
    """Where the run stands against its limits: experiments done of --max-experiments, time left of --hours."""

    def __init__(self):
        self.max_experiments: int | None = None
        self.done = 0
        self.deadline: float | None = None

    def set_limits(self, max_experiments: int | None, done: int, seconds_left: float | None) -> None:
        self.max_experiments, self.done = max_experiments, done
        self.deadline = None if seconds_left is None else time.monotonic() + seconds_left

    def finished(self, outcome: str) -> None:
        if outcome != "interrupted":  # what --max-experiments counts
            self.done += 1

    def describe(self) -> str:
        """`3 of 10 finished, 2h10m left`, or what of it is known; empty without limits. It counts what
        --max-experiments counts (ended, not interrupted), never an experiment's number: with several in
        flight or interrupted ones the two differ, and "experiment 3: started; experiment 2 of 5" read as a
        contradiction."""
        parts = []
        if self.max_experiments is not None:
            parts.append(f"{min(self.done, self.max_experiments)} of {self.max_experiments} finished")
        if self.deadline is not None:
            parts.append(f"{format_duration(max(0.0, self.deadline - time.monotonic()))} left")
        return ", ".join(parts)


class PlainReporter(Reporter):
    """One line per event on stderr."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.number: int | None = None  # until the first experiment starts (the endpoint check comes before it)
        self.tally = Usage()
        self.progress = RunProgress()
        self.margin: float | None = None
        self.many_slots = False
        self.closed = False  # the stream's reader went away: no more lines, the run goes on

    def _line(self, text: str) -> None:
        if self.closed:
            return
        try:
            print(f"[{time.strftime('%H:%M:%S')}] {printable(text, keep_lines=False)}", file=self.stream, flush=True)
        except OSError:  # EPIPE of a closed pipe, EIO of a terminal gone
            self.closed = True
            stop_writing_to(self.stream)

    def _experiment_line(self, text: str, number: int | None = None) -> None:
        number = self.number if number is None else number
        self._line(text if number is None else f"experiment {number}: {text}")

    def run_started(self, tag, recipe, metric, direction, budget, agent):
        self._line(f"run {tag}: recipe {recipe}, {metric} ({direction} is better), budget {budget:g}s, agent {agent}")

    def limits(self, max_experiments, done, seconds_left, slots=1):
        self.progress.set_limits(max_experiments, done, seconds_left)
        self.many_slots = slots > 1

    def experiment_started(self, number):
        self.number = number
        where = self.progress.describe()
        self._line(f"experiment {number}: started" + (" (baseline)" if number == 0 else "")
                   + (f"; {where}" if where else ""))

    def phase(self, name, description=None, budget=None, grace=None, slot=None, number=None):
        where = f" on slot {slot}" if slot is not None and self.many_slots else ""
        self._experiment_line(name + where + (f": {description}" if description else ""), number)

    def experiment_finished(self, row, best, baseline):
        self.progress.finished(row["outcome"])
        self._line(f"experiment {row['number']}: {outcome_text(row)}, {row['metric_name']} "
                   f"{format_metric(row.get('metric'))}, best {format_metric(best)}")

    def noise_floor(self, std, runs):
        self._line(f"noise floor: {format_noise(std, runs)}")

    def keep_margin(self, margin):
        if margin and margin != self.margin:
            self._experiment_line(format_margin(margin))
        self.margin = margin

    def tokens_used(self, prompt_tokens, completion_tokens, cost, cached_tokens=0, number=None):
        self.tally.add(prompt_tokens, completion_tokens, cost, cached_tokens)
        cached = f" ({cached_tokens} cached)" if cached_tokens else ""
        self._experiment_line(f"LLM call, {prompt_tokens}{cached} + {completion_tokens} tokens, "
                              f"{format_cost(cost, prompt_tokens + completion_tokens)}; run so far: "
                              f"{describe_usage(self.tally)}", number)

    def note(self, text):
        self._line(text)


class SlotView:
    """What one slot shows in the live panel: its experiment, phase, training bar and latest values."""

    def __init__(self):
        self.number: int | None = None
        self.phase_name = "starting"
        self.description = ""
        self.budget = 0.0
        self.grace: float | None = None
        self.phase_started = time.monotonic()
        self.training_started: float | None = None  # at the training's first line: start-up is not training
        self.last_output = ""
        self.progress: dict[str, str] = {}

    def output(self, line: str) -> None:
        if self.training_started is None:
            self.training_started = time.monotonic()
        self.last_output = printable(line.strip()[:200], keep_lines=False)  # the training's: shown, never interpreted
        values = progress_values(line)
        if values:
            for name in values:  # the names seen last come last, and the panel keeps the last few
                self.progress.pop(name, None)
            self.progress.update(values)
            while len(self.progress) > MAX_PROGRESS_VALUES:
                self.progress.pop(next(iter(self.progress)))

    def clock(self, elapsed: float) -> str:
        """`12/60s` while it trains; before its first line it is starting; past the budget it is finishing."""
        if self.training_started is None:
            return f"starting ({time.monotonic() - self.phase_started:.0f}s, no output yet)"
        if elapsed <= self.budget:
            return f"{elapsed:.0f}/{self.budget:g}s"
        if self.grace is None:
            return f"budget spent, finishing (+{elapsed - self.budget:.0f}s)"
        left = self.phase_started + self.budget + self.grace - time.monotonic()
        return f"budget spent, finishing (+{elapsed - self.budget:.0f}s; stopped in {max(0.0, left):.0f}s if still going)"


class LiveReporter(Reporter):
    """A Rich live panel, refreshed a few times a second."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.tag = self.recipe = self.metric = self.agent = ""
        self.started = time.monotonic()
        self.number: int | None = None
        self.budget = 0.0
        self.slots: dict[int, SlotView] = {}  # what each slot does now (a row each); slot 0 without slots
        self.drafts: list[int] = []
        self.run_progress = RunProgress()
        self.margin: float | None = None
        self.writing: dict[int, int] = {}  # characters of the reply the model is streaming now, per draft
        self.on_slot: dict[int, int] = {}  # the slot each experiment trained on last
        self.tally = Usage()
        self.best: float | None = None
        self.baseline: float | None = None
        self.noise: str | None = None
        self.direction = "lower"
        self.counts: Counter[str] = Counter()
        self.recent: deque[dict] = deque(maxlen=5)
        from rich.live import Live  # the panel's modules load only when there is a panel (not for log or runs)

        self.live = Live(get_renderable=self._render, console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def run_started(self, tag, recipe, metric, direction, budget, agent):
        self.tag, self.recipe, self.metric, self.direction, self.agent = tag, recipe, metric, direction, agent
        self.budget = budget

    def limits(self, max_experiments, done, seconds_left, slots=1):
        self.run_progress.set_limits(max_experiments, done, seconds_left)

    def experiment_started(self, number):
        self.number = number

    def phase(self, name, description=None, budget=None, grace=None, slot=None, number=None):
        number = self.number if number is None else number
        slot = self.on_slot.get(number) if slot is None else slot
        if slot is None:  # not on a slot yet (proposing): a slot's row shows it only while no other is busy
            if name not in BUSY_PHASES and any(view.phase_name in BUSY_PHASES and view.number != number
                                               for view in self.slots.values()):
                return
            slot = 0
        if name in BUSY_PHASES:
            self.on_slot[number] = slot
        view = self.slots.setdefault(slot, SlotView())
        if view.number != number:
            view.description = "the unmodified recipe (baseline)" if number == 0 else ""
        view.number, view.phase_name, view.phase_started = number, name, time.monotonic()
        self.writing.pop(number, None)
        if description:
            view.description = description
        view.budget = budget if budget is not None else (view.budget or self.budget)
        view.grace = grace
        if name == "training":  # a new training: nothing of the one before stays beside its bar
            view.training_started = None
            view.last_output = ""
            view.progress = {}

    def training_output(self, line, slot=None):
        self.slots.setdefault(slot or 0, SlotView()).output(line)

    def drafting(self, numbers):
        self.drafts = list(numbers)

    def tokens_used(self, prompt_tokens, completion_tokens, cost, cached_tokens=0, number=None):
        self.tally.add(prompt_tokens, completion_tokens, cost, cached_tokens)
        self.writing.pop(self.number if number is None else number, None)

    def llm_writing(self, characters, number=None):
        self.writing[self.number if number is None else number] = characters

    def experiment_finished(self, row, best, baseline):
        self.best, self.baseline = best, baseline
        self.run_progress.finished(row["outcome"])
        self.counts[row["outcome"]] += 1
        self.recent.appendleft(row)

    def noise_floor(self, std, runs):
        self.noise = format_noise(std, runs)

    def keep_margin(self, margin):
        self.margin = margin

    def note(self, text):
        self.console.print(printable(text), markup=False, highlight=False)

    def close(self):
        self.live.stop()

    def _render(self):
        from rich.panel import Panel
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        header = Table.grid(padding=(0, 2))
        where = self.run_progress.describe()
        header.add_row(Text(f"run {self.tag}", style="bold"), f"recipe {self.recipe}", f"agent {self.agent}",
                       f"elapsed {format_duration(time.monotonic() - self.started)}" + (f" · {where}" if where else ""))
        lines = [header]
        for slot, view in sorted(self.slots.items()):
            where = f"slot {slot} · " if len(self.slots) > 1 else ""
            lines.append(Text(f"{where}experiment {view.number} · {view.phase_name} · {view.description}",
                              style="cyan"))
            if view.phase_name == "proposing" and view.number in self.writing:
                lines.append(Text(f"the model is writing its reply: {self.writing[view.number]:,} characters so far "
                                  f"({format_duration(time.monotonic() - view.phase_started)})", style="dim"))
            if view.phase_name == "training" and view.budget:
                bar = Table.grid(padding=(0, 1))
                latest = "  ".join(f"{name} {value}" for name, value in view.progress.items()) or view.last_output
                elapsed = 0.0 if view.training_started is None else time.monotonic() - view.training_started
                bar.add_row(ProgressBar(total=view.budget, completed=min(elapsed, view.budget), width=40),
                            view.clock(elapsed), Text(latest, overflow="ellipsis", no_wrap=True))
                lines.append(bar)
        if self.drafts:
            lines.append(Text("drafting: " + ", ".join(
                f"experiment {number}" + (f" ({self.writing[number]:,} characters written)"
                                          if number in self.writing else "") for number in self.drafts),
                style="dim"))
        gain = ""
        if self.best is not None and self.baseline is not None:
            gain = f" (gain {gains.gain(self.best, self.baseline, self.direction):+.4g} over baseline)"
        counts = ", ".join(f"{self.counts[k]} {k}" for k in ("keep", "discard", "crash", "timeout", "invalid")
                           if self.counts[k])
        noise = f"   noise {self.noise}" if self.noise else ""
        if self.margin:
            noise += f" ({format_margin(self.margin)})"
        lines.append(Text(f"best {self.metric} {format_metric(self.best)}{gain}{noise}   {counts}"))
        if self.tally.prompt_tokens or self.tally.completion_tokens:
            lines.append(Text(f"LLM {describe_usage(self.tally)}", style="dim"))
        if self.recent:
            recent = Table(show_header=False, box=None, padding=(0, 1))
            for row in self.recent:
                recent.add_row(str(row["number"]), Text(outcome_text(row), style=OUTCOME_STYLES.get(row["outcome"], "")),
                               format_metric(row.get("metric")), printable(row.get("description") or "", keep_lines=False))
            lines.append(recent)
        return Panel(Group(*lines), title="autoresearch", border_style="blue")

def make_reporter(console: Console | None = None) -> Reporter:
    """Live on an interactive terminal, plain lines otherwise (files, nohup, CI)."""
    console = console or Console(stderr=True)
    if console.is_terminal and not console.is_dumb_terminal:
        return LiveReporter(console)
    return PlainReporter()
