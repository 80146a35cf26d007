"""What a run looks like afterwards: experiment records and run summaries in one row shape.

`log --json` and every other JSON output use these dicts, so scripts see one shape everywhere.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path

from autoresearch.errors import UserError
from autoresearch.gains import gain_or_none
from autoresearch.keep import keep_margin, recorded_runs
from autoresearch.ledger import EXPERIMENT_COLUMNS, Ledger, best_row
from autoresearch.noise import NoiseFloor
from autoresearch.outcomes import OUTCOMES
from autoresearch.pricing import PriceTable, Usage, total_usage, usage_by
from autoresearch.settings import resumed_options
from autoresearch.runlock import LOCK_FILE

# What listings read of each experiment: everything but the diff, the log tail and the files' hash.
LISTING_COLUMNS = tuple(c for c in EXPERIMENT_COLUMNS if c not in ("diff", "log_tail", "files_hash"))
LOG_TAIL_LINES = 40


def pick_tag(ledger: Ledger, tag: str | None) -> str:
    """The asked-for run, or the latest one: the one most recently active (its start, its end, an experiment's
    start or end), so that after `run --resume` of an older run, log, verify and report show that one."""
    if tag is not None:
        if ledger.run(tag) is None:
            raise UserError(f"no run tagged {tag!r}; `autoresearch runs` lists them")
        return tag
    latest = ledger.latest_tag()
    if latest is None:
        raise UserError("no runs yet in this workspace; start one with `autoresearch run`")
    return latest


def run_keep_margin(run: dict, best: dict | None) -> float | None:
    """The gain a change's first run must show over the run's best to be kept, as the run's own keep rule
    (its settings) and measured noise floor make it now; None before a baseline, or with neither a noise
    floor nor --min-delta."""
    if best is None or best.get("metric") is None:
        return None
    rule = resumed_options(run, {}).keep_rule  # the run's own settings, as a resume reads them
    noise = NoiseFloor(run.get("noise_std"), run.get("noise_runs") or 0)
    return keep_margin(list(recorded_runs(best)), run["direction"], noise, rule)


def experiment_records(ledger: Ledger, tag: str, prices: PriceTable | None = None, nested: bool = True,
                       outcome: str | None = None, last: int | None = None) -> list[dict]:
    """One dict per experiment of the run, in order: the row shape of every JSON and TSV output.

    `outcome` keeps the experiments of one outcome, `last` the last N of them (both in SQL: the
    last 20 of 10,000 read 20 rows). nested=False skips decoding each row's summary and decision
    (empty in the records): the text listing shows neither, and on 10,000 experiments the decoding
    is a good part of its time.
    """
    check_filters(outcome, last)
    columns = LISTING_COLUMNS if nested else tuple(c for c in LISTING_COLUMNS if not c.endswith("_json"))
    rows = ledger.experiments(tag, columns, outcome=outcome, last=last)
    between = (rows[0]["number"], rows[-1]["number"]) if rows and (outcome or last) else None
    usage = usage_by_experiment(ledger.token_usage(tag, between), prices)
    direction = run_direction(ledger, tag)
    places = ledger.first_run_places(tag)
    return [experiment_record(row, direction, usage.get(row["number"]), places.get(row["number"])) for row in rows]


def run_direction(ledger: Ledger, tag: str) -> str:
    run = ledger.run(tag)
    return run["direction"] if run else "lower"


def experiment_record(row: dict, direction: str, usage: dict | None = None,
                      place: tuple[int | None, str | None] | None = None) -> dict:
    """The shared row shape of one experiment, from its ledger row, its summed LLM usage and the
    (slot, device) its first training ran on.

    `gain` is the metric's gain over the best before it (positive is better, whatever the direction).
    """
    usage = usage or empty_usage()
    slot, device = place or (None, None)
    return {
        "tag": row["tag"],
        "number": row["number"],
        "commit": row["commit_sha"],
        "parent": row["parent_sha"],
        "parent_number": row.get("parent_number"),  # the experiment it was drafted from (or combined onto)
        "slot": slot,  # where its first training ran: the slot, and the GPU (CUDA_VISIBLE_DEVICES) if any
        "device": device,
        "outcome": row["outcome"],
        "reason": row["reason"],
        "metric": row["metric"],
        "best_before": row["best_before"],
        "gain": gain_or_none(row["metric"], row["best_before"], direction),
        "description": row["description"],
        "summary": row.get("summary", {}),  # what the training printed: information only, never the metric
        "evaluation": row.get("evaluation"),  # what the harness's evaluation of its model printed: the metric's source
        "seed": row["seed"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "propose_seconds": row["propose_seconds"],
        "train_seconds": row["train_seconds"],
        "duration_seconds": row["total_seconds"],
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "cached_tokens": usage["cached_tokens"],  # of the prompt tokens, read from the server's prompt cache
        "cost_usd": usage["cost_usd"],
        "log_path": row["log_path"],
        "agent": row.get("agent"),  # which agent and model proposed it (a resume may switch them)
        "model": row.get("model"),
        "decision": row.get("decision"),  # the keep rule's numbers: gain, margin, noise, each run's metric and seed
        "notes": row.get("notes"),  # what the agent wrote under NOTES: for its later experiments
    }


def empty_usage() -> dict:
    return Usage().as_dict()


def usage_by_experiment(usage_rows: list[dict], prices: PriceTable | None) -> dict[int, dict]:
    """Tokens and cost per experiment number; cost is None where a model has no price (a local endpoint)."""
    return {number: usage.as_dict() for number, usage in usage_by(usage_rows, prices, "experiment").items()}


def run_usage(ledger: Ledger, tag: str, prices: PriceTable | None) -> dict:
    """Prompt, completion and cached tokens and cost of every LLM call of a run (cost None if one had no price)."""
    return total_usage(ledger.token_usage(tag), prices).as_dict()


def run_summary(ledger: Ledger, tag: str, records: list[dict] | None = None, prices: PriceTable | None = None,
                runs_dir: Path | None = None) -> dict:
    """Counts, best metric and its gain over the baseline, duration, tokens and cost of one run.

    With the workspace's runs folder, a run the ledger calls `running` whose process is gone says
    `interrupted` (see live_status).
    """
    if records is None:  # from the indexes, without reading the experiments
        return next(summary for summary in run_summaries(ledger, prices, runs_dir) if summary["tag"] == tag)
    run = _with_live_status(ledger.run(tag), runs_dir)
    kept = [r for r in records if r["outcome"] == "keep"]
    counts: dict[str, int] = {}
    for record in records:
        counts[record["outcome"]] = counts.get(record["outcome"], 0) + 1
    usage = Usage()
    for record in records:
        usage.add(record["prompt_tokens"], record["completion_tokens"], record["cost_usd"], record.get("cached_tokens"))
    summary = _summary(run, counts, kept[0]["metric"] if kept else None,
                       best_row(run, kept)["metric"] if kept else None, usage.as_dict(), ledger.training_seconds().get(tag))
    summary["keep_margin"] = run_keep_margin(run, best_row(run, kept))
    summary["verification"] = verification_record(ledger.latest_verification(tag))
    summary["agents"] = ledger.agents_by_run(tag).get(tag, [])
    return summary


def run_summaries(ledger: Ledger, prices: PriceTable | None = None, runs_dir: Path | None = None) -> list[dict]:
    """The summary of every run in the workspace, oldest first, from aggregates (fast on big ledgers)."""
    counts = ledger.outcome_counts()
    kept = ledger.kept_metrics()
    # prices are per token: per run and model is exact
    usage = {tag: total.as_dict() for tag, total in usage_by(ledger.token_usage_by_model(), prices, "tag").items()}
    verifications = ledger.latest_verifications()
    agents = ledger.agents_by_run()
    training = ledger.training_seconds()
    summaries = [_summary(run, counts.get(run["tag"], {}), *kept.get(run["tag"], (None, None)),
                          usage.get(run["tag"], empty_usage()), training.get(run["tag"]))
                 for run in (_with_live_status(run, runs_dir) for run in ledger.runs())]
    for summary in summaries:
        summary["verification"] = verification_record(verifications.get(summary["tag"]))
        summary["agents"] = agents.get(summary["tag"], [])
    return summaries


def verification_record(verification: dict | None) -> dict | None:
    """The latest `verify` of a run as summaries carry it: verdict, gains with their 95% intervals."""
    if verification is None:
        return None
    return {key: verification[key] for key in ("verdict", "message", "val_gain", "val_low", "val_high", "test_gain",
                                               "test_low", "test_high", "confidence", "seeds", "best_commit",
                                               "baseline_commit", "created_at")}


def duty_cycle(training_seconds: float | None, slot_seconds: float | None) -> float | None:
    """The share of the run's slot time spent training: training seconds summed over its slots /
    (slots x the seconds it has been going). The rest went to proposing, evaluating, deciding."""
    if not slot_seconds or training_seconds is None:
        return None
    return min(1.0, training_seconds / slot_seconds)


def _summary(run: dict, counts: dict[str, int], baseline: float | None, best: float | None, usage: dict,
             training_seconds: float | None = None) -> dict:
    return {
        "tag": run["tag"],
        "recipe": run["recipe"],
        "agent": run["agent"],
        "model": run["model"],
        "metric": run["metric"],
        "direction": run["direction"],
        "status": run["status"],
        "started_at": run["started_at"],
        "finished_at": run["finished_at"],
        "duration_seconds": run_duration(run),
        "experiments": sum(counts.values()),
        "kept": counts.get("keep", 0),
        "discarded": counts.get("discard", 0),
        "crashes": counts.get("crash", 0) + counts.get("timeout", 0),
        "invalid": counts.get("invalid", 0),
        "interrupted": counts.get("interrupted", 0),
        "baseline_metric": baseline,
        "best_metric": best,
        "gain": gain_or_none(best, baseline, run["direction"]),
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "cached_tokens": usage["cached_tokens"],
        "cost_usd": usage["cost_usd"],
        "sandbox": run.get("sandbox") or "-",  # the sandbox level its trainings ran under (docs/trust.md)
        "noise_std": run.get("noise_std"),  # the measured run-to-run spread of the metric (docs/noise.md)
        "noise_runs": run.get("noise_runs"),
        "best_number": run.get("best_number"),  # the run's best experiment (ledger.best_row), when it records one
        "duty_cycle": duty_cycle(training_seconds, run.get("slot_seconds")),
    }


def live_status(status: str, run_dir: Path) -> str:
    """The ledger's status of a run, except that `running` with no live process holding the run is `interrupted`.

    A run killed outright (kill -9, a reboot, the machine's OOM killer) leaves `running` in the
    ledger until it is resumed; the run's lock file names the process that held it.
    """
    if status != "running":
        return status
    try:
        pid = int((run_dir / LOCK_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return status  # no lock file: a run from before the lock existed, or one just starting
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "interrupted"
    except PermissionError:
        pass  # alive, under another user
    return status


def _with_live_status(run: dict, runs_dir: Path | None) -> dict:
    if runs_dir is None or run["status"] != "running":
        return run
    return {**run, "status": live_status(run["status"], Path(runs_dir) / run["tag"])}


def run_duration(run: dict, now: datetime | None = None) -> float | None:
    """Seconds from start to finish; a run still going counts up to now, a killed one is unknown (None)."""
    if not run["finished_at"] and run["status"] != "running":
        return None  # stopped without a record of when (killed): unknown
    try:
        started = datetime.fromisoformat(run["started_at"])
        ended = datetime.fromisoformat(run["finished_at"]) if run["finished_at"] else (now or datetime.now(timezone.utc))
    except (TypeError, ValueError):
        return None
    return max(0.0, (ended - started).total_seconds())


# --- filters and machine-readable output

def check_filters(outcome: str | None, last: int | None) -> None:
    if outcome is not None and outcome not in OUTCOMES:
        raise UserError(f"--outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
    if last is not None and last < 1:
        raise UserError("--last must be at least 1")


def rows_json(rows: list[dict]) -> str:
    """A JSON array with one row per line: valid JSON, greppable, and fast for 10,000 rows."""
    if not rows:
        return "[]"
    return "[\n" + ",\n".join(_json_line(row) for row in rows) + "\n]"


def row_json(row: dict) -> str:
    """One row as indented JSON (nan and inf as null)."""
    return json.dumps(_finite(row), indent=2, allow_nan=False, default=_json_default)


def _json_line(row: dict) -> str:
    line = json.dumps(row, default=_json_default)
    if "NaN" in line or "Infinity" in line:  # a crashed run's summary can hold them: null in JSON
        line = json.dumps(_finite(row), allow_nan=False, default=_json_default)
    return line


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def rows_tsv(rows: list[dict]) -> str:
    """The same rows as tab-separated values: a header of the keys, nested values as compact JSON, None empty.

    Cells holding a tab, a newline or a quote are quoted the way spreadsheets and Python's csv
    module read them back.
    """
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(rows[0])
    for row in rows:
        writer.writerow([json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
                         for value in row.values()])
    return buffer.getvalue().rstrip("\n")


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# --- one experiment whole

def experiment_detail(ledger: Ledger, tag: str, number: int, prices: PriceTable | None = None,
                      with_prompt: bool = False, repo=None) -> dict:
    """The record of one experiment plus its diff, log tail, training runs and LLM calls.

    The diff is the one recorded when the change was proposed (kept for discarded and invalid
    experiments too); an older row without one falls back to `git diff parent commit` in `repo`.
    Kept experiments store no log tail in the ledger: it is read from their log file.
    """
    row = ledger.experiment(tag, number)
    if row is None:
        numbers = [r["number"] for r in ledger.experiments(tag, ("tag", "number"))]
        known = f"it has {numbers[0]} to {numbers[-1]}" if numbers else "it has none yet"
        raise UserError(f"run {tag} has no experiment {number} ({known})")
    calls = ledger.llm_calls(tag, number)
    usage = usage_by_experiment(ledger.token_usage(tag), prices).get(number)
    detail = experiment_record(row, run_direction(ledger, tag), usage, ledger.first_run_places(tag).get(number))
    diff = row["diff"]
    if not diff and repo is not None and row["commit_sha"] and row["parent_sha"]:
        try:
            diff = repo.diff(row["parent_sha"], row["commit_sha"])
        except Exception:  # the commits may be gone (a pruned repository); the ledger row is what remains
            diff = None
    detail["diff"] = diff or None
    detail["log_tail"] = row["log_tail"] or read_log_tail(row["log_path"])
    detail["training_runs"] = ledger.training_runs(tag, number)  # the first, noise and confirmation runs
    detail["llm_calls"] = [_call_record(call, prices, with_prompt) for call in calls]
    return detail


def _call_record(call: dict, prices: PriceTable | None, with_prompt: bool) -> dict:
    cost = None if prices is None else prices.priced(call["model"], call["prompt_tokens"] or 0,
                                                     call["completion_tokens"] or 0, call.get("cached_tokens") or 0)
    record = {"attempt": call["attempt"], "model": call["model"], "prompt_tokens": call["prompt_tokens"],
              "completion_tokens": call["completion_tokens"], "cached_tokens": call.get("cached_tokens"),
              "finish_reason": call.get("finish_reason"), "cost_usd": cost,
              "latency_seconds": call["latency_seconds"], "error": call["error"], "created_at": call["created_at"]}
    if with_prompt:
        record["messages"] = call["messages"]
        record["reply"] = call["reply"]
    return record


def read_log_tail(log_path: str | None, lines: int = LOG_TAIL_LINES, max_bytes: int = 64_000) -> str | None:
    """The last lines of a training log file, or None when there is no such file."""
    if not log_path:
        return None
    try:
        with open(log_path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return None
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def explain_outcome(record: dict, metric: str, direction: str) -> str:
    """The outcome with its reason; keep and discard say what they were compared with."""
    if record["reason"]:
        return f"{record['outcome']}: {record['reason']}"
    value, best = record["metric"], record["best_before"]
    if record["outcome"] == "keep":
        if best is None:
            return f"keep: the baseline, {metric} {value:.6g}"
        return f"keep: {metric} {value:.6g} beats the best before it, {best:.6g}"
    if record["outcome"] == "discard" and value is not None and best is not None:
        return f"discard: {metric} {value:.6g} is not better than the best before it, {best:.6g} ({direction} is better)"
    return record["outcome"]


def run_details(ledger: Ledger, tag: str, prices: PriceTable | None = None) -> list[dict]:
    """Every experiment's record with its diff, log tail and training runs, in order (for the HTML report)."""
    usage = usage_by_experiment(ledger.token_usage(tag), prices)
    details = []
    direction = run_direction(ledger, tag)
    places = ledger.first_run_places(tag)
    runs: dict[int, list[dict]] = {}
    for run in ledger.training_runs(tag):  # each experiment's training runs: the machine while each ran
        runs.setdefault(run["experiment"], []).append(run)
    for row in ledger.experiments(tag):
        detail = experiment_record(row, direction, usage.get(row["number"]), places.get(row["number"]))
        detail["diff"] = row["diff"] or None
        detail["log_tail"] = row["log_tail"] or read_log_tail(row["log_path"])
        detail["training_runs"] = runs.get(row["number"], [])
        details.append(detail)
    return details
