"""Ctrl-C, once and twice, and the signals that mean the same (SIGTERM, SIGHUP).

The first one raises KeyboardInterrupt where the tool is: the training in progress is stopped, the
experiment recorded as interrupted and the branch put back at the best commit on the way out.
Cleaning up can take a few seconds (a training that ignores SIGTERM is given that long), so a second
one does not wait: it says so in one line and ends the process at once. Nothing is lost either way:
the ledger is written ahead and `run --resume` puts the rest straight.

A signal the tool was started with ignored stays ignored: `nohup autoresearch run ...` must survive
its terminal closing.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Callable, Iterator

FIRST_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_CODE = 130


@contextlib.contextmanager
def two_stage_interrupts(second_message: Callable[[], str]) -> Iterator[None]:
    """Inside: the first signal raises KeyboardInterrupt, a second one exits at once with 130."""
    received = []

    def handle(signum, frame):
        received.append(signum)
        if len(received) == 1:
            raise KeyboardInterrupt
        try:
            show_cursor = "\x1b[?25h" if os.isatty(2) else ""  # a live panel may have hidden it
            os.write(2, (show_cursor + "\n" + second_message() + "\n").encode())
        finally:
            os._exit(EXIT_CODE)

    previous = {signum: signal.signal(signum, handle) for signum in FIRST_SIGNALS
                if signal.getsignal(signum) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
