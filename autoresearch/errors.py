"""The tool's error vocabulary: every typed error a domain module raises and another one catches.

Domain modules raise these and never word a CLI flag; the CLI turns a `UserError` into one line and
exit code 1, and words a `Remedy` or an `InvalidSetting` with the flag a person types. A Python caller
(or a Ray driver) reads the setting's name, not a flag.
"""

from __future__ import annotations

from dataclasses import dataclass


class UserError(Exception):
    """A problem the person can fix (a bad flag, a broken recipe, a missing key)."""


class InvalidSetting(UserError):
    """A setting with a value that cannot work; `setting` is its name in settings.RunOptions."""

    def __init__(self, setting: str, problem: str):
        super().__init__(f"{setting} {problem}")
        self.setting = setting
        self.problem = problem


class LockHeld(UserError):
    """Someone else holds the lock; `holder` is what they wrote in it (a pid, a tag)."""

    def __init__(self, message: str, holder: str):
        super().__init__(message)
        self.holder = holder


class WorkspaceBusy(LockHeld):
    """Another run (or verify) trains in this workspace."""


@dataclass(frozen=True)
class Remedy:
    """The setting that mends a refusal: a run option or an agent parameter, by name, and a value to try.

    The value is None when the person must choose it (another model). The CLI words the setting as its flag.
    """

    setting: str
    value: str | None = None


class StopRun(Exception):
    """The run cannot go on (the baseline failed, the endpoint keeps failing); one line for the person.

    `remedy`, when one setting mends it, names that setting. `baseline_failed` tells the caller the
    unmodified recipe failed: a resume starts again from the workspace's last commit; `cause` says why
    (outcomes.baseline_cause: `budget` too small for start-up, a step and the export; a `busy` machine;
    a broken `recipe`).
    """

    def __init__(self, message: str, remedy: Remedy | None = None, baseline_failed: bool = False,
                 cause: str | None = None):
        super().__init__(message)
        self.remedy = remedy
        self.baseline_failed = baseline_failed
        self.cause = cause


class AgentUnavailable(Exception):
    """An LLM call failed: no proposal this time. The message names the endpoint's URL.

    `retryable` is False when asking again cannot help (the key, the model or the prompt's length was
    refused); `remedy` then says what to change, when one setting does it.
    """

    def __init__(self, reason: str, retryable: bool = True, remedy: Remedy | None = None):
        super().__init__(reason)
        self.retryable = retryable
        self.remedy = remedy


class NothingListens(AgentUnavailable):
    """A connection to an endpoint on this machine was refused: no server listens at that port.

    At the start of a run (and of each resume) that is said at once, since waiting does not start a
    server; during the night it is retried like any failed call (a local server restarting). Its
    remedy is the endpoint's URL.
    """

    def __init__(self, reason: str):
        super().__init__(reason, retryable=True, remedy=Remedy("base_url"))


class InvalidProposal(Exception):
    """The agent produced nothing that can be trained; `reason` is the typed outcome's reason."""

    def __init__(self, reason: str, description: str = "", notes: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.description = description
        self.notes = notes


class LedgerTampered(Exception):
    """The training changed the ledger and its safety copy both: the record cannot be put back."""
