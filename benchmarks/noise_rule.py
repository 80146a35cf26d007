"""The naive keep rule against the noise-aware one (docs/noise.md), over many simulated runs.

A simulated run is the synthetic recipe of the tests in numbers: every training run measures the
true metric of its commit plus gaussian noise of sd 1 (so every number here is in noise units),
lower is better. Each experiment proposes a change to the best commit whose true effect is drawn
from a fixed mix: most changes do nothing (`pure noise`: a no-op, a renamed variable, another
seed), some hurt, some help; two scenarios differ in how large the helpful effects are. Every
rule sees the same proposals and the same noise.

- naive: one training run per experiment, keep anything lower than the best's single measurement.
- noise-aware: the baseline is trained 1 + --noise-runs times to measure the noise floor, and every
  candidate goes through `autoresearch.noise.decide` with confirmation runs, exactly as the loop
  does (the best's runs reused, the floor pooled over every commit trained on several seeds).

Reported per scenario and rule, averaged over simulated runs of 100 experiments: the share of kept
changes that were pure noise (and that were harmful), the true gain reached, the gain the run
claims (measured best against measured baseline) and the training runs spent. The decision module
is called in-process, so thousands of runs take seconds.

    .venv/bin/python benchmarks/noise_rule.py [--runs 2000] [--experiments 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autoresearch.keep import DEFAULT_CONFIRM_RUNS, DEFAULT_NOISE_MULTIPLE, DEFAULT_NOISE_RUNS, KeepRule, decide
from autoresearch.noise import mean

SIGMA = 1.0


@dataclass(frozen=True)
class Scenario:
    """The mix of proposals: a share does nothing, a share hurts, the rest help."""

    name: str
    pure_noise_share: float = 0.6  # true effect exactly zero
    harmful_share: float = 0.25  # true effect uniform in [-3, -0.25] sd
    helpful_mean_effect: float = 1.0  # the rest: exponential with this mean, in sd (many small, a few large)


SCENARIOS = (Scenario("gains mostly below the noise (helpful mean 1 sd)", helpful_mean_effect=1.0),
             Scenario("gains mostly above the noise (helpful mean 3 sd)", helpful_mean_effect=3.0))


@dataclass(frozen=True)
class Proposal:
    effect: float  # true gain in noise units; positive is better

    @property
    def kind(self) -> str:
        return "noise" if self.effect == 0 else ("harmful" if self.effect < 0 else "helpful")


def draw_proposal(rng: random.Random, scenario: Scenario) -> Proposal:
    roll = rng.random()
    if roll < scenario.pure_noise_share:
        return Proposal(0.0)
    if roll < scenario.pure_noise_share + scenario.harmful_share:
        return Proposal(-rng.uniform(0.25, 3.0))
    return Proposal(rng.expovariate(1 / scenario.helpful_mean_effect))


@dataclass
class Outcome:
    kept: list[str] = field(default_factory=list)
    true_gain: float = 0.0
    claimed_gain: float = 0.0
    training_runs: int = 0


def naive_run(proposals: list[Proposal], noise: random.Random) -> Outcome:
    """One training run each; keep when lower than the best's one measurement."""
    outcome = Outcome(training_runs=1)
    true_loss = 0.0
    baseline_measured = best_measured = true_loss + noise.gauss(0, SIGMA)
    for proposal in proposals:
        candidate_true = true_loss - proposal.effect
        measured = candidate_true + noise.gauss(0, SIGMA)
        outcome.training_runs += 1
        if measured < best_measured:
            true_loss, best_measured = candidate_true, measured
            outcome.kept.append(proposal.kind)
            outcome.true_gain += proposal.effect
    outcome.claimed_gain = baseline_measured - best_measured
    return outcome


