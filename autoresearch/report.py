"""The morning report: one self-contained HTML page per run.

The summary, the progress chart (the PNG inlined as a data: URI), the table of experiments, and
for each experiment its outcome, numbers, diff and log tail in a collapsible <details> block. No
script, no font, no stylesheet or image from the network: the file opens anywhere, offline, and
can be mailed or attached to a ticket as it is. Everything from the ledger is HTML-escaped.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from autoresearch.console import (format_contention, format_cost, format_duration, format_metric, format_noise,
                                  format_tokens)
from autoresearch.quoting import printable_record
from autoresearch.review import explain_outcome
from autoresearch.gains import better_word
from autoresearch.views import describe_agents, format_gain, format_local_time

MAX_DIFF_LINES = 400
OUTCOME_CLASSES = ("keep", "discard", "crash", "timeout", "invalid", "interrupted", "running")

STYLE = """
:root { --keep: #1f9e48; --discard: #80868b; --crash: #d93025; --timeout: #9334e6; --invalid: #9aa0a6;
        --interrupted: #12b5cb; --running: #1a73e8; --line: #e8eaed; --muted: #5f6368; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #202124;
       margin: 0 auto; max-width: 1240px; padding: 24px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 10px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.meta { color: var(--muted); margin: 0 0 16px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 110px; }
.card .value { font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .label { color: var(--muted); font-size: 12px; }
figure { margin: 16px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #f8f9fa; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.reason, .reason { color: var(--muted); }
a { color: inherit; }
.outcome { font-weight: 600; white-space: nowrap; }
""" + "".join(f".o-{name} {{ color: var(--{name}); }}\n" for name in OUTCOME_CLASSES) + """
tr.row-keep td { background: #f1f8f3; }
details { border: 1px solid var(--line); border-radius: 6px; margin: 6px 0; }
details > summary { cursor: pointer; padding: 6px 10px; list-style-position: inside; }
details[open] > summary { border-bottom: 1px solid var(--line); }
details .body { padding: 8px 12px; }
pre { background: #f8f9fa; border-radius: 4px; padding: 8px; overflow-x: auto; font: 12px/1.4 ui-monospace,
      "SFMono-Regular", Menlo, Consolas, monospace; margin: 6px 0 12px; }
pre .add { color: #137333; background: #e6f4ea; display: inline-block; min-width: 100%; }
pre .del { color: #a50e0e; background: #fce8e6; display: inline-block; min-width: 100%; }
pre .hunk { color: #1967d2; }
pre .file { color: var(--muted); font-weight: 600; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0 0 8px; }
dt { color: var(--muted); }
dd { margin: 0; font-variant-numeric: tabular-nums; }
footer { color: var(--muted); font-size: 12px; margin-top: 32px; }
"""


def render_report(summary: dict, details: list[dict], plot_png: bytes | None, generated_at: str = "") -> str:
    """The whole page as one string."""
    summary, details = printable_record(summary), printable_record(details)  # control characters shown escaped
    metric = summary["metric"]
    tokens = summary["prompt_tokens"] + summary["completion_tokens"]
    parts = [
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        f"<title>autoresearch · run {escape(summary['tag'])}</title>\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        f"<style>{STYLE}</style>\n</head>\n<body>\n",
        f"<h1>run {escape(summary['tag'])}</h1>\n",
        f"<p class=\"meta\">{escape(summary['recipe'])} · {escape(metric)} ({better_word(summary['direction'])} is "
        f"better) · {escape(describe_agents(summary))} · sandbox {escape(summary.get('sandbox') or '-')} · "
        f"{escape(summary['status'])} · started "
        f"{escape(format_local_time(summary['started_at']))} · {escape(format_duration(summary['duration_seconds']))}</p>\n",
        "<div class=\"cards\">\n",
    ]
    cards = [("experiments", str(summary["experiments"])), ("kept", str(summary["kept"])),
             ("discarded", str(summary["discarded"])), ("crashed or timed out", str(summary["crashes"])),
             ("invalid", str(summary["invalid"])), (f"baseline {metric}", format_metric(summary["baseline_metric"])),
             (f"best {metric}", format_metric(summary["best_metric"])),
             ("gain over baseline", format_gain(summary["gain"]) or "-"),
             ("noise floor", format_noise(summary.get("noise_std"), summary.get("noise_runs") or 0)),
             ("keep margin (the gain a change must beat)",
              f"{summary['keep_margin']:.3g}" if summary.get("keep_margin") else "-"),
             ("tokens", format_tokens(tokens)), ("cost", format_cost(summary["cost_usd"], tokens))]
    for label, value in cards:
        parts.append(f"<div class=\"card\"><div class=\"value\">{escape(value)}</div>"
                     f"<div class=\"label\">{escape(label)}</div></div>\n")
    parts.append("</div>\n")
    if plot_png:
        encoded = base64.b64encode(plot_png).decode("ascii")
        parts.append(f"<figure><img src=\"data:image/png;base64,{encoded}\" alt=\"{escape(metric)} of every "
                     f"experiment of run {escape(summary['tag'])}, with the running best\"></figure>\n")
    parts.append(_experiments_table(details, metric))
    parts.append("<h2>Experiments one by one</h2>\n")
    kept = [d["number"] for d in details if d["outcome"] == "keep"]
    best = summary.get("best_number", kept[-1] if kept else None) if len(kept) > 1 else None
    # the page opens on the change that got the run where it is
    for detail in details:
        parts.append(_experiment_block(detail, summary, opened=detail["number"] == best))
    parts.append(f"<footer>made by autoresearch report{' on ' + escape(generated_at) if generated_at else ''}"
                 "</footer>\n</body>\n</html>\n")
    return "".join(parts)


def write_report(summary: dict, details: list[dict], plot_png: bytes | None, path: Path,
                 generated_at: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(summary, details, plot_png, generated_at), encoding="utf-8")
    return path


def _experiments_table(details: list[dict], metric: str) -> str:
    rows = [f"<h2>Experiments</h2>\n<table class=\"experiments\">\n<thead><tr><th>#</th><th>outcome</th>"
            f"<th>{escape(metric)}</th><th>gain</th><th>time</th><th>cost</th><th>description</th></tr></thead>\n<tbody>\n"]
    for detail in details:
        outcome = detail["outcome"]
        tokens = detail["prompt_tokens"] + detail["completion_tokens"]
        reason = f" <span class=\"reason\">— {escape(detail['reason'])}</span>" if detail["reason"] else ""
        rows.append(f"<tr class=\"row-{escape(outcome)}\"><td class=\"num\"><a href=\"#experiment-{detail['number']}\">"
                    f"{detail['number']}</a></td><td class=\"outcome o-{escape(outcome)}\">{escape(outcome)}</td>"
                    f"<td class=\"num\">{format_metric(detail['metric'])}</td>"
                    f"<td class=\"num\">{escape(format_gain(detail['gain']))}</td>"
                    f"<td class=\"num\">{escape(format_duration(detail['duration_seconds']))}</td>"
                    f"<td class=\"num\">{escape(format_cost(detail['cost_usd'], tokens))}</td>"
                    f"<td>{escape(detail['description'] or '')}{reason}</td></tr>\n")
    rows.append("</tbody>\n</table>\n")
    return "".join(rows)


def _experiment_block(detail: dict, summary: dict, opened: bool = False) -> str:
    outcome = detail["outcome"]
    tokens = detail["prompt_tokens"] + detail["completion_tokens"]
    result = format_metric(detail["metric"]) if detail["metric"] is not None else (detail["reason"] or "")
    head = (f"<details id=\"experiment-{detail['number']}\"{' open' if opened else ''}><summary>"
            f"<b>#{detail['number']}</b> <span class=\"outcome o-{escape(outcome)}\">{escape(outcome)}</span> · "
            f"{escape(detail['description'] or '(no description)')}"
            + (f" · <span class=\"reason\">{escape(result)}</span>" if result else "")
            + "</summary>\n<div class=\"body\">\n<dl>\n")
    facts = [("outcome", explain_outcome(detail, summary["metric"], summary["direction"])),
             ("commit", (detail["commit"] or "-")[:12] + (f" (parent {detail['parent'][:12]})" if detail["parent"] else "")),
             ("timings", f"proposing {format_duration(detail['propose_seconds'])}, training "
                         f"{format_duration(detail['train_seconds'])}, in all {format_duration(detail['duration_seconds'])}"),
             ("tokens", f"{detail['prompt_tokens']} prompt + {detail['completion_tokens']} completion, cost "
                        f"{format_cost(detail['cost_usd'], tokens)}")]
    runs = detail.get("training_runs") or []
    if runs:  # the machine while each training ran (contention, harness-measured): a busy one explains a timeout
        facts.append(("machine", "; ".join(
            f"{run['kind']} {format_contention(run.get('contention_seconds'), run['seconds'], run.get('other_gpu_processes'))}"
            for run in runs)))
    facts += [(name, format_metric(value)) for name, value in detail["summary"].items()]
    body = "".join(f"<dt>{escape(name)}</dt><dd>{escape(value)}</dd>\n" for name, value in facts)
    diff = (f"<pre class=\"diff\">{_diff_html(detail['diff'])}</pre>\n" if detail["diff"]
            else "<p class=\"reason\">no diff (the baseline, or no change could be applied)</p>\n")
    log = (f"<pre class=\"log\">{escape(detail['log_tail'])}</pre>\n" if detail["log_tail"]
           else "<p class=\"reason\">no log</p>\n")
    return f"{head}{body}</dl>\n<b>diff against its parent</b>\n{diff}<b>log tail</b>\n{log}</div>\n</details>\n"


def _diff_html(diff: str) -> str:
    """The unified diff, escaped, each line classed by what it is (file, hunk, added, removed)."""
    lines = diff.rstrip("\n").splitlines()
    cut = len(lines) - MAX_DIFF_LINES
    out = []
    for line in lines[:MAX_DIFF_LINES]:
        if line.startswith(("+++", "---", "diff ", "index ")):
            css = "file"
        elif line.startswith("@@"):
            css = "hunk"
        elif line.startswith("+"):
            css = "add"
        elif line.startswith("-"):
            css = "del"
        else:
            out.append(escape(line))
            continue
        out.append(f"<span class=\"{css}\">{escape(line)}</span>")
    if cut > 0:
        out.append(f"… {cut} more lines: autoresearch show")
    return "\n".join(out)
