"""What is in flight during a run: the experiments between their row and their outcome, the drafts of
proposals, how many proposals to draft at once, and how the agent is told of them.

Plain data and pure functions; the scheduler (scheduler.py) owns the instances and acts on them.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Iterable

from autoresearch.agents import Candidate
from autoresearch.noise import mean
from autoresearch.run.state import Best
from autoresearch.trainer import Trained

MAX_DRAFTS = 4  # proposals drafted at once, at most


@dataclass
class Flight:
    """One experiment between its row and its outcome: the baseline, or a candidate drafted from a best."""

    number: int
    kind: str  # baseline | candidate
    description: str
    parent: Best  # the best it was drafted from: what it is decided against
    started: float
    files: dict[str, str] | None = None  # its editable files (the duplicate digest)
    candidate: Candidate | None = None
    commit: str | None = None
    propose_seconds: float | None = None
    metrics: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    first: Trained | None = None
    running: int = 0  # its training runs queued or on a slot
    last_run_started: float | None = None  # when the latest of its training runs got a slot
    drafted_beside: bool = False  # a proposal was drafted on this machine while it trained
    failed_noise: list[Trained] = field(default_factory=list)
    busy_shares: list[float] = field(default_factory=list)  # how much of the machine other work took, per run


@dataclass
class Draft:
    """A proposal being drafted (by a thread of its own) from the files of a best."""

    number: int
    parent: str
    parent_number: int | None
    files: dict[str, str]
    started: float
    cancelled: threading.Event = field(default_factory=threading.Event)
    calls: int = 0  # its LLM calls in the ledger so far
    done: threading.Event = field(default_factory=threading.Event)  # its thread has handed back its answer


def draft_concurrency(slots: int, idle: int, baseline_measured: bool, propose_times: list[float],
                      train_times: list[float]) -> int:
    """How many proposals to draft at once: one for each of the `idle` slots (nothing to do now), and, for the
    busy ones, enough that none waits when its training ends: slots x proposal time / training time, from the
    times measured (the way ShinkaEvolve sizes its proposals in flight). While the baseline trains, one for
    every slot: each wants a draft when it ends."""
    if not baseline_measured:
        return max(1, min(MAX_DRAFTS, slots))
    ahead = 1
    if propose_times and train_times:
        ratio = mean(propose_times[-5:]) / max(mean(train_times[-5:]), 1e-3)
        ahead = math.ceil(slots * ratio)
    return max(1, min(MAX_DRAFTS, idle + ahead))


def in_flight_lines(flights: Iterable[Flight], ready: Iterable[tuple[Draft, Candidate]]) -> tuple[str, ...]:
    """Each experiment training or waiting for a slot, in one line for the agent."""
    return tuple(f"experiment {flight.number}: {flight.description}"
                 + (" (its numbers come when it ends)" if flight.kind == "baseline" else "")
                 for flight in flights if flight.kind in ("baseline", "candidate")) + tuple(
        f"experiment {draft.number}: {candidate.description} (waiting for a slot)" for draft, candidate in ready)
