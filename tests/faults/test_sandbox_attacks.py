"""Inside the sandbox: what a hostile train.py tries against the record, the tool and the held-out data, through the real loop.

Each attack runs as an experiment's training (`--sandbox on`) and prints what it managed into its
log; the test then reads the log and the record. Skipped, with the reason, where bubblewrap cannot
run (CI installs it).
"""

from __future__ import annotations

import os
import shutil
import textwrap

import pytest
from conftest import SYNTH_PREPARE, SYNTH_RECIPE, git, make_workspace
from faultkit import BETTER, TAG, assert_consistent, inject, run_processes

from autoresearch.ledger import Ledger
from autoresearch.execution.sandbox import probe

PROBE = probe()
pytestmark = pytest.mark.skipif(not PROBE.available, reason=f"no sandbox here: {PROBE.problem}")
UP_TO_WORKSPACE = "../../../../../.."  # from runs/t/work/<n>/recipes/synth to the workspace root


def attack(run_loop, code: str, workspace, **options):
    """Train `code` as experiment 1 inside the sandbox (then a good change); returns (rows, its log)."""
    _, rows, _ = run_loop.small([inject("try something", textwrap.dedent(code)), BETTER], sandbox="on", **options)
    return rows, (workspace / "runs/t/1.log").read_text()


def test_the_record_is_out_of_reach(workspace, fake_llm, run_loop):
    """The ledger, runs/, .git, program.md and the person's checkout are not there to read or write."""
    code = f"""
    import os
    root = "{UP_TO_WORKSPACE}"
    for name in ("runs/ledger.db", "program.md", ".git/config", "recipes/synth/prepare.py", "runs/t/results.tsv"):
        path = os.path.join(root, name)
        try:
            open(path, "rb").read()
            print("READ", name)
        except OSError as exc:
            print("NOREAD", name, type(exc).__name__)
        try:
            open(path, "ab").write(b"x")
            print("WROTE", name)
        except OSError:
            pass
    print("LISTED", sorted(os.listdir(root)) if os.path.isdir(root) else "none")
    """
    before = {name: (workspace / name).read_bytes() for name in ("program.md", ".git/config",
                                                                  "recipes/synth/prepare.py")}
    rows, log = attack(run_loop, code, workspace)
    assert "\nREAD " not in "\n" + log and log.count("NOREAD") == 5  # (a write lands in the sandbox's own scratch)
    assert rows[1]["outcome"] == "discard"  # it trained and was measured as any other change
    for name, data in before.items():
        assert (workspace / name).read_bytes() == data
    ledger = Ledger(workspace / "runs/ledger.db")
    assert [row["outcome"] for row in ledger.experiments(TAG)] == ["keep", "discard", "keep"]
    assert ledger.run(TAG)["sandbox"] == "bubblewrap"
    assert {run["sandbox"] for run in ledger.training_runs(TAG)} == {"bubblewrap"}
    assert_consistent(workspace, rows)


def test_git_hooks_refs_and_config_are_out_of_reach(workspace, fake_llm, run_loop):
    code = f"""
    import subprocess
    done = subprocess.run(["git", "-C", "{UP_TO_WORKSPACE}", "update-ref", "-d", "refs/autoresearch/t/1"],
                          capture_output=True, text=True)
    print("GIT", done.returncode, done.stderr.strip()[:100])
    """
    rows, log = attack(run_loop, code, workspace)
    assert "GIT 0" not in log
    assert git(workspace, "rev-parse", "refs/autoresearch/t/1") == rows[1]["commit_sha"]
    assert_consistent(workspace, rows)


def test_the_tool_cannot_be_seen_signalled_or_stopped(workspace, fake_llm, run_loop):
    code = f"""
    import os, signal
    try:
        os.kill({os.getpid()}, signal.SIGKILL)
        print("KILLED the tool")
    except ProcessLookupError:
        print("NO SUCH PROCESS")
    print("PIDS", sorted(int(p) for p in os.listdir("/proc") if p.isdigit())[:10])
    """
    rows, log = attack(run_loop, code, workspace)
    assert "NO SUCH PROCESS" in log and "KILLED" not in log
    assert rows[2]["outcome"] == "keep"  # and the run went on


def test_no_process_it_starts_outlives_it(workspace, fake_llm, run_loop):
    """A daemon that leaves the tree, clears its environment marker and sleeps: gone with the training's namespace."""
    code = """
    import os, subprocess
    subprocess.Popen(["env", "-i", "setsid", "sh", "-c", "sleep 987321 & sleep 987321"], start_new_session=True)
    """
    rows, _ = attack(run_loop, code, workspace)
    assert run_processes(workspace) == []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            assert b"987321" not in open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            pass


