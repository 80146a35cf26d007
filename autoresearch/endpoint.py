"""How long one call to an OpenAI-compatible endpoint may take, as a whole.

The `openai` client's timeout bounds the connection and each read, not the whole answer: a server
that sends a byte every few seconds never trips it. `call_within` bounds the whole call.
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

DEFAULT_BASE_URL = "https://api.openai.com/v1"  # the openai client's own default

T = TypeVar("T")


class CallTimedOut(Exception):
    """The call gave no complete answer within its time."""


def call_within(seconds: float, call: Callable[[], T]) -> T:
    """call() in a worker thread, waited for at most `seconds`; raises CallTimedOut past that.

    A worker left behind ends with its request (each read still has the client's timeout); it only
    holds the answer, so nothing of the run is touched by it. The wait is interruptible by Ctrl-C.
    """
    outcome: dict[str, object] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the caller's thread as it is
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="llm-call", daemon=True).start()
    if not done.wait(seconds):
        raise CallTimedOut(f"no complete answer within {seconds:g}s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
