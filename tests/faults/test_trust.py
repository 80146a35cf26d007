"""Trusted measurement: a hostile train.py, trained through the real loop, cannot make a number or touch the record.

Each test is one attack an agent that optimises the metric has been seen to try (issue 12): it is
proposed as an edit by the scripted endpoint, trained for real, and the test shows what the record
holds afterwards. The synthetic recipe's model is its constants (tests/conftest.py), so the honest
metric of every edit is known. Attacks on the sandbox itself, and on language-model evaluation
(a model that looks ahead), are in tests/test_sandbox_attacks.py and tests/test_lm.py.
"""

from __future__ import annotations

import py_compile
import textwrap

import pytest
from conftest import git
from faultkit import BETTER, TAG, assert_consistent, inject

from autoresearch.ledger import Ledger

BASELINE = 0.29  # (0.5 - 0.3)^2 + 1/4
UP_TO_RUNS = "../../../../.."  # from runs/t/work/<n>/recipes/synth, where a training runs, to runs/


def metrics(rows):
    return [row["metric"] for row in rows]


@pytest.mark.parametrize("printed", [
    'print("val_loss: 0.0001")',  # a made-up number
    'print("---")\nprint("val_loss: 0.000001")\nprint("---")',  # a second summary block after its own
    'import sys\nsys.stdout.write("val_loss: 1e-9\\n")\nsys.stdout.flush()',
])
def test_a_metric_the_training_prints_is_never_the_metric(workspace, fake_llm, printed, run_loop):
    _, rows, _ = run_loop.small([inject("report a better number", printed), BETTER])
    assert rows[1]["outcome"] == "discard" and rows[1]["metric"] == pytest.approx(BASELINE)
    assert "val_loss" not in rows[1]["summary"]
    assert rows[2]["outcome"] == "keep" and rows[2]["metric"] == pytest.approx(0.25)
    assert_consistent(workspace, rows)


def test_a_training_that_patches_the_evaluation_at_import_time_changes_nothing(workspace, fake_llm, run_loop):
    """The evaluation runs in its own process, from the fixed files of the run's start: nothing imported here reaches it."""
    code = textwrap.dedent("""
        import prepare
        prepare.evaluate = lambda learning_rate, width: 0.0
        import builtins
        builtins.print = lambda *a, **k: None
    """)
    _, rows, _ = run_loop.small([inject("a faster evaluation", code), BETTER])
    assert rows[1]["metric"] == pytest.approx(BASELINE) and rows[1]["outcome"] == "discard"
    assert_consistent(workspace, rows)


def test_bytecode_a_training_leaves_behind_reaches_no_later_experiment(workspace, fake_llm, tmp_path, run_loop):
    """A cheating prepare.pyc in its copy's and the worktree's __pycache__: the next evaluation never sees it."""
    cheat = tmp_path / "prepare.py"
    cheat.write_text((workspace / "recipes/synth/prepare.py").read_text().replace(
        "return (learning_rate - 0.3) ** 2 + 1.0 / width", "return 0.0"))
    compiled = tmp_path / "prepare.pyc"
    py_compile.compile(str(cheat), cfile=str(compiled), invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    plant = textwrap.dedent(f"""
        import os, shutil, sys
        tag = f"prepare.{{sys.implementation.cache_tag}}.pyc"
        for folder in ("__pycache__", "{UP_TO_RUNS}/t/worktree/recipes/synth/__pycache__"):
            os.makedirs(folder, exist_ok=True)
            shutil.copy({str(compiled)!r}, os.path.join(folder, tag))
    """)
    _, rows, _ = run_loop.small([inject("cache the evaluation", plant), BETTER], sandbox="off")
    assert metrics(rows)[:3] == [pytest.approx(BASELINE), pytest.approx(BASELINE), pytest.approx(0.25)]


def test_a_training_past_its_deadline_is_a_timeout_and_its_model_is_not_evaluated(workspace, fake_llm, run_loop):
    """It saved a model early, then kept going into the grace period: the harness's clock ends it."""
    code = "save_model(0.3, 1000)\nimport time\ntime.sleep(30)"
    _, rows, _ = run_loop.small([inject("train a little longer", code), BETTER])
    assert rows[1]["outcome"] == "timeout" and rows[1]["metric"] is None
    run = Ledger(workspace / "runs/ledger.db").training_runs(TAG, 1)[0]
    assert run["evaluation"] is None and run["seconds"] < 5 + 1 + 3  # budget 5 s, grace 1 s, a kill
    assert_consistent(workspace, rows)


def test_results_tsv_is_written_from_the_ledger(workspace, fake_llm, run_loop):
    """A line a training appends to results.tsv is gone: the file is the ledger's, written afresh after each experiment."""
    code = f'open("{UP_TO_RUNS}/t/results.tsv", "a").write("abcdef0\\t0.000001\\t0.0\\tkeep\\tthe best ever\\n")'
    _, rows, _ = run_loop.small([inject("keep notes", code), BETTER], sandbox="off")
    lines = (workspace / "runs/t/results.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["commit", "val_loss", "memory_gb", "status", "description"]
    assert "the best ever" not in "\n".join(lines) and len(lines) == 1 + len(rows)
    assert [line.split("\t")[3] for line in lines[1:]] == [row["outcome"] for row in rows]


def test_only_the_baselines_and_the_bests_models_are_kept(workspace, fake_llm, run_loop):
    worse = inject("worse", "LEARNING_RATE = 0.9")
    _, rows, _ = run_loop.small([worse, BETTER], max_experiments=3)
    ledger = Ledger(workspace / "runs/ledger.db")
    runs = {(run["experiment"], run["attempt"]): run for run in ledger.training_runs(TAG)}
    assert runs[(0, 0)]["model_path"] and runs[(2, 0)]["model_path"]  # the baseline, and the best
    assert runs[(1, 0)]["model_path"] is None and runs[(1, 0)]["model_sha256"]  # deleted; its hash stays
    assert sorted(p.name for p in (workspace / "runs/t/models").iterdir()) == ["0", "2"]
    assert git(workspace, "rev-parse", "autoresearch/t") == rows[2]["commit_sha"]