def test_no_network_not_even_the_tools_own_endpoint(workspace, fake_llm, run_loop):
    host, port = fake_llm.base_url.split("//")[1].split("/")[0].split(":")
    code = f"""
    import socket
    try:
        socket.create_connection(("{host}", {port}), timeout=2).close()
        print("CONNECTED")
    except OSError as exc:
        print("NO NETWORK", type(exc).__name__)
    """
    _, log = attack(run_loop, code, workspace)
    assert "NO NETWORK" in log and "CONNECTED" not in log


def test_secrets_in_the_home_folder_and_the_tools_environment_are_out_of_reach(workspace, fake_llm, tmp_path,
                                                                                monkeypatch, run_loop):
    home = tmp_path / "home"
    (home / ".config/openai").mkdir(parents=True)
    (home / ".config/openai/key").write_text("sk-in-a-file")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-in-the-environment")
    code = f"""
    import os
    for path in ("{home}/.config/openai/key", "/proc/{os.getpid()}/environ"):
        try:
            print("READ", open(path, "rb").read()[:200])
        except OSError as exc:
            print("NOREAD", type(exc).__name__)
    print("ENV", os.environ.get("OPENAI_API_KEY"))
    """
    _, log = attack(run_loop, code, workspace)
    assert "sk-in-a-file" not in log and "sk-in-the-environment" not in log and log.count("NOREAD") == 2


HELD_OUT_PREPARE = SYNTH_PREPARE + '''

if __name__ == "__main__" and sys.argv[1:] == []:
    cache = os.path.join(os.environ["HOLD_OUT_ROOT"], "cache")
    os.makedirs(os.path.join(cache, "train"), exist_ok=True)
    os.makedirs(os.path.join(cache, "val"), exist_ok=True)
    open(os.path.join(cache, "train", "train.txt"), "w").write("training bytes")
    open(os.path.join(cache, "val", "val.txt"), "w").write("the validation answers")
    print("show:", os.path.join(cache, "train"))
    print("hide:", os.path.join(cache, "val"))
'''


def test_held_out_data_the_prepare_step_hides_cannot_be_read(tmp_path, fake_llm, monkeypatch, run_loop):
    root = make_workspace(tmp_path / "ws", prepare=HELD_OUT_PREPARE,
                          recipe_yaml=SYNTH_RECIPE + "prepare: python prepare.py\nenv: [HOLD_OUT_ROOT]\n")
    monkeypatch.chdir(root)
    monkeypatch.setenv("HOLD_OUT_ROOT", str(tmp_path / "data"))
    code = f"""
    for path in ("{tmp_path}/data/cache/val/val.txt", "{tmp_path}/data/cache/train/train.txt"):
        try:
            print("READ", open(path).read())
        except OSError as exc:
            print("NOREAD", type(exc).__name__)
    """
    rows, log = attack(run_loop, code, root)
    assert "READ training bytes" in log  # what it was shown
    assert "the validation answers" not in log and "NOREAD" in log
    assert "hide:" in (root / "runs/t/prepare.log").read_text()
    assert_consistent(root, rows)


def without_bubblewrap(tmp_path, monkeypatch) -> None:
    """PATH with git on it and no bwrap."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "git").symlink_to(shutil.which("git"))
    monkeypatch.setenv("PATH", str(tools))


def test_on_refuses_to_start_without_the_sandbox(workspace, fake_llm, monkeypatch, tmp_path, run_loop):
    from autoresearch.errors import InvalidSetting

    without_bubblewrap(tmp_path, monkeypatch)
    with pytest.raises(InvalidSetting, match="is on, but the sandbox cannot run here: bubblewrap is not installed"):
        run_loop.small([BETTER], sandbox="on")


def test_auto_without_bubblewrap_says_what_is_missing_and_goes_on(workspace, fake_llm, monkeypatch, tmp_path, run_loop):
    without_bubblewrap(tmp_path, monkeypatch)
    loop, rows, _ = run_loop.small([BETTER], max_experiments=2, sandbox="auto")
    assert [row["outcome"] for row in rows] == ["keep", "keep"]
    assert any("training without a sandbox (bubblewrap is not installed" in note for note in loop.reporter.notes)
    assert Ledger(workspace / "runs/ledger.db").run(TAG)["sandbox"] == "none"
