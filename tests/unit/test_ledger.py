"""The ledger: a run deleted in one transaction."""

from __future__ import annotations

import sqlite3

import pytest

from autoresearch.ledger import Ledger


def test_ledger_deletes_a_run_in_one_transaction(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.create_run("t", recipe="r", branch="b", worktree="w", base_commit="c", agent="mutate", metric="m",
                      direction="lower", budget_seconds=5)
    ledger.start_experiment("t", 0)
    ledger.start_training_run("t", 0, 0, "first", 1, None, "0.log")
    ledger.record_llm_call("t", 0, 0, "m", [], "reply", None, 1, 1, 0.1)
    rows = ledger.count_run_rows("t")
    assert rows == 4
    db = sqlite3.connect(tmp_path / "ledger.db")
    db.execute("CREATE TRIGGER keep_runs BEFORE DELETE ON runs BEGIN SELECT RAISE(ABORT, 'kept'); END")
    db.commit()
    with pytest.raises(sqlite3.IntegrityError):
        ledger.delete_run("t")  # the runs table is the last one: the deletes before it are rolled back
    assert ledger.count_run_rows("t") == rows
    db.execute("DROP TRIGGER keep_runs")
    db.commit()
    db.close()
    assert ledger.delete_run("t") == rows and ledger.count_run_rows("t") == 0
