"""The verdict of `verify` (verify.judge): what the gain intervals on validation and test mean, said plainly."""

from __future__ import annotations

import pytest

from autoresearch.noise import GainInterval
from autoresearch.verify import judge


def interval(gain, low, high):
    return GainInterval(gain, low, high, 4, 1.0, 1.0 - gain, 3, 3)


@pytest.mark.parametrize("val, test, verdict", [
    (interval(0.04, 0.02, 0.06), interval(0.035, 0.01, 0.06), "holds"),
    (interval(0.04, 0.02, 0.06), interval(0.001, -0.02, 0.022), "overfit"),
    (interval(0.04, 0.02, 0.06), interval(-0.01, -0.03, 0.01), "overfit"),
    (interval(0.04, 0.02, 0.06), interval(0.03, -0.01, 0.07), "inconclusive"),
    (interval(0.01, -0.01, 0.03), interval(0.02, 0.001, 0.04), "unconfirmed"),
    (interval(-0.01, -0.03, 0.01), interval(0.0, -0.02, 0.02), "noise"),
    (None, interval(0.02, 0.001, 0.04), "failed"),
])
def test_the_verdict_says_plainly_what_the_intervals_mean(val, test, verdict):
    found, message = judge(val, test)
    assert found == verdict
    assert message
