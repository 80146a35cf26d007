"""The briefing (run/briefing.py): what the agent is shown, gathered from the run."""

from __future__ import annotations


from autoresearch.keep import DecisionRecord, KeepRule
from autoresearch.run.briefing import Briefing


def briefing_of(new_run, notes: list) -> Briefing:
    return Briefing(new_run.workspace, new_run.ledger, new_run.state, "the first program", KeepRule(min_delta=0.01),
                    12000, notes.append)


def test_the_context_holds_the_program_the_standing_the_lineage_and_what_trains(new_run):
    journal, state = new_run.journal, new_run.state
    baseline = journal.open_experiment(description="baseline", commit_sha=state.best.commit)
    journal.close(baseline, "keep", None, 1.0, commit=state.best.commit,
                  decision=DecisionRecord.of_baseline([1.0], [0], None), summary={"num_steps": 10.0})
    failed = journal.open_experiment(description="a bad idea")
    journal.close(failed, "crash", "exit code 1: ValueError", None)
    journal.update(failed, notes="try the width next")
    briefing = briefing_of(new_run, [])
    files = state.read_files(state.recipe.editable)
    context = briefing.context(2, files, in_flight=("experiment 3: wider",), also_seen=frozenset({"abc"}))
    assert context.program == (new_run.workspace.root / "program.md").read_text()
    assert context.best.metric == 1.0 and context.baseline.summary == {"num_steps": 10.0}
    assert [(entry.number, entry.outcome, entry.reason) for entry in context.lineage] == [
        (0, "keep", None), (1, "crash", "exit code 1: ValueError")]
    assert context.in_flight == ("experiment 3: wider",) and "abc" in context.seen_hashes
    assert [note.text for note in context.notes] == ["try the width next"]
    assert context.keep_margin == 0.01 and context.hardware


def test_a_program_removed_mid_run_leaves_the_last_good_text(new_run):
    notes: list[str] = []
    briefing = briefing_of(new_run, notes)
    (new_run.workspace.root / "program.md").unlink()
    assert briefing.read_program() == "the first program"
    assert notes and "using the last version read" in notes[0]
