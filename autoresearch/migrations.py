"""The ledger's schema, as numbered migrations: the Nth entry takes a ledger from version N-1 to N.

Migrations are only ever appended (a ledger of any earlier version is brought up to date when it is
opened; `PRAGMA user_version` says how many were applied); an entry is never edited once released.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: runs, experiments and LLM calls
    """
    CREATE TABLE runs (
        tag TEXT PRIMARY KEY,
        recipe TEXT NOT NULL,
        branch TEXT NOT NULL,
        worktree TEXT NOT NULL,
        base_commit TEXT NOT NULL,
        agent TEXT NOT NULL,
        model TEXT,
        metric TEXT NOT NULL,
        direction TEXT NOT NULL,
        budget_seconds REAL NOT NULL,
        config_json TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL DEFAULT 'running',
        started_at TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE TABLE experiments (
        tag TEXT NOT NULL REFERENCES runs(tag),
        number INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT,
        description TEXT,
        commit_sha TEXT,
        parent_sha TEXT,
        metric REAL,
        best_before REAL,
        summary_json TEXT NOT NULL DEFAULT '{}',
        files_hash TEXT,
        diff TEXT,
        log_path TEXT,
        log_tail TEXT,
        seed INTEGER,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        propose_seconds REAL,
        train_seconds REAL,
        total_seconds REAL,
        PRIMARY KEY (tag, number)
    );
    CREATE TABLE llm_calls (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tag TEXT NOT NULL,
        experiment INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        model TEXT,
        messages_json TEXT NOT NULL,
        reply TEXT,
        error TEXT,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        latency_seconds REAL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX llm_calls_by_experiment ON llm_calls(tag, experiment);
    """,
    # 2: covering indexes for the review commands (log, runs): counts, best metric and tokens per run
    # come from the indexes alone, never from the wide rows that hold prompts, diffs and log tails
    """
    CREATE INDEX experiments_by_outcome ON experiments(tag, outcome, number, metric);
    CREATE INDEX llm_calls_tokens ON llm_calls(tag, experiment, model, prompt_tokens, completion_tokens);
    """,
    # 3: telling progress from noise (docs/noise.md): every training run of an experiment with its
    # seed (the baseline's noise runs and the candidates' confirmation runs included), the run's
    # measured noise floor, each experiment's decision, and `verify` results
    """
    CREATE TABLE training_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tag TEXT NOT NULL,
        experiment INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        kind TEXT NOT NULL,
        seed INTEGER NOT NULL,
        commit_sha TEXT,
        outcome TEXT NOT NULL,
        reason TEXT,
        metric REAL,
        summary_json TEXT NOT NULL DEFAULT '{}',
        log_path TEXT,
        seconds REAL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        UNIQUE (tag, experiment, attempt)
    );
    ALTER TABLE runs ADD COLUMN noise_std REAL;
    ALTER TABLE runs ADD COLUMN noise_runs INTEGER;
    ALTER TABLE experiments ADD COLUMN decision_json TEXT;
    CREATE TABLE verifications (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tag TEXT NOT NULL,
        baseline_commit TEXT NOT NULL,
        best_commit TEXT NOT NULL,
        metric TEXT NOT NULL,
        test_metric TEXT NOT NULL,
        confidence REAL NOT NULL,
        seeds_json TEXT NOT NULL,
        runs_json TEXT NOT NULL,
        val_gain REAL,
        val_low REAL,
        val_high REAL,
        test_gain REAL,
        test_low REAL,
        test_high REAL,
        verdict TEXT NOT NULL,
        message TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX verifications_by_tag ON verifications(tag, id);
    """,
    # 4: a run's settings survive a resume (config_json holds them all, overrides included), --hours counts
    # the time the run has been going across resumes, and each experiment says which agent and model made it
    """
    ALTER TABLE runs ADD COLUMN active_seconds REAL NOT NULL DEFAULT 0;
    ALTER TABLE experiments ADD COLUMN agent TEXT;
    ALTER TABLE experiments ADD COLUMN model TEXT;
    CREATE INDEX experiments_by_agent ON experiments(tag, agent, model, number);
    """,
    # 5: trusted measurement (docs/trust.md): the sandbox level in force, the harness's evaluation of each
    # saved model (its numbers, its time), the steal the harness measured, and the model itself (kept or not)
    """
    ALTER TABLE runs ADD COLUMN sandbox TEXT;
    ALTER TABLE training_runs ADD COLUMN sandbox TEXT;
    ALTER TABLE training_runs ADD COLUMN evaluation_json TEXT;
    ALTER TABLE training_runs ADD COLUMN evaluation_seconds REAL;
    ALTER TABLE training_runs ADD COLUMN stolen_seconds REAL;
    ALTER TABLE training_runs ADD COLUMN model_path TEXT;
    ALTER TABLE training_runs ADD COLUMN model_bytes INTEGER;
    ALTER TABLE training_runs ADD COLUMN model_sha256 TEXT;
    ALTER TABLE experiments ADD COLUMN evaluation_json TEXT;
    """,
    # 6: several experiments in flight: the slot and device each training ran on, the best experiment
    # of a run as its own pointer (the last kept row by number is not always the best once experiments
    # overlap), the experiment each was drafted from, and the slot-seconds a run had (its duty cycle)
    """
    ALTER TABLE training_runs ADD COLUMN slot INTEGER;
    ALTER TABLE training_runs ADD COLUMN device TEXT;
    ALTER TABLE runs ADD COLUMN best_number INTEGER;
    ALTER TABLE runs ADD COLUMN slot_seconds REAL NOT NULL DEFAULT 0;
    ALTER TABLE experiments ADD COLUMN parent_number INTEGER;
    """,
    # 7: the agent's side (issue 16): each call's input tokens the server read from its prompt cache (priced as
    # cached) and why the model stopped (stop, length...), and the notes the agent keeps across experiments;
    # the covering index of token sums gains the cached tokens
    """
    ALTER TABLE llm_calls ADD COLUMN cached_tokens INTEGER;
    ALTER TABLE llm_calls ADD COLUMN finish_reason TEXT;
    ALTER TABLE experiments ADD COLUMN notes TEXT;
    DROP INDEX llm_calls_tokens;
    CREATE INDEX llm_calls_usage ON llm_calls(tag, experiment, model, prompt_tokens, completion_tokens, cached_tokens);
    """,
    # 8: beyond one box (issue 14): where each training's job ran, as its executor names it ("ray:<actor>:<job>",
    # "local:<job>"), written before it starts, so that a resume can look up what a killed tool left in flight
    """
    ALTER TABLE training_runs ADD COLUMN job TEXT;
    """,
    # 9: the machine in each measurement (issue 23): others' CPU time / the CPUs, others on its GPU, its start-up
    """ALTER TABLE training_runs ADD COLUMN contention_seconds REAL;
    ALTER TABLE training_runs ADD COLUMN other_gpu_processes INTEGER;
    ALTER TABLE training_runs ADD COLUMN startup_seconds REAL;""",
]
