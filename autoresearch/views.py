"""How the review commands look on a terminal: the experiment listing, the runs table, one experiment.

Listings are laid out here as aligned plain text, one line per row, coloured with ANSI codes only
when the output is a terminal: a Rich Table measures every cell and takes seconds for 10,000
experiments, and a listing that long is mostly read through a pager or grep anyway. `show` is built
the same way, its diff coloured by line. Nothing is ever wrapped: what a pipe or a file receives is
what the ledger holds, line for line. Nothing here reads the ledger or prints.
"""

from __future__ import annotations

from datetime import datetime
from typing import Callable

from rich.color import ColorSystem
from rich.console import Console
from rich.style import Style

from autoresearch.console import (OUTCOME_STYLES, format_contention, format_cost, format_duration, format_metric, format_noise,
                                  format_tokens, plural)
from autoresearch.gains import better_word
from autoresearch.ledger import ENDPOINT_CHECK_ATTEMPT
from autoresearch.review import explain_outcome

Paint = Callable[[str, str], str]
RULE_WIDTH = 100  # a section rule's width when the output is not a terminal
STATUS_STYLES = {"running": "blue", "finished": "green", "interrupted": "cyan", "stopped": "yellow", "failed": "red"}
_COLOR_SYSTEMS = {"standard": ColorSystem.STANDARD, "256": ColorSystem.EIGHT_BIT, "truecolor": ColorSystem.TRUECOLOR,
                  "windows": ColorSystem.WINDOWS}


def painter(console: Console) -> Paint:
    """A function that colours a string for this console: ANSI on a colour terminal, nothing elsewhere."""
    system = _COLOR_SYSTEMS.get(console.color_system or "") if console.is_terminal else None
    if system is None:
        return no_paint
    cache: dict[str, Style] = {}

    def paint(text: str, style: str) -> str:
        if not style or not text:
            return text
        if style not in cache:
            cache[style] = Style.parse(style)
        return cache[style].render(text, color_system=system)

    return paint


def no_paint(text: str, style: str) -> str:
    return text


# --- small formats

def format_gain(value: float | None) -> str:
    return "" if value is None else f"{value:+.4g}"


