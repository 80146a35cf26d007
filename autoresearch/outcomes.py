"""The outcomes of an experiment, and the one ladder that says what a finished training or evaluation came to.

An outcome is typed because the next proposal learns from it: `keep` and `discard` were measured,
`crash` (with `oom` and `nan` told apart), `timeout` and `invalid` were not, `interrupted` never
ended. A training and the harness's evaluation of its model end the same ways (lost with its
worker, past its deadline, refused, non-zero exit), so one ladder reads both, in one order.
"""

from __future__ import annotations

from autoresearch.execution.contention import BUSY_SHARE, busy_share

# Why the unmodified recipe failed (errors.StopRun.cause): what the person has to change
BUDGET_TOO_SMALL, BUSY_MACHINE, BROKEN_RECIPE = "budget", "busy", "recipe"

OUTCOMES = ("keep", "discard", "crash", "timeout", "invalid", "interrupted")
TRAINING, EVALUATION = "training", "evaluation"
REFUSED_EXIT_CODE = 3  # the evaluation refused the model (lm.REFUSED_EXIT_CODE, docs/recipe-contract.md)
OOM_MARKERS = ("out of memory", "memoryerror", "cuda error: out of memory", "outofmemoryerror")
NAN_MARKERS = ("loss is nan", "nan loss", "loss is inf", "non-finite loss", "loss exploded")


def job_outcome(result, stage: str, limit_seconds: float, touched: list[str] = ()) -> tuple[str | None, str | None]:
    """(outcome, reason) of a finished job of `stage` (TRAINING or EVALUATION); (None, None) when it ended
    cleanly within its limit. `touched`: what a training without the sandbox changed of the record."""
    training = stage == TRAINING
    if touched:
        return "invalid", f"touched {', '.join(touched)} during training"
    if result.stopped_for:  # by its watch (execution/watch.py): over its disk quota or memory limit
        return "invalid", result.stopped_for if training else f"the evaluation of its model: {result.stopped_for}"
    if result.lost:
        return "crash", "worker lost" if training else "worker lost (during the evaluation of its model)"
    if result.timed_out:
        if not training:
            return "timeout", f"the evaluation of its model ran past {limit_seconds:g}s"
        share = busy_share(result.contention_seconds, result.seconds)
        machine = f"; other processes took {share:.0%} of the machine" if (share or 0) >= BUSY_SHARE else ""
        return "timeout", f"still running after {result.seconds:.0f}s (budget {limit_seconds:g}s{machine})"
    if result.exit_code == 0:
        return None, None
    if not training:
        if result.exit_code == REFUSED_EXIT_CODE:
            refused = [line for line in result.log_tail.splitlines() if line.startswith("refused:")]
            why = refused[-1].split(":", 1)[1].strip() if refused else last_line(result.log_tail)
            return "invalid", why or "the evaluation refused the model"
        return "crash", f"evaluation failed (exit code {result.exit_code}): {last_line(result.log_tail)}"
    tail = result.log_tail.lower()
    if any(marker in tail for marker in OOM_MARKERS):
        return "crash", "oom"
    if any(marker in tail for marker in NAN_MARKERS):
        return "crash", "nan"
    return "crash", f"exit code {result.exit_code}: {last_line(result.log_tail)}"


def last_line(tail: str) -> str:
    """The line of a log tail that says what went wrong: the last one naming an error, else the last."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[:160]
    return lines[-1][:160] if lines else "no output"


def baseline_cause(trained, budget_seconds: float) -> tuple[str, str]:
    """(cause, figure) of a failed baseline training: a timeout on a machine that other work kept busy
    (the figure: how busy), a timeout on a quiet one (the budget is too small for start-up, a step and
    the export), or anything else (a crash or refusal of the unmodified recipe: the recipe is broken)."""
    if trained.outcome != "timeout":
        return BROKEN_RECIPE, ""
    result = trained.result
    share = busy_share(result.contention_seconds, result.seconds)
    if share is not None and share >= BUSY_SHARE:
        return BUSY_MACHINE, (f" while other processes took {share:.0%} of the machine's CPU time "
                              f"({result.contention_seconds:.0f}s of its {result.seconds:.0f}s)")
    return BUDGET_TOO_SMALL, f" (budget {budget_seconds:g}s; start-up took {result.startup_seconds or 0:.0f}s)"
