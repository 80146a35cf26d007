"""The progress chart of a run, as a PNG: matplotlib's Agg canvas, no display and no pyplot state.

Every experiment's metric over its number, coloured by outcome; crashes, timeouts and invalid
proposals (which have no metric) as marks along the x axis; the running best as a step line; each
kept experiment labelled with its description. Readable from 5 experiments to 500: markers shrink
as experiments grow, the y range follows the kept experiments so one wild discard cannot flatten
the curve (points beyond it sit on the edge as triangles), and past MAX_LABELS kept experiments
only the largest gains are labelled, which the chart says.
"""

from __future__ import annotations

import io
import itertools
import math
from pathlib import Path

from autoresearch.gains import better_word, gain

OUTCOME_COLORS = {"keep": "#1f9e48", "discard": "#9aa0a6", "crash": "#d93025", "timeout": "#9334e6",
                  "invalid": "#bdc1c6", "interrupted": "#12b5cb"}
AXIS_MARKS = {"crash": "x", "timeout": "v", "invalid": "+", "interrupted": "."}
MAX_LABELS = 25
LABEL_CHARACTERS = 48
WIDTH_INCHES, HEIGHT_INCHES, DPI = 12.0, 6.5, 100


def render_plot(records: list[dict], summary: dict) -> bytes:
    """The chart as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(WIDTH_INCHES, HEIGHT_INCHES), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    lower = summary["direction"] == "lower"
    finished = [r for r in records if r["outcome"] != "running"]
    measured = [r for r in finished if r["outcome"] in ("keep", "discard") and _finite(r["metric"])]
    kept = [r for r in measured if r["outcome"] == "keep"]
    size = _marker_size(len(finished))
    low, high = _y_range([r["metric"] for r in kept], [r["metric"] for r in measured])

    for outcome, zorder in (("discard", 2), ("keep", 4)):
        points = [r for r in measured if r["outcome"] == outcome]
        inside = [r for r in points if low <= r["metric"] <= high]
        axes.scatter([r["number"] for r in inside], [r["metric"] for r in inside], s=size * (1.6 if outcome == "keep" else 1),
                     color=OUTCOME_COLORS[outcome], edgecolors="white" if outcome == "keep" else "none",
                     linewidths=0.6, alpha=1.0 if outcome == "keep" else 0.75, zorder=zorder)
        above = [r["number"] for r in points if r["metric"] > high]
        below = [r["number"] for r in points if r["metric"] < low]
        axes.scatter(above, [high] * len(above), marker="^", s=size, color=OUTCOME_COLORS[outcome], zorder=zorder,
                     clip_on=False)
        axes.scatter(below, [low] * len(below), marker="v", s=size, color=OUTCOME_COLORS[outcome], zorder=zorder,
                     clip_on=False)

    last_number = max((r["number"] for r in finished), default=0)
    if kept:
        # The running best: with experiments in flight at once, one kept later can carry a lower number.
        running = list(itertools.accumulate((r["metric"] for r in kept), min if summary["direction"] == "lower"
                                            else max))
        xs = [r["number"] for r in kept] + [last_number]
        ys = running + [running[-1]]
        axes.step(xs, ys, where="post", color=OUTCOME_COLORS["keep"], linewidth=1.6, alpha=0.9, zorder=3)

    on_axis = axes.get_xaxis_transform()  # x in data, y in axes fractions: marks sit on the x axis
    for outcome, marker in AXIS_MARKS.items():
        numbers = [r["number"] for r in finished if r["outcome"] == outcome]
        if numbers:
            axes.scatter(numbers, [0.015] * len(numbers), transform=on_axis, marker=marker, s=size * 1.4,
                         color=OUTCOME_COLORS[outcome], linewidths=1.2, zorder=5, clip_on=False)

    labelled = labelled_experiments(kept, summary["direction"])
    for record in labelled:
        text = _short(record["description"] or f"experiment {record['number']}")
        axes.annotate(f"{record['number']}: {text}", (record["number"], record["metric"]), xytext=(5, 7),
                      textcoords="offset points", fontsize=7, rotation=28, rotation_mode="anchor",
                      ha="left", va="bottom", color="#202124", zorder=6,
                      bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.7})

    axes.set_ylim(low, high)
    axes.set_xlim(-0.5 - last_number * 0.01, last_number + 0.5 + max(1.0, last_number * 0.12))
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("experiment")
    axes.set_ylabel(f"{summary['metric']} ({better_word(summary['direction'])} is better)")
    axes.grid(True, color="#e8eaed", linewidth=0.8, zorder=0)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)

    counts = {o: sum(r["outcome"] == o for r in finished) for o in OUTCOME_COLORS}
    handles = [Line2D([], [], marker="o", linestyle="", color=OUTCOME_COLORS[o], label=f"{o} ({counts[o]})")
               for o in ("keep", "discard") if counts[o]]
    handles += [Line2D([], [], marker=AXIS_MARKS[o], linestyle="", color=OUTCOME_COLORS[o],
                       label=f"{o} ({counts[o]}, on the axis)") for o in AXIS_MARKS if counts[o]]
    if kept:
        handles.append(Line2D([], [], color=OUTCOME_COLORS["keep"], linewidth=1.6, label="running best"))
    axes.legend(handles=handles, loc="upper right" if lower else "lower right", fontsize=8, framealpha=0.9)

    gain = summary.get("gain")
    gain_text = f"gain {gain:+.4g} {summary['metric']}" if gain is not None else "no gain yet"
    figure.suptitle(f"run {summary['tag']}: {summary['experiments']} experiments, {summary['kept']} kept, {gain_text}",
                    fontsize=13, fontweight="bold", x=0.06, ha="left")
    note = f"{summary['recipe']} · agent {summary['agent']}" + (f" ({summary['model']})" if summary.get("model") else "")
    if len(labelled) < len(kept):
        note += f" · labels: the {len(labelled)} largest of {len(kept)} kept gains"
    axes.set_title(note, fontsize=9, color="#5f6368", loc="left")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def write_plot(records: list[dict], summary: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(render_plot(records, summary))
    return path


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _marker_size(count: int) -> float:
    """Area in points²: big dots for a handful of experiments, small ones for hundreds."""
    if count <= 30:
        return 48.0
    if count <= 120:
        return 26.0
    return max(6.0, 26.0 * math.sqrt(120 / count))


def _y_range(kept: list[float], measured: list[float]) -> tuple[float, float]:
    """Limits that show every kept metric and the discards near them; far outliers land on the edge."""
    if not measured:
        return 0.0, 1.0
    anchor = kept or measured
    low, high = min(anchor), max(anchor)
    span = high - low
    if span == 0:
        ordered = sorted(measured)
        spread = ordered[int(0.9 * (len(ordered) - 1))] - ordered[int(0.1 * (len(ordered) - 1))]
        span = max(abs(high) * 0.01, spread, 1e-9)
    reach_low, reach_high = low - 3 * span, high + 3 * span
    near = [v for v in measured if reach_low <= v <= reach_high]
    low, high = min(near + anchor), max(near + anchor)
    pad = (high - low) * 0.06 or span * 0.5
    return low - pad * 1.6, high + pad * 2.5  # room below for the marks on the axis, above for the labels


def labelled_experiments(kept: list[dict], direction: str) -> list[dict]:
    """Every kept experiment, or past MAX_LABELS the baseline and the largest gains."""
    if len(kept) <= MAX_LABELS:
        return kept
    gains = []
    for previous, record in zip(kept, kept[1:]):
        gains.append((gain(record["metric"], previous["metric"], direction), record["number"]))
    chosen = {number for _, number in sorted(gains, reverse=True)[:MAX_LABELS - 1]} | {kept[0]["number"]}
    return [r for r in kept if r["number"] in chosen]


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= LABEL_CHARACTERS else text[:LABEL_CHARACTERS - 1] + "…"
