"""The direction-aware gain (autoresearch.gains): one function, one sign convention."""

from __future__ import annotations

import pytest


def test_gain_is_positive_for_the_better_value_in_both_directions():
    from autoresearch.gains import gain

    assert gain(0.25, 0.29, "lower") == pytest.approx(0.04)
    assert gain(0.75, 0.70, "higher") == pytest.approx(0.05)
    assert gain(0.30, 0.29, "lower") < 0 and gain(0.6, 0.7, "higher") < 0
