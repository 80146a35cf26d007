"""What a run looks like afterwards: experiment records and run summaries in one row shape.

`log --json` and every other JSON output use these dicts, so scripts see one shape everywhere.
"""

from __future__ import annotations

from autoresearch.errors import UserError
from autoresearch.ledger import Ledger


def pick_tag(ledger: Ledger, tag: str | None) -> str:
    """The asked-for run, or the latest one."""
    if tag is not None:
        if ledger.run(tag) is None:
            raise UserError(f"no run tagged {tag!r}; `autoresearch runs` lists them")
        return tag
    latest = ledger.latest_tag()
    if latest is None:
        raise UserError("no runs yet in this workspace; start one with `autoresearch run`")
    return latest


def experiment_records(ledger: Ledger, tag: str) -> list[dict]:
    """One dict per experiment of the run, in order."""
    tokens = ledger.token_totals(tag)
    records = []
    for row in ledger.experiments(tag):
        delta = None
        if row["metric"] is not None and row["best_before"] is not None:
            delta = row["metric"] - row["best_before"]
        prompt_tokens, completion_tokens = tokens.get(row["number"], (0, 0))
        records.append({
            "tag": tag,
            "number": row["number"],
            "commit": row["commit_sha"],
            "parent": row["parent_sha"],
            "outcome": row["outcome"],
            "reason": row["reason"],
            "metric": row["metric"],
            "best_before": row["best_before"],
            "delta": delta,
            "description": row["description"],
            "summary": row["summary"],
            "seed": row["seed"],
            "started_at": row["started_at"],
            "finished_at": row["finished_at"],
            "propose_seconds": row["propose_seconds"],
            "train_seconds": row["train_seconds"],
            "duration_seconds": row["total_seconds"],
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "log_path": row["log_path"],
        })
    return records


def run_summary(ledger: Ledger, tag: str, records: list[dict] | None = None) -> dict:
    """Counts, best metric and its gain over the baseline for one run."""
    run = ledger.run(tag)
    records = experiment_records(ledger, tag) if records is None else records
    kept = [r for r in records if r["outcome"] == "keep"]
    baseline = kept[0]["metric"] if kept else None
    best = kept[-1]["metric"] if kept else None
    gain = None
    if best is not None and baseline is not None:
        gain = baseline - best if run["direction"] == "lower" else best - baseline
    return {
        "tag": tag,
        "recipe": run["recipe"],
        "agent": run["agent"],
        "model": run["model"],
        "metric": run["metric"],
        "direction": run["direction"],
        "status": run["status"],
        "started_at": run["started_at"],
        "finished_at": run["finished_at"],
        "experiments": len(records),
        "kept": len(kept),
        "discarded": sum(r["outcome"] == "discard" for r in records),
        "crashes": sum(r["outcome"] in ("crash", "timeout") for r in records),
        "invalid": sum(r["outcome"] == "invalid" for r in records),
        "baseline_metric": baseline,
        "best_metric": best,
        "gain": gain,
        "prompt_tokens": sum(r["prompt_tokens"] for r in records),
        "completion_tokens": sum(r["completion_tokens"] for r in records),
    }
