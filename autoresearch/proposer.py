"""The one retry and backoff policy around an agent: how often a failed LLM call is asked again, and when to stop.

A failed call (agents raise AgentUnavailable) is asked again after a wait that doubles with each
failure in a row (`--agent-backoff`, up to MAX_BACKOFF_SECONDS), until `--max-agent-failures` in a
row; a refusal no retry can mend (the key, the model, a prompt too long for the model) stops the run
at once with the setting that mends it. A connection refused on this machine (nothing listens at
the URL) stops the endpoint check at once, since waiting starts no server; during the night it is
retried like any failure (a local server restarting). A run stopped by an endpoint it could not
reach carries the endpoint's URL as its remedy: resuming with the same URL would fail the same way. The `openai` client is built not to retry on its own
(agents.py), so this is the only retry there is. The agent's own repair turns for a reply that does
not apply are not retries: they are part of one proposal.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

from autoresearch.agents import Agent, Candidate, LLMCall
from autoresearch.console import times
from autoresearch.endpoint import is_local, shared_with_trainings
from autoresearch.errors import AgentUnavailable, NothingListens, StopRun
from autoresearch.prompts import AgentContext

MAX_BACKOFF_SECONDS = 300.0
Answer = TypeVar("Answer")


class Proposer:
    """An agent under the retry policy: `check` (the endpoint, before anything trains) and `propose`.

    `note` hears each retry, in one line; a draft's thread passes its own (the scheduler's queue).
    """

    def __init__(self, agent: Agent, max_failures: int, backoff_seconds: float, note: Callable[[str], None]):
        self.agent, self.max_failures, self.backoff_seconds, self.note = agent, max_failures, backoff_seconds, note

    @property
    def name(self) -> str:
        return self.agent.name

    @property
    def model(self) -> str | None:
        return getattr(self.agent, "model", None)

    def check(self, record: Callable[[LLMCall], None]) -> None:
        """The agent proves it can propose (one cheap LLM call), before anything trains."""
        self.ask("endpoint check", lambda: self.agent.check(record), at_start=True)

    def propose(self, what: str, context: AgentContext, record: Callable[[LLMCall], None],
                on_writing: Callable[[int], None] | None = None, note: Callable[[str], None] | None = None,
                stop: threading.Event | None = None) -> Candidate:
        """A candidate; `stop` (set by the scheduler when the run stops) gives up the call under way."""
        return self.ask(what, lambda: self.agent.propose(context, record, on_writing=on_writing, stop=stop), note,
                        stop)

    @property
    def local(self) -> bool:
        """Whether the agent's model runs on this machine (its endpoint is a loopback address)."""
        return is_local(getattr(self.agent, "base_url", None))

    def shares_with(self, slot_devices: list[str | None]) -> str | None:
        """What the agent's model server, where it runs on this machine, shares with trainings on these slots of
        this machine ("its CPU", "GPU 0"), or None."""
        return shared_with_trainings(getattr(self.agent, "base_url", None), slot_devices)

    @property
    def edit_format(self) -> tuple[str, str] | None:
        """The edit format the agent writes in and why (after `check`), or None for an agent without one."""
        name = getattr(self.agent, "edit_format", None)
        return None if name is None else (name, getattr(self.agent, "format_reason", ""))

    def ask(self, what: str, ask: Callable[[], Answer], note: Callable[[str], None] | None = None,
            stop: threading.Event | None = None, at_start: bool = False) -> Answer:
        """ask(), under the policy; `what` names the asking in the notes. Raises StopRun when it gives up, or when
        `stop` is set during a wait. `at_start`: the check before anything trains, where nothing listening is said
        at once."""
        note = note or self.note
        failures = 0
        while True:
            try:
                return ask()
            except AgentUnavailable as exc:
                failures += 1
                if not exc.retryable or (at_start and isinstance(exc, NothingListens)):
                    raise StopRun(str(exc), exc.remedy) from None
                if failures >= self.max_failures:
                    in_a_row = f"{times(failures)} in a row (last: {exc})" if failures > 1 else f"{times(1)} ({exc})"
                    raise StopRun(f"the LLM endpoint failed {in_a_row}", exc.remedy) from None
                wait = min(MAX_BACKOFF_SECONDS, self.backoff_seconds * 2 ** (failures - 1))
                note(f"{what}: LLM call failed: {exc}; trying again in {wait:g}s")
                if stop is not None:
                    if stop.wait(wait):
                        raise StopRun("the run stopped") from None
                else:
                    time.sleep(wait)