def noise_aware_run(proposals: list[Proposal], noise: random.Random, rule: KeepRule, noise_runs: int) -> Outcome:
    """The loop's decision path: noise runs of the baseline, then decide() with confirmation runs."""
    outcome = Outcome()
    true_loss = 0.0
    best_runs = [true_loss + noise.gauss(0, SIGMA) for _ in range(1 + noise_runs)]
    outcome.training_runs = len(best_runs)
    baseline_measured = mean(best_runs)
    # The noise floor pooled over every commit trained on several seeds, as the loop pools it
    # (NoiseFloor.pooled), kept as running sums so that thousands of runs stay fast.
    settled = _squares(best_runs)
    for proposal in proposals:
        candidate_true = true_loss - proposal.effect
        runs = []
        while True:
            runs.append(candidate_true + noise.gauss(0, SIGMA))
            outcome.training_runs += 1
            squares, dof = settled
            if len(runs) > 1:
                squares, dof = squares + _squares(runs)[0], dof + len(runs) - 1
            decision = decide(runs, best_runs, "lower", math.sqrt(squares / dof) if dof else None, rule)
            if decision.verdict != "confirm":
                break
        if len(runs) > 1:
            settled = (settled[0] + _squares(runs)[0], settled[1] + len(runs) - 1)
        if decision.verdict == "keep":
            true_loss, best_runs = candidate_true, runs
            outcome.kept.append(proposal.kind)
            outcome.true_gain += proposal.effect
    outcome.claimed_gain = baseline_measured - mean(best_runs)
    return outcome


def _squares(values: list[float]) -> tuple[float, int]:
    """The sum of squared deviations from the mean, and the degrees of freedom."""
    centre = mean(values)
    return sum((value - centre) ** 2 for value in values), len(values) - 1


def summarize(outcomes: list[Outcome], experiments: int) -> dict:
    kept = [kind for outcome in outcomes for kind in outcome.kept]
    runs = sum(o.training_runs for o in outcomes)
    per_100 = 100 / experiments
    return {
        "kept_per_100": len(kept) / len(outcomes) * per_100,
        "kept_pure_noise": kept.count("noise") / len(kept) if kept else 0.0,
        "kept_harmful": kept.count("harmful") / len(kept) if kept else 0.0,
        "true_gain_per_100": statistics.mean(o.true_gain for o in outcomes) * per_100,
        "claimed_gain_per_100": statistics.mean(o.claimed_gain for o in outcomes) * per_100,
        "training_runs_per_100": runs / len(outcomes) * per_100,
        "true_gain_per_100_training_runs": sum(o.true_gain for o in outcomes) / runs * 100,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="simulated runs per rule and scenario")
    parser.add_argument("--experiments", type=int, default=100, help="experiments per simulated run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    rules = [("naive: keep anything lower", None, 0)]
    rules += [(f"noise-aware: --noise-runs {k} --noise-multiple {m:g} --confirm-runs {c}{note}", KeepRule(m, 0.0, c), k)
              for k, m, c, note in [(DEFAULT_NOISE_RUNS, DEFAULT_NOISE_MULTIPLE, DEFAULT_CONFIRM_RUNS, " (defaults)"),
                                    (5, DEFAULT_NOISE_MULTIPLE, DEFAULT_CONFIRM_RUNS, ""),
                                    (DEFAULT_NOISE_RUNS, 1.5, DEFAULT_CONFIRM_RUNS, ""),
                                    (DEFAULT_NOISE_RUNS, DEFAULT_NOISE_MULTIPLE, 0, "")]]
    print(f"{args.runs} simulated runs of {args.experiments} experiments per rule and scenario, seed {args.seed}; "
          "effects and gains in noise standard deviations")
    for scenario in SCENARIOS:
        print(f"\n{scenario.name}: {scenario.pure_noise_share:.0%} of proposals pure noise, "
              f"{scenario.harmful_share:.0%} harmful, the rest helpful\n")
        print("| rule | kept /100 exp | kept that are pure noise | kept that are harmful | true gain /100 exp "
              "| claimed gain /100 exp | training runs /100 exp | true gain /100 training runs |")
        print("|---|---|---|---|---|---|---|---|")
        for name, rule, noise_runs in rules:
            # The same proposals and the same noise stream for every rule.
            proposals_rng, noise_rng = random.Random(args.seed), random.Random(args.seed + 1)
            outcomes = []
            for _ in range(args.runs):
                proposals = [draw_proposal(proposals_rng, scenario) for _ in range(args.experiments)]
                if rule is None:
                    outcomes.append(naive_run(proposals, noise_rng))
                else:
                    outcomes.append(noise_aware_run(proposals, noise_rng, rule, noise_runs))
            row = summarize(outcomes, args.experiments)
            print(f"| {name} | {row['kept_per_100']:.1f} | {row['kept_pure_noise']:.0%} | {row['kept_harmful']:.0%} "
                  f"| {row['true_gain_per_100']:.1f} | {row['claimed_gain_per_100']:.1f} | "
                  f"{row['training_runs_per_100']:.0f} | {row['true_gain_per_100_training_runs']:.1f} |")
    print(f"\n({time.perf_counter() - started:.1f}s)")


if __name__ == "__main__":
    main()