def format_local_time(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


# --- aligned plain-text tables

def aligned_lines(header: list[str], rows: list[list[str]], right: set[int], styles: list[list[str]] | None = None,
                  paint: Paint = no_paint, width: int | None = None) -> list[str]:
    """Columns padded to their widest cell, two spaces apart; the last column is free text cut to `width`."""
    columns = list(zip(header, *rows))
    widths = [max(map(len, column)) for column in columns[:-1]]
    room = None if width is None else max(10, width - sum(widths) - 2 * len(widths))

    def cut(text: str) -> str:
        return text if room is None or len(text) <= room else text[:room - 1] + "…"

    if paint is no_paint or styles is None:
        template = "  ".join(("{:>%d}" if index in right else "{:<%d}") % w for index, w in enumerate(widths)) + "  {}"
        return [template.format(*cells[:-1], cut(cells[-1])).rstrip() for cells in [header, *rows]]

    def line(cells: list[str], cell_styles: list[str]) -> str:
        parts = [paint(cell.rjust(w) if index in right else cell.ljust(w), cell_styles[index])
                 for index, (cell, w) in enumerate(zip(cells, widths))]
        parts.append(paint(cut(cells[-1]), cell_styles[-1]))
        return "  ".join(parts).rstrip()

    return [line(header, ["bold"] * len(header))] + [line(row, row_styles) for row, row_styles in zip(rows, styles)]


# --- log

def agent_name(agent: str | None, model: str | None) -> str:
    """`llm (gpt-5-mini)`, `mutate`: an agent as the listings name it."""
    return (agent or "-") + (f" ({model})" if model and agent != "mutate" else "")


def describe_agents(summary: dict, numbers: bool = True) -> str:
    """Which agent made the run's experiments: `agent llm (gpt-5-mini)`, or each stretch after a switch."""
    stretches = summary.get("agents") or [{"agent": summary["agent"], "model": summary["model"]}]
    if len(stretches) == 1:
        return f"agent {agent_name(stretches[0]['agent'], stretches[0]['model'])}"
    if not numbers:
        return "agents " + ", ".join(agent_name(s["agent"], s["model"]) for s in stretches)
    return "agents " + ", ".join(f"{agent_name(s['agent'], s['model'])} for "
                                 + (f"{s['first']}" if s["first"] == s["last"] else f"{s['first']}-{s['last']}")
                                 for s in stretches)


def log_title(summary: dict) -> str:
    return (f"run {summary['tag']} · {summary['recipe']} · {summary['metric']} ({better_word(summary['direction'])} is "
            f"better) · {describe_agents(summary)} · sandbox {summary.get('sandbox') or '-'} · {summary['status']}")


def log_lines(records: list[dict], summary: dict, paint: Paint = no_paint, width: int | None = None) -> list[str]:
    """The listing of experiments: one line each, then a line of totals.

    `parent` is the experiment each was drafted from; a `slot` column (and the GPU of each) appears
    when the run trained on more than one slot or on named GPUs.
    """
    with_slots = any(record.get("device") is not None or (record.get("slot") or 0) > 0 for record in records)
    header = ["#", "commit", "parent", *(["slot"] if with_slots else []), "outcome", summary["metric"], "gain", "time",
              "tokens", "cost", "description"]
    rows, styles = [], []
    for record in records:
        tokens = record["prompt_tokens"] + record["completion_tokens"]
        description = record["description"] or ""
        if record["reason"]:
            description = f"{description} — {record['reason']}" if description else record["reason"]
        parent = "-" if record.get("parent_number") is None else str(record["parent_number"])
        place = [format_place(record.get("slot"), record.get("device"))] if with_slots else []
        rows.append([str(record["number"]), (record["commit"] or "-")[:7], parent, *place, record["outcome"],
                     format_metric(record["metric"]), format_gain(record["gain"]),
                     format_duration(record["duration_seconds"]), format_tokens(tokens),
                     format_cost(record["cost_usd"], tokens), description])
        if paint is not no_paint:
            outcome_style = OUTCOME_STYLES.get(record["outcome"], "")
            styles.append(["", "dim", "dim", *(["dim"] if with_slots else []), outcome_style,
                           "bold" if record["outcome"] == "keep" else "", "", "dim", "dim",
                           "dim", "" if record["outcome"] in ("keep", "discard") else outcome_style])
    shift = 1 if with_slots else 0
    lines = [paint(log_title(summary), "bold"),
             *aligned_lines(header, rows, {0, 2, 4 + shift, 5 + shift, 6 + shift, 7 + shift, 8 + shift},
                            styles or None, paint, width)]
    lines.append(totals_line(summary, shown=len(records)))
    return lines


def format_place(slot: int | None, device: str | None) -> str:
    """Where a training ran: its slot, and its GPU when it had one (`1 (GPU 3)`); `-` if it never trained."""
    if slot is None:
        return "-"
    return f"{slot} (GPU {device})" if device is not None else str(slot)


def totals_line(summary: dict, shown: int | None = None) -> str:
    gain = format_gain(summary["gain"]) or "-"
    tokens = summary["prompt_tokens"] + summary["completion_tokens"]
    showing = f" (showing {shown})" if shown is not None and shown != summary["experiments"] else ""
    return (f"{plural(summary['experiments'], 'experiment')}{showing}, {summary['kept']} kept, "
            f"{summary['discarded']} discarded, {summary['crashes']} crashed or timed out, {summary['invalid']} invalid; "
            f"best {summary['metric']} {format_metric(summary['best_metric'])}, gain over baseline {gain}; "
            f"tokens {format_tokens(tokens)}, "
            f"cost {format_cost(summary['cost_usd'], tokens)}"
            + (f"; noise floor {format_noise(summary['noise_std'], summary['noise_runs'])}"
               if summary.get("noise_runs") else ""))


# --- runs

def runs_lines(summaries: list[dict], paint: Paint = no_paint) -> list[str]:
    """Every run of the workspace, one line each, oldest first."""
    header = ["tag", "started", "duration", "experiments", "kept", "crashes", "metric", "best", "gain", "cost", "duty",
              "agent", "sandbox", "status", "verify"]
    rows, styles = [], []
    for summary in summaries:
        tokens = summary["prompt_tokens"] + summary["completion_tokens"]
        rows.append([summary["tag"], format_local_time(summary["started_at"]), format_duration(summary["duration_seconds"]),
                     str(summary["experiments"]), str(summary["kept"]), str(summary["crashes"]), summary["metric"],
                     format_metric(summary["best_metric"]), format_gain(summary["gain"]) or "-",
                     format_cost(summary["cost_usd"], tokens), format_duty(summary.get("duty_cycle")),
                     describe_agents(summary, numbers=False).split(" ", 1)[1], summary.get("sandbox") or "-",
                     summary["status"],
                     format_verification(summary.get("verification"))])
        styles.append(["bold", "", "", "", "green", "red" if summary["crashes"] else "", "", "", "", "", "", "",
                       "" if summary.get("sandbox") == "bubblewrap" else "yellow", STATUS_STYLES.get(summary["status"], ""), VERDICT_STYLES.get(
                           (summary.get("verification") or {}).get("verdict"), "")])
    return aligned_lines(header, rows, {2, 3, 4, 5, 7, 8, 9, 10}, styles, paint)


def format_duty(duty_cycle: float | None) -> str:
    """The share of slot time spent training, as a percentage (review.duty_cycle)."""
    return "-" if duty_cycle is None else f"{duty_cycle:.0%}"


VERDICT_STYLES = {"holds": "green", "overfit": "red", "noise": "red", "inconclusive": "yellow", "unconfirmed": "yellow",
                  "failed": "magenta"}


def format_verification(verification: dict | None) -> str:
    """The latest `verify` of a run: its verdict and the gain on test, e.g. `holds (test +0.021)`."""
    if not verification:
        return "-"
    test = f" (test {format_gain(verification['test_gain'])})" if verification.get("test_gain") is not None else ""
    return f"{verification['verdict']}{test}"


# --- show

def experiment_lines(detail: dict, summary: dict, with_prompt: bool = False, paint: Paint = no_paint,
                     width: int = RULE_WIDTH) -> list[str]:
    """One experiment whole: what it tried, what came of it and why, its numbers, its diff and log.

    Plain lines, coloured only by `paint`, never wrapped: a diff line, a log line or a prompt line
    reaches a pipe or a file as it is (`show --prompt > file` keeps the exact prompt).
    """
    metric = summary["metric"]
    lines = [paint(f"experiment {detail['number']} of run {detail['tag']} · {summary['recipe']}", "bold")]
    facts: list[tuple[str, str, str]] = [
        ("description", detail["description"] or "-", ""),
        ("outcome", explain_outcome(detail, metric, summary["direction"]), OUTCOME_STYLES.get(detail["outcome"], "")),
    ]
    if detail["metric"] is not None:
        against = ""
        if detail["gain"] is not None:
            against = (f" (gain {format_gain(detail['gain'])} over the best before it, "
                       f"{format_metric(detail['best_before'])})")
        facts.append(("metric", f"{metric} {format_metric(detail['metric'])}{against}", "bold"))
    decision = describe_decision(detail.get("decision"))
    if decision:
        facts.append(("decision", decision, ""))
    commit = detail["commit"] or "-"
    if detail["parent"]:
        drafted_from = "" if detail.get("parent_number") is None else f", experiment {detail['parent_number']}"
        commit += f" (parent {detail['parent'][:12]}{drafted_from})"
    facts.append(("commit", commit, ""))
    if detail.get("slot") is not None:
        facts.append(("slot", format_place(detail["slot"], detail.get("device")), ""))
    facts.append(("timings", f"proposing {format_seconds(detail['propose_seconds'])}, training "
                             f"{format_seconds(detail['train_seconds'])}, in all {format_seconds(detail['duration_seconds'])}"
                             f"; started {format_local_time(detail['started_at'])}", ""))
    tokens = detail["prompt_tokens"] + detail["completion_tokens"]
    calls = detail["llm_calls"]
    cached = f" ({detail['cached_tokens']} of them cached)" if detail.get("cached_tokens") else ""
    facts.append(("tokens", f"{detail['prompt_tokens']} prompt{cached} + {detail['completion_tokens']} completion in "
                            f"{plural(len(calls), 'LLM call')}; cost {format_cost(detail['cost_usd'], tokens)}", ""))
    facts.append(("agent", agent_name(detail.get("agent"), detail.get("model")), ""))
    facts.append(("seed", "-" if detail["seed"] is None else str(detail["seed"]), ""))
    lines += fact_lines(facts, paint)

    if detail.get("evaluation"):
        lines.append(rule("the harness's evaluation of its model", paint, width))
        lines += fact_lines([(name, format_metric(value), "") for name, value in detail["evaluation"].items()], paint)
    if detail["summary"]:
        lines.append(rule("what the training printed (information, not the metric)", paint, width))
        lines += fact_lines([(name, format_metric(value), "") for name, value in detail["summary"].items()], paint)
    if detail["training_runs"]:
        lines.append(rule("training runs", paint, width))
        lines += training_run_lines(detail["training_runs"])

    lines.append(rule("diff against its parent", paint, width))
    if detail["diff"]:
        lines += [paint(line, diff_style(line)) for line in detail["diff"].rstrip("\n").splitlines()]
    elif detail["number"] == 0:
        lines.append(paint("none: the baseline is the unmodified recipe", "dim"))
    else:
        lines.append(paint("none: no change was proposed that could be applied", "dim"))

    lines.append(rule("log tail" + (f" ({detail['log_path']})" if detail["log_path"] else ""), paint, width))
    if detail["log_tail"]:
        lines += detail["log_tail"].splitlines()
    else:
        lines.append(paint("the training printed nothing" if detail["log_tail"] == "" else "no log: it never trained",
                           "dim"))

    if detail.get("notes"):
        lines.append(rule("the agent's notes (shown to it in the next prompts)", paint, width))
        lines += detail["notes"].splitlines()

    if with_prompt:
        lines += call_lines(calls, paint, width)
        if not calls:
            lines.append(rule("prompt", paint, width))
            lines.append(paint("no LLM call for this experiment", "dim"))
    return lines


def call_lines(calls: list[dict], paint: Paint = no_paint, width: int = RULE_WIDTH) -> list[str]:
    """Every LLM call of an experiment with its prompt and reply; a call that goes on an earlier one's
    conversation shows only its new turns.

    Proposal calls are numbered in order across the proposal's restarts (after a failed call the
    loop asks again from the first prompt, and the agent's own attempts count from 1 again).
    """
    lines: list[str] = []
    shown: list[tuple[str, list]] = []  # (name, messages) of the calls above
    proposals = 0
    for call in calls:
        if call["attempt"] == ENDPOINT_CHECK_ATTEMPT:
            name = "endpoint check"
        else:
            proposals += 1
            restarted = call["attempt"] == 1 and proposals > 1
            name = f"LLM call {proposals} (attempt {call['attempt']}{', asked again from the start' if restarted else ''})"
        lines.append(rule(f"{name} · {call['model']} · {describe_call(call)}", paint, width))
        messages = call.get("messages") or []
        earlier = next(((title, len(before)) for title, before in reversed(shown)
                        if before and messages[:len(before)] == before), None)
        if earlier is not None:
            lines.append(paint(f"(the {plural(earlier[1], 'message')} of {earlier[0]}, then:)", "dim"))
        for message in messages[earlier[1] if earlier else 0:]:
            lines.append(paint(f"[{message.get('role', '?')}]", "bold cyan"))
            lines += str(message.get("content", "")).splitlines()
        lines.append(paint("[reply]", "bold green"))
        reply = call["reply"] if call.get("reply") is not None else f"(no reply: {call['error']})"
        if call.get("reply") is not None and call.get("error"):
            reply += f"\n(then the call failed: {call['error']})"
        lines += reply.splitlines()
        shown.append((name.split(" (")[0], messages))
        if call.get("reply") is not None:  # a repair turn goes on with the reply as it was (or shortened)
            shown.append((name.split(" (")[0], messages + [{"role": "assistant", "content": call["reply"]}]))
    return lines


def describe_call(call: dict) -> str:
    """`4,210+380 tokens (3,900 cached) · 12.3s · stop`: its tokens, its latency and why the model stopped."""
    cached = f" ({call['cached_tokens']:,} cached)" if call.get("cached_tokens") else ""
    ended = "failed" if call.get("error") else (call.get("finish_reason") or "finish reason not recorded")
    latency = format_seconds(call.get("latency_seconds"))
    return f"{call['prompt_tokens'] or 0}+{call['completion_tokens'] or 0} tokens{cached} · {latency} · {ended}"


def diff_style(line: str) -> str:
    if line.startswith(("+++", "---", "diff ")):
        return "bold"
    if line.startswith("@@"):
        return "cyan"
    if line.startswith("+"):
        return "green"
    if line.startswith("-"):
        return "red"
    return ""


def rule(title: str, paint: Paint = no_paint, width: int = RULE_WIDTH) -> str:
    """A section heading: `── title ───…` as wide as the terminal (a fixed width where there is none)."""
    head = f"── {title} "
    return paint(head + "─" * max(3, width - len(head)), "dim")


def fact_lines(facts: list[tuple[str, str, str]], paint: Paint = no_paint) -> list[str]:
    """`name  value` lines with the names padded to one width."""
    width = max(len(name) for name, _, _ in facts)
    return [paint(name.ljust(width + 2), "bold") + paint(value, style) for name, value, style in facts]


def describe_decision(decision: dict | None) -> str | None:
    """The keep rule's numbers for one experiment: gain against the margin, the noise, each run's metric."""
    if not decision:
        return None
    parts = [str(decision.get("verdict") or "-")]
    if decision.get("gain") is not None:
        parts.append(f"gain {decision['gain']:+.4g}")
    if decision.get("margin") is not None:
        parts.append(f"margin {decision['margin']:.4g}")
    if decision.get("noise") is not None:
        parts.append(f"standard error {decision['noise']:.3g}")
    runs = decision.get("metrics") or []
    if runs:
        best = decision.get("best_runs")
        against = f" (best commit: {plural(best, 'run')})" if best else ""
        parts.append(f"runs: {', '.join(map(format_metric, runs))}{against}")
    return ", ".join(parts)


def training_run_lines(runs: list[dict]) -> list[str]:
    """Every training run of an experiment: the first, and its noise or confirmation runs."""
    header = ["attempt", "kind", "seed", "slot", "outcome", "metric", "training", "evaluation", "machine", "sandbox",
              "reason"]
    rows = [[str(run["attempt"]), run["kind"], str(run["seed"]), format_place(run.get("slot"), run.get("device")),
             run["outcome"], format_metric(run["metric"]), format_seconds(run["seconds"]),
             format_seconds(run.get("evaluation_seconds")),
             format_contention(run.get("contention_seconds"), run["seconds"], run.get("other_gpu_processes")),
             run.get("sandbox") or "-", run["reason"] or ""]
            for run in runs]
    return aligned_lines(header, rows, {0, 2, 5, 6, 7})


def format_seconds(seconds: float | None) -> str:
    """Like format_duration, with a tenth of a second below ten seconds."""
    if seconds is not None and seconds < 9.95:
        return f"{seconds:.1f}s"
    return format_duration(seconds)
