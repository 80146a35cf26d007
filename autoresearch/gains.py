"""The direction-aware gain: how much better one metric value is than another, in one function.

Every number the tool calls a gain (a candidate over the best before it, the best over the
baseline, a verify interval, the live view, the plot, the agent's lineage) comes from `gain`, so
its sign means the same everywhere: positive is better, whichever way the metric points.
"""

from __future__ import annotations

DIRECTIONS = ("lower", "higher")


def gain(candidate: float, reference: float, direction: str) -> float:
    """Signed gain of candidate over reference; positive means candidate is better."""
    return reference - candidate if direction == "lower" else candidate - reference


def gain_or_none(candidate: float | None, reference: float | None, direction: str) -> float | None:
    """`gain`, or None when either value is missing (a crash, a run without a baseline yet)."""
    if candidate is None or reference is None:
        return None
    return gain(candidate, reference, direction)


def better_word(direction: str) -> str:
    """`lower` or `higher`: which way the metric improves, as the person and the agent read it."""
    return "lower" if direction == "lower" else "higher"
