"""Agents propose one change per experiment.

`LLMAgent` asks any OpenAI-compatible chat-completions endpoint and applies its SEARCH/REPLACE
blocks, sending back why a block did not apply (with the nearest real lines) for a bounded number
of attempts. `MutateAgent` needs no LLM: it perturbs one or two upper-case numeric constants at the
top of train.py; it is the control arm and the way to try the whole loop offline.
Both return a Candidate or raise InvalidProposal; neither touches git or the disk.

Before anything trains, the loop asks the agent to `check` itself: the LLM agent sends one cheap
request, the only kind that proves the URL, the key and the model together (a server's model list
is no proof: llama.cpp answers to any model name). A failed LLM call raises AgentUnavailable once;
retrying is the loop's business alone, so the `openai` client is built not to retry on its own.
"""

from __future__ import annotations

import math
import os
import random
import re
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from autoresearch.edits import EditBlock, EditError, apply_blocks, parse_reply
from autoresearch.endpoint import (DEFAULT_BASE_URL, CallTimedOut, ContextOverflow, call_within, context_overflow,
                                   server_message, wants_max_completion_tokens)
from autoresearch.errors import UserError
from autoresearch.guard import editable_digest
from autoresearch.ledger import ENDPOINT_CHECK_ATTEMPT
from autoresearch.prompts import (AgentContext, budget_that_fits, build_messages, prompt_tokens, repair_message,
                                  smallest_prompt_tokens)
from autoresearch.recipe import TOP_LEVEL_CONSTANT, Tunable

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_REQUEST_TIMEOUT = 600.0
MAX_REPLY_CHARS = 100_000  # about 25k tokens: far more than one focused change needs
KEPT_REPLY_CHARS = 4_000  # what is kept of an oversized reply, in the repair conversation and the ledger
CHECK_MESSAGES = ({"role": "user", "content": "Reply with the single word: ok"},)
CHECK_COMPLETION_TOKENS = 16  # enough for "ok"; a reasoning model may stop at it with no text, which still proves the way


@dataclass(frozen=True)
class Candidate:
    """A proposed change: its description, the new content of every file it changes, and the edit itself.

    `blocks` are the SEARCH/REPLACE blocks that made `changed` from the files the agent saw: applied
    again to other files (a newer best, when the best moved while this was drafted or trained), they
    make the same change there, or fail to apply.
    """

    description: str
    changed: dict[str, str]
    blocks: tuple[EditBlock, ...] = ()


