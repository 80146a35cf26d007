"""The run's state (run/state.py), rebuilt from the ledger as a resume does."""

from __future__ import annotations

from conftest import UNIT_TAG as TAG

from autoresearch.keep import DecisionRecord, Evidence, KeepRule, judge
from autoresearch.noise import NoiseFloor
from autoresearch.run.state import rebuild_state


def test_a_resume_finds_the_best_its_runs_the_noise_floor_and_what_was_tried(new_run):
    journal, state, ledger = new_run.journal, new_run.state, new_run.ledger
    base = state.best.commit
    baseline = journal.open_experiment(commit_sha=base)
    journal.refine_noise([1.0, 1.02, 0.98], restart=True)
    journal.close(baseline, "keep", None, 1.0, commit=base,
                  decision=DecisionRecord.of_baseline([1.0, 1.02, 0.98], [0, 1, 2], state.noise.std))
    number = journal.open_experiment(parent_sha=base)
    train = (state.recipe_dir / "train.py").read_text().replace("WIDTH = 4", "WIDTH = 8")
    commit = journal.commit(number, base, {"train.py": train}, "wider")
    record = judge(Evidence([0.8, 0.81], [0, 7], [1.0, 1.02, 0.98], True, "lower", state.noise,
                            state.noise_groups), KeepRule(), "val_loss").record
    journal.refine_noise([0.8, 0.81])
    journal.close(number, "keep", "gain", 0.805, commit=commit, files={"train.py": train}, decision=record)
    lost = journal.open_experiment(parent_sha=commit)
    journal.interrupt(lost, "killed")

    rebuilt = rebuild_state(ledger, ledger.run(TAG), state.worktree, state.recipe, 5.0)
    assert rebuilt.best == state.best and rebuilt.best.runs == (0.8, 0.81)
    assert rebuilt.baseline_metric == 1.0 and rebuilt.next_number == 3
    assert rebuilt.noise == NoiseFloor(state.noise.std, state.noise.runs)
    assert rebuilt.noise_groups == [[1.0, 1.02, 0.98], [0.8, 0.81]]
    assert set(rebuilt.seen_hashes.values()) <= {0, 1}  # the interrupted one never got a result
