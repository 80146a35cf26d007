"""How much of the wall clock a training did not get: the steal a cloud host's hypervisor took.

The machine is part of every wall-clock measurement, so the harness measures it itself while a
training runs, from outside the training; nothing the training reports about its own clock is needed.
"""

from __future__ import annotations

import os


class StealMeter:
    """Steal time of this machine's most-robbed CPU since the meter started (Linux /proc/stat; 0 elsewhere).

    The harness's own measure of time a cloud host's hypervisor took: a training is allowed that much
    past its deadline (at most a quarter of its budget), so a noisy neighbour does not turn into a
    timeout, and nothing the training reports about its own clock is needed for it.
    """

    def __init__(self):
        self._start = self._read()

    @staticmethod
    def _read() -> list[int]:
        try:
            with open("/proc/stat") as stat:
                rows = [line.split() for line in stat if line.startswith("cpu") and not line.startswith("cpu ")]
        except OSError:
            return []
        return [int(fields[8]) for fields in rows if len(fields) > 8]

    def seconds(self) -> float:
        now = self._read()
        if not now or len(now) != len(self._start):
            return 0.0
        return max(b - a for a, b in zip(self._start, now)) / os.sysconf("SC_CLK_TCK")