class InvalidProposal(Exception):
    """The agent produced nothing that can be trained; `reason` is the typed outcome's reason."""

    def __init__(self, reason: str, description: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.description = description


@dataclass(frozen=True)
class Remedy:
    """The setting that mends a refusal: a run option or an agent parameter, by name, and a value to try.

    The value is None when the person must choose it (another model). The CLI words the setting as its flag.
    """

    setting: str
    value: str | None = None


class AgentUnavailable(Exception):
    """An LLM call failed: no proposal this time. The message names the endpoint's URL.

    `retryable` is False when asking again cannot help (the key, the model or the prompt's length was
    refused); `remedy` then says what to change, when one setting does it.
    """

    def __init__(self, reason: str, retryable: bool = True, remedy: Remedy | None = None):
        super().__init__(reason)
        self.retryable = retryable
        self.remedy = remedy


class CompletionLimitRefused(AgentUnavailable):
    """The endpoint takes the completion limit under its other name (see `LLMAgent.check`)."""


@dataclass(frozen=True)
class LLMCall:
    """One request and its answer, as recorded in the ledger."""

    attempt: int
    model: str
    messages: list
    reply: str | None
    error: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_seconds: float


class Agent(Protocol):
    name: str

    def describe(self) -> str:
        """Where proposals come from, for the person (the model and its endpoint); empty when `name` says it all."""

    def check(self, record_call: Callable[[LLMCall], None]) -> None:
        """Prove the agent can propose, before anything trains; raises AgentUnavailable."""

    def propose(self, context: AgentContext, record_call: Callable[[LLMCall], None]) -> Candidate: ...


def make_agent(options) -> "Agent":
    """The agent a run's settings (settings.RunOptions) ask for."""
    if options.agent == "mutate":
        return MutateAgent(seed=options.seed)
    return LLMAgent(model=options.model, base_url=options.base_url, request_timeout=options.llm_timeout)


# --- the LLM agent

class LLMAgent:
    """Proposals from a chat-completions endpoint through the `openai` client."""

    name = "llm"

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 temperature: float | None = None):
        import openai

        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        if not base_url and not api_key:
            raise UserError("the llm agent needs OPENAI_API_KEY (or OPENAI_BASE_URL / --base-url for a local "
                            "server such as vLLM or Ollama); --agent mutate needs neither")
        self.model = model
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.max_attempts = max_attempts
        self.request_timeout = request_timeout
        self.temperature = temperature
        # The name the endpoint takes a completion limit under; `check` learns it.
        self.completion_limit_parameter = "max_tokens"
        self._openai = openai
        # Local servers ignore the key but the client insists on one. max_retries=0: the loop's backoff
        # and its count of failures in a row are the only retry policy.
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key or "not-needed",
                                    timeout=request_timeout, max_retries=0)

    def describe(self) -> str:
        return f"model {self.model} at {self.base_url}"

    def check(self, record_call: Callable[[LLMCall], None]) -> None:
        """A one-message completion with a small limit: the URL, the key and the model answer, or it raises.

        The limit goes as `max_tokens`, which llama.cpp, vLLM, Ollama and LiteLLM take; OpenAI's
        reasoning models refuse it and ask for `max_completion_tokens`, which is then used from here on.
        """
        messages = [dict(message) for message in CHECK_MESSAGES]
        try:
            self._complete(messages, ENDPOINT_CHECK_ATTEMPT, record_call,
                           {self.completion_limit_parameter: CHECK_COMPLETION_TOKENS})
        except CompletionLimitRefused:
            self.completion_limit_parameter = "max_completion_tokens"
            self._complete(messages, ENDPOINT_CHECK_ATTEMPT, record_call,
                           {self.completion_limit_parameter: CHECK_COMPLETION_TOKENS})

    def propose(self, context: AgentContext, record_call: Callable[[LLMCall], None]) -> Candidate:
        messages = build_messages(context)
        error = "no attempt made"
        description = ""
        for attempt in range(1, self.max_attempts + 1):
            reply, cut_off = self._complete(messages, attempt, record_call, context=context)
            try:
                check_reply_size(reply, cut_off)
                parsed = parse_reply(reply)
                description = parsed.description
                changed = apply_blocks(context.files, parsed.blocks)
                if not changed:
                    raise EditError("the blocks change nothing")
                return Candidate(description=parsed.description, changed=changed, blocks=parsed.blocks)
            except EditError as exc:
                error = str(exc)
                if cut_off and "length limit" not in error:
                    error = f"the reply was cut off at the model's length limit; {error}"
                messages = messages + [{"role": "assistant", "content": shorten(reply, KEPT_REPLY_CHARS)},
                                       repair_message(error)]
        raise InvalidProposal(f"edit did not apply: {error.splitlines()[0]}", description)

    def _complete(self, messages: list, attempt: int, record_call: Callable[[LLMCall], None],
                  options: dict | None = None, context: AgentContext | None = None) -> tuple[str, bool]:
        """The reply's text, and whether the model stopped at its length limit; every call is recorded."""
        started = time.monotonic()
        options = dict(options or {})
        if self.temperature is not None:
            options["temperature"] = self.temperature

        def failed(unavailable: AgentUnavailable) -> AgentUnavailable:
            record_call(LLMCall(attempt, self.model, messages, None, str(unavailable), None, None,
                                time.monotonic() - started))
            return unavailable

        try:
            response = call_within(self.request_timeout, lambda: self.client.chat.completions.create(
                model=self.model, messages=messages, **options))
        except (CallTimedOut, self._openai.APITimeoutError):
            raise failed(AgentUnavailable(f"no answer from {self.base_url} within {self.request_timeout:g}s")) \
                from None
        except (self._openai.OpenAIError, ValueError) as exc:
            # ValueError: a body that is not JSON; the server is having a bad moment, like a 500.
            raise failed(self._refusal(exc, messages, context)) from None
        choice = response.choices[0] if getattr(response, "choices", None) else None
        if choice is None:  # a 200 without a completion (a proxy's error page): the server's fault
            raise failed(AgentUnavailable(f"{self.base_url} answered without a completion"))
        reply = getattr(getattr(choice, "message", None), "content", None) or ""
        usage = getattr(response, "usage", None)
        record_call(LLMCall(attempt, self.model, messages, shorten(reply, MAX_REPLY_CHARS), None,
                            getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None),
                            time.monotonic() - started))
        return reply, getattr(choice, "finish_reason", None) == "length"

    def _refusal(self, exc: Exception, messages: list, context: AgentContext | None) -> AgentUnavailable:
        """What a failed request means for the run: worth another try later, or a setting to change first."""
        said = server_message(exc)
        url, model = self.base_url, self.model
        if isinstance(exc, self._openai.APIConnectionError):
            return AgentUnavailable(f"cannot reach {url} ({said})")
        if isinstance(exc, self._openai.AuthenticationError):
            return AgentUnavailable(f"the LLM endpoint {url} refused the API key ({said}); set OPENAI_API_KEY to "
                                    "a key it accepts", retryable=False)
        if isinstance(exc, self._openai.PermissionDeniedError):
            return AgentUnavailable(f"the LLM endpoint {url} refused model {model} ({said}); choose a model this "
                                    "key may use", retryable=False, remedy=Remedy("model"))
        if isinstance(exc, self._openai.NotFoundError):
            return AgentUnavailable(f"the LLM endpoint {url} has no model {model} ({said}); choose a model it "
                                    "serves, or correct the URL (the part before /chat/completions, often ending "
                                    "in /v1)", retryable=False, remedy=Remedy("model"))
        overflow = context_overflow(exc)
        if overflow is not None:
            return self._overflow(overflow, messages, context)
        if wants_max_completion_tokens(exc):
            return CompletionLimitRefused(f"the LLM endpoint {url} refused the completion limit ({said})",
                                          retryable=False)
        return AgentUnavailable(f"{url} answered {said}")

    def _overflow(self, overflow: ContextOverflow, messages: list, context: AgentContext | None) -> AgentUnavailable:
        """The prompt is longer than the model's context: how long each is, and the budget that would fit."""
        estimated = prompt_tokens(messages)
        counted = f", {overflow.prompt_tokens:,} by the server's count" if overflow.prompt_tokens else ""
        limit = f"{overflow.context_tokens:,} tokens" if overflow.context_tokens else "the server did not give its size"
        problem = (f"the prompt (about {estimated:,} tokens by the tool's estimate{counted}) does not fit the "
                   f"context of model {self.model} at {self.base_url} ({limit})")
        if context is None or overflow.context_tokens is None:
            budget = f" from {context.token_budget:,}" if context is not None else ""
            return AgentUnavailable(f"{problem}; lower the prompt token budget{budget}, or serve the model with a "
                                    "longer context", retryable=False, remedy=Remedy("prompt_tokens"))
        fits = budget_that_fits(overflow.context_tokens, estimated, overflow.prompt_tokens)
        smallest = smallest_prompt_tokens(context)
        if smallest > fits:
            return AgentUnavailable(f"{problem}; even the shortest prompt (about {smallest:,} tokens: the "
                                    "instructions, program.md and the editable files) would not leave room for the "
                                    "reply: serve the model with a longer context", retryable=False)
        return AgentUnavailable(f"{problem}; lower the prompt token budget from {context.token_budget:,} to "
                                f"{fits:,} or less, or serve the model with a longer context", retryable=False,
                                remedy=Remedy("prompt_tokens", str(fits)))


