"""What a run may be called (workspace.check_tag): git's rules for a branch name, no `/`, no leading `-`,
not the ledger's files."""

from __future__ import annotations

import subprocess

from autoresearch.errors import UserError
from autoresearch.workspace import check_tag

ACCEPTED = ["dec01", "dec01-2", "a_b", "v1.2", "x+y", "a,b", "é", "a@b", "@", "n#1", "a&b", "A" * 100]
REFUSED_BY_GIT = ["x y", "..", ".", "a..b", ".hidden", "a.", "a.lock", "a~1", "a^", "a:b", "a?", "a*", "a[",
                  "a\\b", "a@{b", "tab\there", "del\x7f", ""]
REFUSED_HERE_ONLY = ["dec01/x", "-x", "--", "ledger.db", "ledger.db-wal", "Ledger.DB", "A" * 101]


def git_accepts(tag: str) -> bool:
    return subprocess.run(["git", "check-ref-format", f"refs/heads/autoresearch/{tag}"]).returncode == 0


def refused(tag: str) -> bool:
    try:
        check_tag(tag)
    except UserError:
        return True
    return False


def test_check_tag_follows_git_and_refuses_slashes_options_and_the_ledgers_files():
    assert [t for t in ACCEPTED if refused(t) or not git_accepts(t)] == []
    assert [t for t in REFUSED_BY_GIT if not refused(t) or git_accepts(t)] == []
    assert [t for t in REFUSED_HERE_ONLY if not refused(t) or not git_accepts(t)] == []
