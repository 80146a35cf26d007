"""Telling progress from noise: the harness's seeds, the noise floor, the seed guard and verify's intervals.

The keep rule that uses them is keep.py's; the whole of it in docs/noise.md.

- The harness owns the seed. The first training run of every experiment gets the run's seed (so
  first runs are paired with the baseline's); every other run gets a seed derived from the run's
  seed, the experiment number and the attempt, which the training script cannot predict.
- The noise floor `sigma` is the sample standard deviation of the metric over the baseline's runs:
  its first run and `--noise-runs` more with other seeds. Three runs say little (about one time
  in four the estimate is off by a factor of two or more), so it is refined as the run goes: every
  commit that ran on several seeds (its confirmation runs) adds its spread, pooled within commits,
  the candidate being decided included.
- An edit that reads or sets the seed is refused before it trains (`harness_tampering`).
- `gain_interval`: verify's 95% interval of a gain over new seeds.

Everything here is a pure function of numbers and texts.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from dataclasses import dataclass

from autoresearch import gains

SEED_RANGE = 2 ** 31


# --- seeds

def derive_seed(run_seed: int, experiment: int, attempt: int) -> int:
    """The seed of one training run: the run's seed for first runs, a derived one for the others.

    Derived seeds come from a hash, so they are distinct for every (experiment, attempt), the same
    each time the run is replayed, and unknowable to a training script that does not know which
    experiment and attempt it is.
    """
    if attempt == 0:
        return run_seed
    return _hashed_seed(f"autoresearch-run:{run_seed}:{experiment}:{attempt}")


def verify_seed(run_seed: int, index: int) -> int:
    """The seed of the index-th `verify` training of a run, never one the run itself used."""
    return _hashed_seed(f"autoresearch-verify:{run_seed}:{index}")


def _hashed_seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % SEED_RANGE


# --- summary statistics

def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def sample_std(values: list[float]) -> float | None:
    """The sample standard deviation (n - 1 in the denominator); None for fewer than two values."""
    if len(values) < 2:
        return None
    centre = mean(values)
    return math.sqrt(sum((value - centre) ** 2 for value in values) / (len(values) - 1))


@dataclass(frozen=True)
class NoiseFloor:
    """The run-to-run spread of the metric for the unmodified recipe."""

    std: float | None
    runs: int

    @classmethod
    def measure(cls, metrics: list[float]) -> "NoiseFloor":
        return cls.pooled([metrics])

    @classmethod
    def pooled(cls, groups: list[list[float]]) -> "NoiseFloor":
        """The pooled within-commit spread: each group holds one commit's metrics under different seeds."""
        usable = [group for group in groups if len(group) >= 2]
        dof = sum(len(group) - 1 for group in usable)
        if dof == 0:
            return cls(std=None, runs=sum(len(group) for group in groups))
        squares = sum(sum((value - mean(group)) ** 2 for value in group) for group in usable)
        return cls(std=math.sqrt(squares / dof), runs=sum(len(group) for group in usable))

    @property
    def known(self) -> bool:
        """True when the spread was measured and is not zero (a zero spread means: the metric is deterministic)."""
        return self.std is not None and self.std > 0


# --- the seed guard

SEED_VARIABLES = re.compile(r"AUTORESEARCH_SEED|PYTHONHASHSEED")
SEEDING_CALL = re.compile(r"\b(?:manual_seed(?:_all)?|seed|set_seed|seed_everything|default_rng|RandomState|Random"
                          r"|PRNGKey)\s*\((?P<args>[^)]*)\)?")
SEED_ASSIGNMENT = re.compile(r"^\s*[\w.]*seed\w*\s*(?::[^=]*)?(?:[-+*/%|&^]|//)?=(?!=)", re.IGNORECASE)
LITERAL_SEED_KEYWORD = re.compile(r"\b\w*(?:seed|random_state)\s*=\s*[-+]?\d", re.IGNORECASE)