def check_reply_size(reply: str, cut_off: bool) -> None:
    """An empty or oversized reply is told apart from one whose blocks do not apply."""
    if not reply.strip():
        raise EditError("the reply was empty" + (" (cut off at the model's length limit)" if cut_off else ""))
    if len(reply) > MAX_REPLY_CHARS:
        raise EditError(f"the reply is {len(reply)} characters, over the limit of {MAX_REPLY_CHARS}; "
                        "answer with one focused change and only the blocks it needs")


def shorten(text: str, limit: int) -> str:
    """text, or its head and tail with a note of how much was left out between them."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters left out ...]\n{text[-half:]}"


# --- the mutate agent

MAX_MUTATION_TRIES = 100


class MutateAgent:
    """Offline proposals: change one or two of the recipe's tunable constants, inside their ranges.

    The recipe's `tunable:` says which constants and which values (docs/recipe-contract.md); a
    recipe without it lets every upper-case numeric constant at the top of its first editable file
    be scaled by 0.5 to 2 (floats) or stepped (integers).
    """

    name = "mutate"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def describe(self) -> str:
        return ""

    def check(self, record_call: Callable[[LLMCall], None]) -> None:
        """Nothing to check: no endpoint."""

    def propose(self, context: AgentContext, record_call: Callable[[LLMCall], None]) -> Candidate:
        target = context.recipe.editable[0]
        source = context.files[target]
        tunables = {tunable.name: tunable for tunable in context.recipe.tunable}
        constants = [match for match in TOP_LEVEL_CONSTANT.finditer(source)
                     if not tunables or match.group("name") in tunables]
        if not constants:
            what = "tunable constants (recipe.yaml `tunable:`)" if tunables else "upper-case numeric constants"
            raise InvalidProposal(f"no {what} at the top level of {target} to mutate")
        rng = random.Random(f"{self.seed}:{context.number}")
        for _ in range(MAX_MUTATION_TRIES):
            chosen = rng.sample(constants, k=min(len(constants), rng.choice((1, 1, 2))))
            chosen.sort(key=lambda match: match.start())
            new_source, changes, blocks = source, [], []
            for match in reversed(chosen):
                old_text = match.group("value")
                new_text = mutate_number(old_text, rng, tunables.get(match.group("name")))
                if float(new_text) == float(old_text.replace("_", "")):
                    continue
                line = match.group("name") + match.group("eq") + new_text + match.group("rest")
                new_source = new_source[:match.start()] + line + new_source[match.end():]
                changes.insert(0, f"{match.group('name')} {old_text} -> {new_text}")
                blocks.insert(0, EditBlock(target, match.group(0) + "\n", line + "\n"))
            if not changes:
                continue
            changed = {target: new_source}
            if editable_digest(context.recipe, {**context.files, **changed}) in context.seen_hashes:
                continue
            return Candidate(description=", ".join(changes), changed=changed, blocks=tuple(blocks))
        raise InvalidProposal("duplicate: every mutation tried was already run")


def mutate_number(text: str, rng: random.Random, tunable: Tunable | None = None) -> str:
    """A new value for a constant written as text: inside the tunable's range or choices when given.

    Without a tunable, a float is scaled by a factor in [0.5, 2] (log-uniform) and an integer
    stepped up or down by a quarter (at least 1).
    """
    if tunable is not None and tunable.choices:
        current = float(text.replace("_", ""))
        others = [choice for choice in tunable.choices if choice != current]
        return _format_value(rng.choice(others), tunable.integer)
    is_float = any(ch in text for ch in ".eE") and not (tunable is not None and tunable.integer)
    value = float(text.replace("_", ""))
    if is_float:
        if tunable is not None and tunable.low <= 0:  # a range through zero: a step of up to a quarter of it
            new_value = value + rng.uniform(-1, 1) * (tunable.high - tunable.low) / 4
        elif value == 0:
            return text
        else:
            new_value = value * 2 ** rng.uniform(-1, 1)
        if tunable is not None:
            new_value = min(max(new_value, tunable.low), tunable.high)
        return _format_value(new_value, integer=False)
    value = int(value)
    step = max(1, round(abs(value) * 0.25))
    new_value = value + rng.choice((-step, step))
    if tunable is not None:
        new_value = int(min(max(new_value, tunable.low), tunable.high))
    elif value > 0 and new_value < 1:
        new_value = value + step
    return str(new_value)


def _format_value(value: float, integer: bool) -> str:
    """An integer as digits; a float with three significant digits, as a person writes a constant."""
    if integer:
        return str(int(value))
    if value == 0:
        return "0.0"
    digits = 3 - int(math.floor(math.log10(abs(value)))) - 1
    rounded = round(value, digits)
    text = f"{rounded:.{max(digits, 0)}f}" if 1e-4 <= abs(rounded) < 1e6 else f"{rounded:.2e}"
    return text if "." in text or "e" in text else text + ".0"
