"""Telling progress from noise: seeds, the noise floor, the keep rule and the seed guard.

The rule, in full in docs/noise.md:

- The harness owns the seed. The first training run of every experiment gets the run's seed (so
  first runs are paired with the baseline's); every other run gets a seed derived from the run's
  seed, the experiment number and the attempt, which the training script cannot predict.
- The noise floor `sigma` is the sample standard deviation of the metric over the baseline's runs:
  its first run and `--noise-runs` more with other seeds. Three runs say little (about one time
  in four the estimate is off by a factor of two or more), so it is refined as the run goes: every
  commit that ran on several seeds (its confirmation runs) adds its spread, pooled within commits,
  the candidate being decided included.
  A confirmation is asked for after a lucky-looking first run, which widens the spread a little:
  the refinement errs on the cautious side.
- A candidate with n_c runs is compared with the best commit's n_b runs (reused, never re-run):
  `gain` is the improvement of the candidate's mean over the best's mean, and `noise` is the
  standard error of that difference, sigma * sqrt(1/n_c + 1/n_b). The margin is
  max(noise_multiple * noise, min_delta).
  * gain <= 0: discarded. gain <= noise, or gain <= min_delta: discarded as within the noise.
  * gain > margin: kept, but only once it holds over at least two seeds: a single run above the
    margin gets one confirmation run first (unless --confirm-runs is 0).
  * in between: confirmation runs with new seeds (at most --confirm-runs), deciding again after each.
  When the confirmations are spent the candidate is kept only if its gain is past the margin.
- A candidate whose runs give the very same metric under different seeds, while the unmodified
  recipe varies from seed to seed, has fixed its own seed: it is invalid (`ignores_harness_seed`).
  An edit that reads or sets the seed is refused before it trains (`harness_tampering`).
- Without a noise floor (--noise-runs 0, or a recipe whose metric does not vary with the seed)
  the rule is the plain one: keep when the gain exceeds --min-delta.

Everything here is a pure function of numbers and texts; the loop and `verify` call it, and the
benchmark in benchmarks/noise_rule.py drives it over many simulated runs.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from dataclasses import asdict, dataclass

from autoresearch import gains

DEFAULT_NOISE_RUNS = 2
DEFAULT_NOISE_MULTIPLE = 2.0
DEFAULT_CONFIRM_RUNS = 3  # benchmarks/noise_rule.py: 3 or 4 beat 2 on gain and on honesty, at +1% runs
# Gains within one standard error of the difference are indistinguishable from noise.
NOISE_BAND = 1.0
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


# --- the keep rule

@dataclass(frozen=True)
class KeepRule:
    """The knobs of the decision: `--noise-multiple`, `--min-delta`, `--confirm-runs`."""

    noise_multiple: float = DEFAULT_NOISE_MULTIPLE
    min_delta: float = 0.0
    confirm_runs: int = DEFAULT_CONFIRM_RUNS


@dataclass(frozen=True)
class Decision:
    """What to do with a candidate after its latest training run, and the numbers behind it."""

    verdict: str  # keep | discard | confirm
    gain: float
    margin: float
    noise: float | None  # standard error of the gain; None when the noise floor is unknown or zero
    candidate_runs: int
    best_runs: int
    reason: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def decide(candidate: list[float], best: list[float], direction: str, noise_std: float | None,
           rule: KeepRule) -> Decision:
    """Keep, discard or confirm a candidate given its runs' metrics and the best commit's."""
    gain = gains.gain(mean(candidate), mean(best), direction)
    n_candidate, n_best = len(candidate), len(best)
    if noise_std is None or noise_std <= 0:
        verdict = "keep" if gain > rule.min_delta else "discard"
        reason = None if verdict == "keep" else _not_better(gain, rule.min_delta)
        return Decision(verdict, gain, rule.min_delta, None, n_candidate, n_best, reason)
    noise = noise_std * math.sqrt(1 / n_candidate + 1 / n_best)
    margin = max(rule.noise_multiple * noise, rule.min_delta)
    can_confirm = n_candidate - 1 < rule.confirm_runs
    runs = f"{n_candidate} run{'s' if n_candidate > 1 else ''}"
    if gain > margin:
        if n_candidate == 1 and can_confirm:
            return Decision("confirm", gain, margin, noise, n_candidate, n_best,
                            "past the margin on one seed; a keep must hold on another")
        return Decision("keep", gain, margin, noise, n_candidate, n_best,
                        f"gain {gain:+.4g} > margin {margin:.3g} over {runs}")
    if gain <= 0:
        return Decision("discard", gain, margin, noise, n_candidate, n_best)
    if gain <= min(NOISE_BAND, rule.noise_multiple) * noise:
        return Decision("discard", gain, margin, noise, n_candidate, n_best,
                        f"within noise: gain {gain:+.4g} <= noise {noise:.3g} ({runs})")
    if gain <= rule.min_delta:
        return Decision("discard", gain, margin, noise, n_candidate, n_best, _not_better(gain, rule.min_delta))
    if can_confirm:
        return Decision("confirm", gain, margin, noise, n_candidate, n_best,
                        f"gain {gain:+.4g} between the noise {noise:.3g} and the margin {margin:.3g}")
    return Decision("discard", gain, margin, noise, n_candidate, n_best,
                    f"below the margin: gain {gain:+.4g} <= {margin:.3g} after {runs}")


def _not_better(gain: float, min_delta: float) -> str | None:
    if min_delta > 0 and gain > 0:
        return f"gain {gain:+.4g} <= --min-delta {min_delta:g}"
    return None


def ignores_harness_seed(metrics: list[float], seeds: list[int], noise: NoiseFloor) -> bool:
    """True when different seeds gave the very same metric although the unmodified recipe varies with the seed."""
    return noise.known and len(set(seeds)) >= 2 and len(metrics) >= 2 and max(metrics) == min(metrics)


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
