"""What a hostile training leaves behind (its model folder, its log, its git objects) against the tool that reads it.

Issue 21: each attack is a train.py proposed through the scripted endpoint and trained by the real
loop; each must end with the run going on, the experiment `invalid` (or `crash`) with a reason that
names the cause, the next experiment made, the run not stretched, and nothing of the training's
taken as the tool's own. Sizes are bounded: no test fills the disk or the memory (small quotas
trigger the limits).
"""

from __future__ import annotations

import textwrap
import time

import pytest
from conftest import SYNTH_RECIPE, make_workspace
from faultkit import BETTER, assert_consistent, inject, run_with

from autoresearch.sandbox import probe

PROBE = probe()
SANDBOXES = ["off"] + (["on"] if PROBE.available else [])
QUICK_SECONDS = 30.0  # a run of three synthetic experiments takes a few seconds; a hang took the run's limit


def attack(fake_llm, code: str, sandbox: str, **options):
    """Train `code` as experiment 1 (then a good change); returns (loop, rows, seconds the run took)."""
    started = time.monotonic()
    loop, rows = run_with(fake_llm, [inject("try something", textwrap.dedent(code)), BETTER], sandbox=sandbox,
                          **options)
    return loop, rows, time.monotonic() - started


def assert_refused_and_went_on(workspace, rows, seconds: float, *words: str) -> None:
    assert rows[1]["outcome"] == "invalid", rows[1]
    for word in words:
        assert word in rows[1]["reason"], rows[1]["reason"]
    assert rows[2]["outcome"] == "keep"  # the run went on: the next experiment was made and measured
    assert seconds < QUICK_SECONDS
    assert_consistent(workspace, rows)


# --- the model folder (attacks 1 to 3): walked without recursion, no link followed, nothing read past a limit

SPARSE = """
import os
with open(os.path.join(os.environ["AUTORESEARCH_OUTPUT_DIR"], "weights.bin"), "wb") as handle:
    handle.truncate(4 << 40)  # 4 TiB, no disk used
"""
LINK = """
import os
os.symlink("/proc/self/pagemap", os.path.join(os.environ["AUTORESEARCH_OUTPUT_DIR"], "weights.bin"))
"""
NESTED = """
import os
for top in (os.environ["AUTORESEARCH_OUTPUT_DIR"], "."):
    fd = os.open(top, os.O_RDONLY)
    for _ in range(1500):
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
"""
FIFO = """
import os
os.mkfifo(os.path.join(os.environ["AUTORESEARCH_OUTPUT_DIR"], "weights.bin"))
"""


@pytest.mark.parametrize("sandbox", SANDBOXES)
@pytest.mark.parametrize("code, words", [(SPARSE, ("quota", "weights.bin")), (LINK, ("symbolic link", "weights.bin")),
                                         (NESTED, ("deeper than",)), (FIFO, ("FIFO",))],
                         ids=["sparse-4TiB", "link-to-pagemap", "1500-nested-folders", "fifo"])
def test_a_hostile_model_folder_is_refused_unread(workspace, fake_llm, sandbox, code, words):
    _, rows, seconds = attack(fake_llm, code, sandbox)
    assert_refused_and_went_on(workspace, rows, seconds, "its model folder", *words)
    assert not (workspace / "runs/t/models/1").exists()  # refused and removed; nothing of it in the ledger
    assert not (workspace / "runs/t/work/1").exists()


def test_the_recipe_sets_the_quota_and_a_model_within_it_is_recorded(tmp_path, fake_llm, monkeypatch):
    root = make_workspace(tmp_path / "ws", recipe_yaml=SYNTH_RECIPE + "disk_quota_mb: 1\n")
    monkeypatch.chdir(root)
    code = """
    import os
    with open(os.path.join(os.environ["AUTORESEARCH_OUTPUT_DIR"], "padding.bin"), "wb") as handle:
        handle.write(b"x" * 2_000_000)
    """
    _, rows, seconds = attack(fake_llm, code, "off")
    assert_refused_and_went_on(root, rows, seconds, "disk quota of 1.0 MiB", "padding.bin")
    from autoresearch.ledger import Ledger

    runs = Ledger(root / "runs/ledger.db").training_runs("t")
    assert runs[0]["model_sha256"] and runs[0]["model_bytes"] > 0  # a model within bounds is hashed as before


# --- git's object lookup (attack 6): replace refs and grafts are ignored by the tool's git, and removed

REPLACE_PREPARE = """
import subprocess
def git(*args, data=None):
    return subprocess.run(["git", *args], input=data, capture_output=True, text=True).stdout.strip()
real = git("rev-parse", "HEAD:recipes/synth/prepare.py")
fake = git("hash-object", "-w", "--stdin", data='print("val_loss: 0.01")\\n')
git("replace", "-f", real, fake)
print("REPLACED", real[:12], "by", fake[:12], git("cat-file", "-p", real)[:30])
"""
GRAFTS = """
import subprocess
top = subprocess.run(["git", "rev-parse", "--git-common-dir"], capture_output=True, text=True).stdout.strip()
head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
import os
os.makedirs(os.path.join(top, "info"), exist_ok=True)
open(os.path.join(top, "info", "grafts"), "w").write(head + "\\n")  # HEAD without parents
"""


@pytest.mark.parametrize("code, touched", [(REPLACE_PREPARE, "the git replace refs"), (GRAFTS, "the git grafts")],
                         ids=["replace-ref-fakes-prepare", "grafts"])
def test_git_object_lookup_cannot_be_redirected_without_the_sandbox(workspace, fake_llm, code, touched):
    from conftest import git

    _, rows, seconds = attack(fake_llm, code, "off")
    log = (workspace / "runs/t/1.log").read_text()
    if "REPLACED" in code:
        assert "REPLACED" in log and "val_loss: 0.01" in log  # it did plant the replacement
    assert_refused_and_went_on(workspace, rows, seconds, touched)
    assert all(row["metric"] != pytest.approx(0.01) for row in rows if row["metric"] is not None)
    assert rows[2]["metric"] == pytest.approx(0.25)  # (0.3 - 0.3) ** 2 + 1 / 4: the real prepare.py's
    assert git(workspace, "for-each-ref", "refs/replace/") == ""
    assert not (workspace / ".git/info/grafts").exists()
