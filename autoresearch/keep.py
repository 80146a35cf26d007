"""The keep rule, pure: a candidate's measured runs in, a verdict out, with its typed decision record.

Everything that decides whether a change stays is here (docs/noise.md says why it is built so):

- `decide` compares a candidate's runs with the best commit's, under the noise floor: `keep` past
  the margin (max of `--noise-multiple` standard errors of the gain and `--min-delta`), `confirm`
  (one more run with a new seed) after a lucky-looking first run or a gain between the noise and
  the margin, else `discard`.
- `judge` is the whole verdict on an experiment's latest run, as the scheduler acts on it:
  `confirm`, `keep`, `discard`, `invalid` (its runs ignore the harness's seed), or `combine` (it
  beat the best it was drafted from, but the best moved on meanwhile: its change goes on top of
  the new best as a new experiment, never kept on a number measured elsewhere).
- `DecisionRecord` is what the ledger keeps of a decision (experiments.decision_json), serialised
  with the keys `show` and `log --json` have always read.

No I/O, no clock, no ledger: numbers and texts in, a frozen record out; benchmarks/noise_rule.py
drives it over many simulated runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from autoresearch import gains
from autoresearch.noise import NoiseFloor, mean

DEFAULT_NOISE_RUNS = 2
DEFAULT_NOISE_MULTIPLE = 2.0
DEFAULT_CONFIRM_RUNS = 3  # benchmarks/noise_rule.py: 3 or 4 beat 2 on gain and on honesty, at +1% runs
# Gains within one standard error of the difference are indistinguishable from noise.
NOISE_BAND = 1.0
VERDICTS = ("confirm", "keep", "discard", "combine", "invalid")


@dataclass(frozen=True)
class KeepRule:
    """The knobs of the decision: `--noise-multiple`, `--min-delta`, `--confirm-runs`."""

    noise_multiple: float = DEFAULT_NOISE_MULTIPLE
    min_delta: float = 0.0
    confirm_runs: int = DEFAULT_CONFIRM_RUNS


@dataclass(frozen=True)
class Decision:
    """What the rule makes of a candidate's runs against the best's, and the numbers behind it."""

    verdict: str  # keep | discard | confirm
    gain: float
    margin: float
    noise: float | None  # standard error of the gain; None when the noise floor is unknown or zero
    candidate_runs: int
    best_runs: int
    reason: str | None = None


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


def keep_margin(best_runs: list[float], direction: str, noise: NoiseFloor, rule: KeepRule) -> float | None:
    """The gain a candidate's first run must show over the best to be kept (what the agent is told)."""
    if not noise.known:
        return rule.min_delta or None
    return decide(best_runs[:1], best_runs, direction, noise.std, rule).margin


def ignores_harness_seed(metrics: list[float], seeds: list[int], noise: NoiseFloor) -> bool:
    """True when different seeds gave the very same metric although the unmodified recipe varies with the seed."""
    return noise.known and len(set(seeds)) >= 2 and len(metrics) >= 2 and max(metrics) == min(metrics)


@dataclass(frozen=True)
class DecisionRecord:
    """What the ledger keeps of a decision: the rule's numbers (when it ran), each run's metric and seed, the
    best's runs it was compared with, and the noise floor used. `as_dict` is the stored shape."""

    metrics: tuple[float, ...]
    seeds: tuple[int, ...]
    noise_std: float | None
    best_metrics: tuple[float, ...] | None = None  # None: compared with nothing (the baseline)
    decision: Decision | None = None  # None: the rule did not run (a confirmation run failed)
    baseline: bool = False

    @classmethod
    def of_baseline(cls, metrics: list[float], seeds: list[int], noise_std: float | None) -> "DecisionRecord":
        return cls(tuple(metrics), tuple(seeds), noise_std, baseline=True)

    def as_dict(self) -> dict:
        if self.baseline:
            return {"verdict": "keep", "metrics": list(self.metrics), "seeds": list(self.seeds),
                    "noise_std": self.noise_std, "candidate_runs": len(self.metrics)}
        record = {} if self.decision is None else {
            "verdict": self.decision.verdict, "gain": self.decision.gain, "margin": self.decision.margin,
            "noise": self.decision.noise, "candidate_runs": self.decision.candidate_runs,
            "best_runs": self.decision.best_runs, "reason": self.decision.reason}
        return {**record, "metrics": list(self.metrics), "seeds": list(self.seeds),
                "best_metrics": list(self.best_metrics or ()), "noise_std": self.noise_std}


def recorded_runs(row: dict) -> tuple[float, ...]:
    """An experiment's runs as its ledger row records them: the metrics of its decision, or its one metric."""
    return tuple((row.get("decision") or {}).get("metrics") or [row["metric"]])


@dataclass(frozen=True)
class Judgement:
    """The verdict on an experiment after its latest run, the reason the person reads, and the record."""

    verdict: str  # one of VERDICTS
    reason: str | None
    record: DecisionRecord
    metric: float  # the mean of its runs: the number it is recorded with
    refines_noise: bool = False  # its runs (several seeds of one commit) add to the noise floor


@dataclass(frozen=True)
class Evidence:
    """Everything the verdict depends on: the candidate's runs, the runs of the best it is compared with."""

    metrics: list[float]
    seeds: list[int]
    against: list[float]  # the best's runs when it was drafted from the best, else its own parent's
    parent_is_best: bool  # False: the best moved on while it was drafted or trained
    direction: str
    noise: NoiseFloor  # the run's noise floor so far
    noise_groups: list[list[float]] = field(default_factory=list)  # each multi-seed commit's metrics so far


def judge(evidence: Evidence, rule: KeepRule, metric_name: str) -> Judgement:
    """The keep rule on the candidate's runs so far, against the best it was drafted from."""
    noise = NoiseFloor.pooled(evidence.noise_groups + [evidence.metrics]) if evidence.noise.known \
        else evidence.noise
    decision = decide(evidence.metrics, evidence.against, evidence.direction, noise.std, rule)
    record = DecisionRecord(tuple(evidence.metrics), tuple(evidence.seeds), noise.std, tuple(evidence.against),
                            decision)
    metric = mean(evidence.metrics)
    if decision.verdict == "confirm":
        return Judgement("confirm", decision.reason, record, metric)
    if ignores_harness_seed(evidence.metrics, evidence.seeds, evidence.noise):
        return Judgement("invalid", f"ignores the harness's seed: {metric_name} {evidence.metrics[0]:.6g} under "
                                    f"seeds {', '.join(map(str, evidence.seeds))}", record, metric)
    refines = len(evidence.metrics) > 1
    if evidence.parent_is_best:
        return Judgement(decision.verdict, decision.reason, record, metric, refines)
    if decision.verdict == "keep":
        return Judgement("combine", decision.reason, record, metric, refines)
    return Judgement("discard", decision.reason, record, metric, refines)


def failed_confirmation(metrics: list[float], seeds: list[int], against: list[float],
                        noise_std: float | None) -> DecisionRecord:
    """The record of a candidate whose confirmation run failed: its runs so far, compared with nothing more."""
    return DecisionRecord(tuple(metrics), tuple(seeds), noise_std, tuple(against))
