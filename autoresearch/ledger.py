"""The ledger: every run, experiment, training run and LLM call, in SQLite at runs/ledger.db.

Rows are written ahead: an experiment's row exists (outcome `running`) before anything it does can
fail, and its outcome is written before the branch is reset. The schema grows by numbered migrations
kept in migrations.py (`PRAGMA user_version`: how many applied). Every reader returns plain dicts of one
shape, so `log --json` and every other JSON output agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from autoresearch.migrations import MIGRATIONS

# llm_calls.attempt of the check a run (and each resume) makes of its endpoint before it trains
# anything, recorded under the number of the experiment that comes next; a proposal's attempts count from 1.
ENDPOINT_CHECK_ATTEMPT = 0

EXPERIMENT_COLUMNS = ("tag", "number", "outcome", "reason", "description", "commit_sha", "parent_sha", "metric",
                      "best_before", "summary_json", "files_hash", "diff", "log_path", "log_tail", "seed",
                      "started_at", "finished_at", "propose_seconds", "train_seconds", "total_seconds",
                      "decision_json", "agent", "model", "evaluation_json", "parent_number", "notes")
# Every table with a row per run or per part of a run, children before the runs they refer to.
RUN_TABLES = ("llm_calls", "training_runs", "verifications", "experiments", "runs")
TRAINING_RUN_EXTRAS = frozenset({"evaluation_json", "evaluation_seconds", "sandbox", "stolen_seconds", "model_path",
                                 "model_bytes", "model_sha256", "device", "contention_seconds", "other_gpu_processes",
                                 "startup_seconds"})
TRAINING_RUN_KINDS = ("first", "noise", "confirm")  # the baseline's extra runs are `noise`, a candidate's `confirm`


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Ledger:
    """One SQLite file; every write is its own committed transaction."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    def close(self) -> None:
        self._db.close()

    # --- safety copies (a training script can reach the file: see recovery.LedgerGuard)

    def backup_to(self, path: Path) -> None:
        """A consistent copy of the whole ledger at path (SQLite's online backup).

        The write-ahead log is folded into the file first, so that the file alone holds every row
        and a later change to it shows in `content_digest` (a page still in the log would hide it).
        """
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        target = sqlite3.connect(path)
        try:
            self._db.backup(target)
        finally:
            target.close()

    def content_digest(self, path: Path | None = None) -> str | None:
        """A digest of every row of every table (and of the schema) of the file at path (default: the ledger).

        Read through a fresh connection: this connection's cache would not notice a file deleted or
        overwritten under it. None when the file is missing, unreadable or fails SQLite's quick check.
        """
        target = Path(path or self.path)
        if not target.is_file():
            return None
        try:
            fresh = sqlite3.connect(f"{target.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        except sqlite3.Error:
            return None
        digest = hashlib.sha256()
        try:
            if fresh.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                return None
            digest.update(repr(fresh.execute("PRAGMA user_version").fetchone()).encode())
            tables = [row[0] for row in fresh.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            digest.update(repr(fresh.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()).encode())
            for table in tables:
                digest.update(table.encode() + b"\0")
                for row in fresh.execute(f'SELECT * FROM "{table}" ORDER BY rowid'):
                    digest.update(repr(row).encode() + b"\n")
            return digest.hexdigest()
        except sqlite3.Error:
            return None
        finally:
            fresh.close()

    def restore_from(self, path: Path) -> None:
        """Put the copy at path back in place of the ledger file, and reconnect to it."""
        self._db.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        staging = self.path.with_name(self.path.name + ".restoring")
        shutil.copyfile(path, staging)
        os.replace(staging, self.path)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")

    # --- runs

    def create_run(self, tag: str, **fields) -> None:
        fields.setdefault("started_at", now_iso())
        fields["config_json"] = json.dumps(fields.pop("config", {}), sort_keys=True)
        columns = ["tag", *fields]
        self._db.execute(f"INSERT INTO runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                         [tag, *fields.values()])

    def set_run_status(self, tag: str, status: str) -> None:
        finished = None if status == "running" else now_iso()
        self._db.execute("UPDATE runs SET status = ?, finished_at = ? WHERE tag = ?", (status, finished, tag))

    def set_run_config(self, tag: str, config: dict) -> None:
        """The run's settings as they are now (a resume's overrides included)."""
        self._db.execute("UPDATE runs SET config_json = ? WHERE tag = ?", (json.dumps(config, sort_keys=True), tag))

    def add_active_seconds(self, tag: str, seconds: float, slots: int = 1) -> None:
        """Time the run has been going, summed over its invocations (what --hours counts), and that
        time times the slots it had (what its duty cycle is measured against)."""
        self._db.execute("UPDATE runs SET active_seconds = active_seconds + ?, slot_seconds = slot_seconds + ? "
                         "WHERE tag = ?", (seconds, seconds * slots, tag))

    def rebase_run(self, tag: str, base_commit: str) -> None:
        """A run that has no baseline yet starts again from another commit (its recipe was fixed)."""
        self._db.execute("UPDATE runs SET base_commit = ? WHERE tag = ?", (base_commit, tag))

    def run(self, tag: str) -> dict | None:
        return next(iter(_run_dict(row) for row in self._db.execute("SELECT * FROM runs WHERE tag = ?", (tag,))), None)

    def runs(self) -> list[dict]:
        return [_run_dict(row) for row in self._db.execute("SELECT * FROM runs ORDER BY started_at, rowid")]

    def count_run_rows(self, tag: str) -> int:
        """The run's rows in every table of the ledger."""
        return sum(self._db.execute(f"SELECT COUNT(*) FROM {table} WHERE tag = ?", (tag,)).fetchone()[0]
                   for table in RUN_TABLES)

    def delete_run(self, tag: str) -> int:
        """Delete the run's rows from every table, in one transaction; returns how many there were."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            deleted = sum(self._db.execute(f"DELETE FROM {table} WHERE tag = ?", (tag,)).rowcount
                          for table in RUN_TABLES)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return deleted

    def latest_tag(self) -> str | None:
        row = self._db.execute("SELECT r.tag FROM runs r LEFT JOIN (SELECT tag, MAX(MAX(started_at), IFNULL(MAX("
                               "finished_at), '')) AS a FROM experiments GROUP BY tag) e USING (tag) ORDER BY MAX("
                               "r.started_at, IFNULL(r.finished_at, ''), IFNULL(e.a, '')) DESC, r.rowid DESC LIMIT 1").fetchone()
        return row["tag"] if row else None

    # --- experiments

    def start_experiment(self, tag: str, number: int, **fields) -> None:
        """The write-ahead row: it exists before the experiment can fail in any way."""
        fields = {"outcome": "running", "started_at": now_iso(), **fields}
        columns = ["tag", "number", *fields]
        self._db.execute(f"INSERT INTO experiments ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                         [tag, number, *fields.values()])

    def update_experiment(self, tag: str, number: int, **fields) -> None:
        if "summary" in fields:
            fields["summary_json"] = json.dumps(fields.pop("summary"), sort_keys=True)
        for name in ("decision", "evaluation"):
            if name in fields:
                fields[f"{name}_json"] = json.dumps(fields.pop(name), sort_keys=True)
        unknown = set(fields) - set(EXPERIMENT_COLUMNS)
        if unknown:
            raise ValueError(f"unknown experiment fields: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self._db.execute(f"UPDATE experiments SET {assignments} WHERE tag = ? AND number = ?",
                         [*fields.values(), tag, number])

    def experiments(self, tag: str, columns: tuple[str, ...] | None = None, outcome: str | None = None,
                    last: int | None = None) -> list[dict]:
        """Every experiment of a run in order; `columns` fetches only those (listings skip diffs and logs),
        `outcome` only the experiments of that outcome, `last` only the last N of them."""
        selected = "*" if columns is None else ", ".join(c for c in columns if c in EXPERIMENT_COLUMNS)
        query, params = f"SELECT {selected} FROM experiments WHERE tag = ?", [tag]
        if outcome is not None:
            query, params = query + " AND outcome = ?", params + [outcome]
        if last is not None:
            query, params = f"SELECT * FROM ({query} ORDER BY number DESC LIMIT ?)", params + [last]
        cursor = self._db.cursor()
        cursor.row_factory = None  # plain tuples zipped with the names: a third faster than sqlite3.Row on big runs
        cursor.execute(query + " ORDER BY number", params)
        names = [column[0] for column in cursor.description]
        return [_experiment_dict(dict(zip(names, row))) for row in cursor]

    def experiment(self, tag: str, number: int) -> dict | None:
        row = self._db.execute("SELECT * FROM experiments WHERE tag = ? AND number = ?", (tag, number)).fetchone()
        return _experiment_dict(row) if row else None

    def mark_unfinished_interrupted(self, tag: str) -> list[int]:
        """Experiments left `running` by a killed tool become `interrupted`; returns their numbers."""
        numbers = [row[0] for row in self._db.execute(
            "SELECT number FROM experiments WHERE tag = ? AND outcome = 'running'", (tag,))]
        self._db.execute("UPDATE experiments SET outcome = 'interrupted', reason = COALESCE(reason, 'tool stopped'),"
                         " finished_at = ? WHERE tag = ? AND outcome = 'running'", (now_iso(), tag))
        return numbers

    # --- training runs, the noise floor and verifications (docs/noise.md)

    def start_training_run(self, tag: str, experiment: int, attempt: int, kind: str, seed: int,
                           commit_sha: str | None, log_path: str, slot: int | None = None,
                           device: str | None = None, job: str | None = None) -> int:
        """The write-ahead row of one training run (outcome `running`); returns its id. `job`: the executor's
        name for it (Executor.job_ref)."""
        cursor = self._db.execute(
            "INSERT INTO training_runs (tag, experiment, attempt, kind, seed, commit_sha, outcome, log_path,"
            " started_at, slot, device, job) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?)",
            (tag, experiment, attempt, kind, seed, commit_sha, log_path, now_iso(), slot, device, job))
        return cursor.lastrowid

    def keep_experiment(self, tag: str, number: int, **fields) -> None:
        """Its outcome `keep` and the run's best pointer to it, in one transaction: a kill between the
        two would otherwise leave a kept row that is not the best, and its change would be lost."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self.update_experiment(tag, number, outcome="keep", **fields)
            self._db.execute("UPDATE runs SET best_number = ? WHERE tag = ?", (number, tag))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def finish_training_run(self, run_id: int, outcome: str, reason: str | None = None, metric: float | None = None,
                            summary: dict | None = None, seconds: float | None = None, **fields) -> None:
        """Outcome `ok` (metric measured), or the failure's outcome (crash, timeout, invalid, interrupted); `fields`
        add the evaluation's numbers (`evaluation`) and seconds, and the rest of TRAINING_RUN_EXTRAS."""
        if "evaluation" in fields:
            evaluation = fields.pop("evaluation")
            fields["evaluation_json"] = None if evaluation is None else json.dumps(evaluation, sort_keys=True)
        unknown = set(fields) - TRAINING_RUN_EXTRAS
        if unknown:
            raise ValueError(f"unknown training run fields: {sorted(unknown)}")
        assignments = "".join(f", {name} = ?" for name in fields)
        self._db.execute(f"UPDATE training_runs SET outcome = ?, reason = ?, metric = ?, summary_json = ?, seconds = ?,"
                         f" finished_at = ?{assignments} WHERE id = ?",
                         (outcome, reason, metric, json.dumps(summary or {}, sort_keys=True), seconds, now_iso(),
                          *fields.values(), run_id))

    def forget_model(self, run_id: int) -> None:
        """The saved model of a training run was deleted (its size and hash stay on record)."""
        self._db.execute("UPDATE training_runs SET model_path = NULL WHERE id = ?", (run_id,))

    def set_run_sandbox(self, tag: str, level: str) -> None:
        self._db.execute("UPDATE runs SET sandbox = ? WHERE tag = ?", (level, tag))

    def training_runs(self, tag: str, experiment: int | None = None) -> list[dict]:
        """Every training run of a run (or of one experiment): first runs, noise and confirmation runs, in order."""
        query, params = "SELECT * FROM training_runs WHERE tag = ?", [tag]
        if experiment is not None:
            query, params = query + " AND experiment = ?", params + [experiment]
        rows = self._db.execute(query + " ORDER BY experiment, attempt", params)
        return [_experiment_dict(row) for row in rows]

    def training_seconds(self) -> dict[str, float]:
        """Seconds spent training (evaluations not counted) per run, over all its training runs."""
        return dict(self._db.execute("SELECT tag, SUM(seconds) FROM training_runs WHERE seconds IS NOT NULL "
                                     "GROUP BY tag"))

    def first_run_places(self, tag: str) -> dict[int, tuple[int | None, str | None]]:
        """(slot, device) of each experiment's first training run."""
        return {number: (slot, device) for number, slot, device in self._db.execute(
            "SELECT experiment, slot, device FROM training_runs WHERE tag = ? AND attempt = 0", (tag,))}

    def mark_unfinished_training_runs_interrupted(self, tag: str) -> None:
        """Training runs left `running` by a killed tool become `interrupted`."""
        self._db.execute("UPDATE training_runs SET outcome = 'interrupted', reason = COALESCE(reason, 'tool stopped'),"
                         " finished_at = ? WHERE tag = ? AND outcome = 'running'", (now_iso(), tag))

    def set_noise_floor(self, tag: str, std: float | None, runs: int) -> None:
        """The run-to-run spread of the metric, measured on `runs` runs of the unmodified recipe."""
        self._db.execute("UPDATE runs SET noise_std = ?, noise_runs = ? WHERE tag = ?", (std, runs, tag))

    def record_verification(self, tag: str, **fields) -> int:
        """One `autoresearch verify` result; returns its id."""
        fields = {"created_at": now_iso(), **fields}
        for name in ("seeds", "runs"):
            fields[f"{name}_json"] = json.dumps(fields.pop(name, []), sort_keys=True)
        columns = ["tag", *fields]
        cursor = self._db.execute(f"INSERT INTO verifications ({', '.join(columns)})"
                                  f" VALUES ({', '.join('?' * len(columns))})", [tag, *fields.values()])
        return cursor.lastrowid

    def verifications(self, tag: str) -> list[dict]:
        """Every verification of a run, oldest first."""
        rows = self._db.execute("SELECT * FROM verifications WHERE tag = ? ORDER BY id", (tag,))
        return [_verification_dict(row) for row in rows]

    def latest_verification(self, tag: str) -> dict | None:
        row = self._db.execute("SELECT * FROM verifications WHERE tag = ? ORDER BY id DESC LIMIT 1", (tag,)).fetchone()
        return _verification_dict(row) if row else None

    def latest_verifications(self) -> dict[str, dict]:
        """The latest verification of every run that has one, by tag."""
        rows = self._db.execute("SELECT * FROM verifications WHERE id IN (SELECT MAX(id) FROM verifications GROUP BY tag)")
        return {row["tag"]: _verification_dict(row) for row in rows}

    # --- LLM calls

    def record_llm_call(self, tag: str, experiment: int, attempt: int, model: str | None, messages: list,
                        reply: str | None, error: str | None, prompt_tokens: int | None,
                        completion_tokens: int | None, latency_seconds: float, cached_tokens: int | None = None,
                        finish_reason: str | None = None) -> None:
        self._db.execute(
            "INSERT INTO llm_calls (tag, experiment, attempt, model, messages_json, reply, error, prompt_tokens,"
            " completion_tokens, latency_seconds, created_at, cached_tokens, finish_reason)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (tag, experiment, attempt, model, json.dumps(messages), reply, error, prompt_tokens,
             completion_tokens, latency_seconds, now_iso(), cached_tokens, finish_reason))

    def llm_calls(self, tag: str, experiment: int | None = None) -> list[dict]:
        query, params = "SELECT * FROM llm_calls WHERE tag = ?", [tag]
        if experiment is not None:
            query, params = query + " AND experiment = ?", params + [experiment]
        rows = self._db.execute(query + " ORDER BY id", params)
        return [{**dict(row), "messages": json.loads(row["messages_json"])} for row in rows]

    def token_totals(self, tag: str) -> dict[int, tuple[int, int]]:
        """Prompt and completion tokens per experiment number."""
        rows = self._db.execute("SELECT experiment, COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0)"
                                " FROM llm_calls WHERE tag = ? GROUP BY experiment", (tag,))
        return {row[0]: (row[1], row[2]) for row in rows}

    def token_usage(self, tag: str | None = None, between: tuple[int, int] | None = None) -> list[dict]:
        """Prompt, completion and cached prompt tokens summed per run, experiment and model (to price them per model).

        `between` (first, last) keeps the experiments numbered from first to last.
        """
        where, params = ("WHERE tag = ?", [tag]) if tag is not None else ("", [])
        if tag is not None and between is not None:
            where, params = where + " AND experiment BETWEEN ? AND ?", params + list(between)
        rows = self._db.execute("SELECT tag, experiment, model, COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens,"
                                " COALESCE(SUM(completion_tokens), 0) AS completion_tokens,"
                                " COALESCE(SUM(cached_tokens), 0) AS cached_tokens, COUNT(*) AS calls"
                                f" FROM llm_calls {where} GROUP BY tag, experiment, model", params)
        return [dict(row) for row in rows]

    def token_usage_by_model(self) -> list[dict]:
        """Prompt and completion tokens summed per run and model: a run's cost without a row per experiment."""
        rows = self._db.execute("SELECT tag, model, COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens,"
                                " COALESCE(SUM(completion_tokens), 0) AS completion_tokens,"
                                " COALESCE(SUM(cached_tokens), 0) AS cached_tokens, COUNT(*) AS calls"
                                " FROM llm_calls GROUP BY tag, model")
        return [dict(row) for row in rows]

    def agents_by_run(self, tag: str | None = None) -> dict[str, list[dict]]:
        """Which agent and model made which experiments, per run: stretches of experiment numbers in order.

        Each stretch is {agent, model, first, last}; a run resumed with another agent has several.
        """
        where, params = ("AND tag = ?", [tag]) if tag is not None else ("", [])
        rows = self._db.execute(f"SELECT tag, number, agent, model FROM experiments WHERE agent IS NOT NULL {where}"
                                " ORDER BY tag, number", params)
        found: dict[str, list[dict]] = {}
        for run_tag, number, agent, model in rows:
            stretches = found.setdefault(run_tag, [])
            if stretches and (stretches[-1]["agent"], stretches[-1]["model"]) == (agent, model):
                stretches[-1]["last"] = number
            else:
                stretches.append({"agent": agent, "model": model, "first": number, "last": number})
        return found

    def outcome_counts(self) -> dict[str, dict[str, int]]:
        """Experiments per run and outcome, from an index alone."""
        counts: dict[str, dict[str, int]] = {}
        for tag, outcome, count in self._db.execute("SELECT tag, outcome, COUNT(*) FROM experiments GROUP BY tag, outcome"):
            counts.setdefault(tag, {})[outcome] = count
        return counts

    def kept_metrics(self) -> dict[str, tuple[float | None, float | None]]:
        """(first kept metric, the best's metric) per run: the baseline and the best so far (best_row)."""
        # SQLite takes a bare column from the row that MIN() or MAX() picked.
        first = self._db.execute("SELECT tag, MIN(number), metric FROM experiments WHERE outcome = 'keep' GROUP BY tag")
        best = dict(self._db.execute(
            "SELECT e.tag, e.metric FROM experiments e JOIN runs r ON r.tag = e.tag WHERE e.outcome = 'keep' AND "
            "e.number = COALESCE(r.best_number, (SELECT MAX(number) FROM experiments k WHERE k.tag = e.tag AND "
            "k.outcome = 'keep'))"))
        return {tag: (metric, best.get(tag)) for tag, _, metric in first}


def best_row(run: dict, kept: list[dict]) -> dict | None:
    """The run's best experiment among its kept rows: its own pointer (runs.best_number), else, for a
    run from before it, the last kept. With experiments in flight at once the last kept by number
    is not always the best: one drafted earlier can be kept after one drafted later."""
    if run.get("best_number") is not None:
        for row in kept:
            if row["number"] == run["best_number"]:
                return row
    return kept[-1] if kept else None


def _run_dict(row: sqlite3.Row) -> dict:
    data = dict(row)
    data["config"] = json.loads(data.pop("config_json") or "{}")
    return data


def _experiment_dict(row: sqlite3.Row | dict) -> dict:
    data = row if isinstance(row, dict) else dict(row)
    if "summary_json" in data:
        data["summary"] = json.loads(data.pop("summary_json") or "{}")
    for name in ("decision", "evaluation"):
        if f"{name}_json" in data:
            value = data.pop(f"{name}_json")
            data[name] = json.loads(value) if value else None
    return data


def _verification_dict(row: sqlite3.Row) -> dict:
    data = dict(row)
    data["seeds"] = json.loads(data.pop("seeds_json") or "[]")
    data["runs"] = json.loads(data.pop("runs_json") or "[]")
    return data
