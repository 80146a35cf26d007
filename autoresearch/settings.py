"""A run's settings: what a person chose, checked before anything is made, and kept across resumes.

`RunOptions` holds every knob of `run`. A new run stores them all in its ledger row; a resumed run
goes on with its own stored settings, and only a setting given again on resume overrides one,
which is recorded (`Override`) and said. `check_options` refuses nonsense numbers (a negative
budget, zero experiments, a negative --min-delta that would keep regressions) before anything is
made; its errors name the setting, and the CLI words them with the flag.

What the limits count on a resumed run: `max_experiments` counts the run's experiments so far, the
baseline included and interrupted ones not; `hours` counts the time the run has been going, summed
over its invocations (the time it was stopped does not count).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import asdict, dataclass, field, fields, replace

from autoresearch.agents import DEFAULT_TEMPERATURE
from autoresearch.errors import InvalidSetting
from autoresearch.execution.jobs import Slot
from autoresearch.keep import DEFAULT_CONFIRM_RUNS, DEFAULT_NOISE_MULTIPLE, DEFAULT_NOISE_RUNS, KeepRule
from autoresearch.formats import EDIT_FORMATS
from autoresearch.prompts import DEFAULT_REPLY_TOKENS, PROMPT_TOKEN_BUDGET

DEFAULT_MODEL = "gpt-5-mini"
MAX_TEMPERATURE = 2.0
AGENTS = ("llm", "mutate")
SANDBOX_MODES = ("auto", "on", "off")
EXECUTORS = ("local", "ray")
# autoresearch is not on PyPI: its extras are installed from the clone.
RAY_EXTRA_HINT = "pip install -e '.[ray]' in the autoresearch clone (or EXTRAS=ray bash scripts/setup.sh)"


@dataclass
class RunOptions:
    """Every setting of a run; `recipe` and `tag` say which run and are not settings of it."""

    recipe: str | None = None
    tag: str | None = None
    agent: str = "llm"
    model: str = DEFAULT_MODEL
    base_url: str | None = None  # None: the hosted OpenAI endpoint
    llm_timeout: float = 600.0  # seconds one LLM request may take
    prompt_tokens: int = PROMPT_TOKEN_BUDGET  # the estimated size of each proposal's conversation, at most
    reply_tokens: int = DEFAULT_REPLY_TOKENS  # the completion limit sent with each proposal
    context_tokens: int | None = None  # the model's context window; None: what the server reports, if it does
    edit_format: str = "auto"  # auto | search-replace | whole | knobs: how the agent writes its change (formats.py)
    temperature: float = DEFAULT_TEMPERATURE  # the sampling temperature sent with every LLM call
    budget_seconds: float | None = None  # None: the recipe's
    max_experiments: int | None = None
    hours: float | None = None
    min_delta: float = 0.0
    seed: int = 0
    max_agent_failures: int = 5
    agent_backoff_seconds: float = 5.0  # the first wait after a failed LLM call; doubles, up to 5 minutes
    max_cost: float | None = None  # dollars of LLM calls for the whole run
    max_tokens: int | None = None  # prompt and completion tokens for the whole run
    noise_runs: int = DEFAULT_NOISE_RUNS
    noise_multiple: float = DEFAULT_NOISE_MULTIPLE
    confirm_runs: int = DEFAULT_CONFIRM_RUNS
    sandbox: str = "auto"  # auto | on | off: train inside bubblewrap (docs/trust.md)
    slots: int | None = None  # trainings at once; None: 1 here, what the cluster offers on Ray (which it caps)
    gpus: str | None = None  # "0,1,2,3": one slot per GPU, each training with CUDA_VISIBLE_DEVICES set to it
    # draft the next proposals while experiments train (needs the sandbox); None: yes, unless a local model
    # server would share the training's CPU (run/session.py); True forces it there too
    draft_ahead: bool | None = None
    executor: str = "local"  # local | ray: where trainings and evaluations run (execution/)
    ray_address: str | None = None  # None: RAY_ADDRESS when the run starts or resumes, else auto
    overrides: list["Override"] = field(default_factory=list)  # what a resume changed, said and recorded
    allow_concurrent: bool = False  # train although another run trains in the workspace (this invocation only)

    @property
    def keep_rule(self) -> KeepRule:
        return KeepRule(noise_multiple=self.noise_multiple, min_delta=self.min_delta, confirm_runs=self.confirm_runs)


SETTINGS = tuple(f.name for f in fields(RunOptions) if f.name not in ("recipe", "tag", "overrides", "allow_concurrent"))


@dataclass(frozen=True)
class Override:
    """A setting given on resume that differs from the one the run had."""

    setting: str
    before: object
    after: object


def check_options(options: RunOptions) -> None:
    """Refuse a value that would make an empty, endless or harmful run; before anything is made."""
    if options.agent not in AGENTS:
        raise InvalidSetting("agent", f"must be {' or '.join(AGENTS)}, not {options.agent!r}")
    if options.sandbox not in SANDBOX_MODES:
        raise InvalidSetting("sandbox", f"must be {', '.join(SANDBOX_MODES)}, not {options.sandbox!r}")
    if options.edit_format not in EDIT_FORMATS:
        raise InvalidSetting("edit_format", f"must be {', '.join(EDIT_FORMATS)}, not {options.edit_format!r}")
    if not (isinstance(options.temperature, (int, float)) and 0 <= options.temperature <= MAX_TEMPERATURE):
        raise InvalidSetting("temperature", f"must be from 0 to {MAX_TEMPERATURE:g}, not {options.temperature}")
    if options.executor not in EXECUTORS:
        raise InvalidSetting("executor", f"must be {' or '.join(EXECUTORS)}, not {options.executor!r}")
    if options.executor == "ray":
        if not ray_installed():
            raise InvalidSetting("executor", f"is ray, but Ray is not installed here: {RAY_EXTRA_HINT}")
        if options.gpus is not None:
            raise InvalidSetting("gpus", "names GPUs of this machine; on Ray the cluster gives each training its "
                                         "own (--slots caps how many at once)")
    _at_least("max_experiments", options.max_experiments, 1)
    _at_least("max_agent_failures", options.max_agent_failures, 1)
    _at_least("max_tokens", options.max_tokens, 1)
    _at_least("prompt_tokens", options.prompt_tokens, 1)
    _at_least("reply_tokens", options.reply_tokens, 1)
    _at_least("context_tokens", options.context_tokens, 2)
    if options.context_tokens is not None and options.reply_tokens >= options.context_tokens:
        raise InvalidSetting("reply_tokens", f"must be less than the model's context ({options.context_tokens:,} "
                                             f"tokens), not {options.reply_tokens:,}")
    _at_least("slots", options.slots, 1)
    if options.gpus is not None:
        devices = [device.strip() for device in options.gpus.split(",")]
        if not all(devices) or len(set(devices)) != len(devices):
            raise InvalidSetting("gpus", f"lists GPU numbers (or ids) apart by commas, each once, not {options.gpus!r}")
        if options.slots not in (None, 1, len(devices)):
            raise InvalidSetting("slots", f"is one per GPU with gpus {options.gpus}; give one of the two")
    _at_least("noise_runs", options.noise_runs, 0)
    _at_least("confirm_runs", options.confirm_runs, 0)
    _at_least("seed", options.seed, 0)
    for name in ("budget_seconds", "hours", "max_cost", "llm_timeout"):
        _positive(name, getattr(options, name))
    for name in ("min_delta", "noise_multiple", "agent_backoff_seconds"):
        _positive(name, getattr(options, name), zero_allowed=True)


def check_gpus(gpus: str, present: list[tuple[str, str]] | None) -> None:
    """Refuse `gpus` naming a GPU this machine does not have (`present`: hardware.nvidia_gpu_ids(), None
    where nvidia-smi shows none): CUDA_VISIBLE_DEVICES with a name it does not know hides every GPU
    from the training, which then trains on the CPU or crashes. A GPU is its index or its UUID (or
    the start of it, as CUDA takes it); MIG devices (MIG-...) are left to CUDA."""
    devices = [device.strip() for device in gpus.split(",")]
    if present is None:
        raise InvalidSetting("gpus", f"names GPUs ({gpus}), but this machine has none that nvidia-smi shows "
                                     "(nvidia-smi is missing or failed); without GPUs, slots sets how many "
                                     "trainings run at once")
    indices = [index for index, _ in present]
    unknown = [device for device in devices if device not in indices and not device.startswith("MIG-")
               and not (device.startswith("GPU-") and any(uuid.startswith(device) for _, uuid in present))]
    if unknown:
        have = ", ".join(indices) if indices else "none"
        raise InvalidSetting("gpus", f"names {', '.join(unknown)}, not a GPU of this machine (its GPUs: {have}, "
                                     "or their UUIDs as nvidia-smi -L lists them)")


def _at_least(name: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise InvalidSetting(name, f"must be at least {low}, not {value}")


def _positive(name: str, value: float | None, zero_allowed: bool = False) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
        raise InvalidSetting(name, f"must be {'zero or more' if zero_allowed else 'more than zero'}, not {value:g}")


def ray_installed() -> bool:
    """Whether the `ray` extra is installed, without importing Ray (the tool without it never does)."""
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


def run_slots(options: RunOptions, offered: int | None = None):
    """The places trainings run at once: one per GPU of `gpus`, else `slots` of them.

    `offered`: how many the executor can run at once (a cluster's GPUs), the default and the cap of
    `slots`; the devices are then the executor's to give.
    """
    if options.gpus:
        return [Slot(index, device.strip()) for index, device in enumerate(options.gpus.split(","))]
    count = options.slots or offered or 1
    return [Slot(index) for index in range(min(count, offered) if offered else count)]


def stored_settings(options: RunOptions) -> dict:
    """The settings as the ledger keeps them (the run's `config`)."""
    return {name: getattr(options, name) for name in SETTINGS}


def resumed_options(run: dict, given: dict) -> RunOptions:
    """The run's own settings from its ledger row, with the ones given again on resume on top.

    Settings a run started before they were stored take today's defaults (and its budget comes from
    the row). Each given setting that differs from the run's is listed in `overrides`.
    """
    config = run.get("config") or {}
    stored = {name: config[name] for name in SETTINGS if name in config}
    if "edit_format" not in config and stored.get("draft_ahead") is True:
        stored["draft_ahead"] = None  # stored before drafting ahead had its automatic default: that default, not forced
    stored.setdefault("budget_seconds", run.get("budget_seconds"))
    stored.setdefault("agent", run.get("agent") or "llm")
    if run.get("model"):
        stored.setdefault("model", run["model"])
    options = RunOptions(tag=run["tag"], **stored)
    unknown = set(given) - set(SETTINGS)
    if unknown:
        raise ValueError(f"not settings of a run: {sorted(unknown)}")
    # --slots and --gpus say the same thing two ways: the one given again replaces the other.
    if "gpus" in given and "slots" not in given:
        given = {**given, "slots": 1}
    elif "slots" in given and "gpus" not in given:
        given = {**given, "gpus": None}
    overrides = [Override(name, getattr(options, name), value) for name, value in given.items()
                 if getattr(options, name) != value]
    return replace(options, **given, overrides=overrides)


def override_records(options: RunOptions, at: str) -> list[dict]:
    """What a resume changed, as the run's config keeps it in `overrides`."""
    return [{**asdict(override), "at": at} for override in options.overrides]