def harness_tampering(before: dict[str, str], after: dict[str, str]) -> str | None:
    """Why an edit may not run because it reaches for what the harness owns (the seed), else None.

    The harness owns the seed (AUTORESEARCH_SEED); a change whose effect is to pick another seed
    can only win by luck. Refused: changed lines that mention AUTORESEARCH_SEED, removed seeding
    calls, added seeding calls with a constant (or no) argument, assignments to a name holding
    `seed`, and `seed=`/`random_state=` keywords given a number. Adding a generator seeded from the
    script's `seed` variable (`torch.Generator().manual_seed(seed)`) is allowed. (The test split is
    out of the training's reach by construction: only the harness's evaluation reads it, for `verify`.)
    """
    for name in sorted(after):
        old_lines = before.get(name, "").splitlines()
        new_lines = after[name].splitlines()
        for line in difflib.unified_diff(old_lines, new_lines, lineterm="", n=0):
            if line.startswith(("---", "+++", "@@")):
                continue
            added, text = line.startswith("+"), line[1:]
            why = _seed_line_problem(text, added)
            if why:
                return f"touches the seed ({why}: `{text.strip()[:80]}`); the harness owns the seed"
    return None


def _seed_line_problem(text: str, added: bool) -> str | None:
    code = text.split("#", 1)[0]
    if SEED_VARIABLES.search(code):
        return "changes how the seed is read"
    call = SEEDING_CALL.search(code)
    if call and not added:
        return "removes a seeding call"
    if not added:
        return None
    if call and not re.search(r"[A-Za-z_]", call.group("args") or ""):
        return "seeds with a constant"
    if SEED_ASSIGNMENT.search(code):
        return "assigns a seed"
    if LITERAL_SEED_KEYWORD.search(code):
        return "passes a constant seed"
    return None


# --- confidence intervals (for `verify`)

# Two-sided 95% quantiles of Student's t by degrees of freedom; between entries the smaller
# degrees of freedom is used, which widens the interval (the safe side).
T_QUANTILE_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
                 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
                 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
                 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
CONFIDENCE = 0.95


def t_quantile_95(dof: float) -> float:
    """The two-sided 95% quantile of Student's t with dof degrees of freedom (rounded down)."""
    if dof < 1:
        raise ValueError("a t interval needs at least one degree of freedom")
    usable = [d for d in T_QUANTILE_95 if d <= dof]
    return T_QUANTILE_95[max(usable)] if dof <= 120 else 1.960


@dataclass(frozen=True)
class GainInterval:
    """The gain of a candidate's mean over a reference's mean, with its 95% t interval."""

    gain: float
    low: float
    high: float
    dof: int
    reference_mean: float
    candidate_mean: float
    reference_runs: int
    candidate_runs: int

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on the gain side: the gain is real at 95%."""
        return self.low > 0


def gain_interval(reference: list[float], candidate: list[float], direction: str) -> GainInterval | None:
    """The 95% Student t interval of the candidate's gain over the reference; None with fewer than 2 runs a side.

    The two commits' spreads are pooled (one noise level, as the keep rule assumes): with three runs
    a side this has 4 degrees of freedom where Welch's interval, which estimates each spread on its
    own, can fall to 2 and more than double the interval's width.
    """
    if len(reference) < 2 or len(candidate) < 2:
        return None
    gain = gains.gain(mean(candidate), mean(reference), direction)
    dof = len(reference) + len(candidate) - 2
    pooled = NoiseFloor.pooled([reference, candidate]).std
    half_width = t_quantile_95(dof) * pooled * math.sqrt(1 / len(reference) + 1 / len(candidate))
    return GainInterval(gain, gain - half_width, gain + half_width, dof, mean(reference), mean(candidate),
                        len(reference), len(candidate))


NOISE_SHARE_WARNING = 0.02  # a noise floor of at least this share of the metric is large
MARGIN_SHARE_WARNING = 0.05  # so is a keep margin of at least this share


def noise_warning(metric_name: str, metric: float | None, std: float | None, margin: float | None,
                  busy_share: float | None = None, busy_threshold: float = 0.25) -> str | None:
    """One line when the noise floor (or the margin a change must clear) is a large share of the metric,
    naming the machine when other work kept it busy during the baseline; None otherwise."""
    if metric is None or not metric or std is None:
        return None
    share, margin_share = std / abs(metric), (margin or 0.0) / abs(metric)
    if share < NOISE_SHARE_WARNING and margin_share < MARGIN_SHARE_WARNING:
        return None
    line = (f"the noise floor is {share:.1%} of {metric_name} (σ {std:.3g} on {metric:.4g}"
            + (f"; a change must gain {margin:.3g} to be kept" if margin else "") + ")")
    if busy_share is not None and busy_share >= busy_threshold:
        return line + (f": other work on this machine (it took {busy_share:.0%} of the CPU time during the "
                       "baseline) costs the training steps")
    return line + ": only changes larger than that can be told from noise"
