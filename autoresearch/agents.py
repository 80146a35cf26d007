"""Agents propose one change per experiment.

`LLMAgent` asks any OpenAI-compatible chat-completions endpoint and applies its reply in the run's
edit format (formats.py: search-replace, whole or knobs; `auto` is resolved by `check` from the
model's size), sending back why a reply did not apply (with the nearest real lines) for a bounded
number of attempts; a failure repeated word for word changes to a simpler format for the next
turn, and a refused reply's DESCRIPTION and NOTES go with its InvalidProposal, for the lineage.
Every call is recorded, a timed-out one and one given up because the run stopped (`stop`) too. `MutateAgent` needs no LLM: it perturbs one or two upper-case numeric constants at the
top of train.py; it is the control arm and the way to try the whole loop offline.
Both return a Candidate or raise InvalidProposal; neither touches git or the disk.

Before anything trains, the loop asks the agent to `check` itself: the LLM agent sends one cheap
request, the only kind that proves the URL, the key and the model together (a server's model list
is no proof: llama.cpp answers to any model name); it also learns the name the endpoint takes a
completion limit under and, where a local server reports it, the model's context window. A failed
LLM call raises AgentUnavailable once; retrying is the loop's business alone, so the `openai`
client is built not to retry on its own.

Every proposal is a streamed request with a completion limit (`reply_tokens`): without a limit a
local server writes until its context is full, and a stream is what lets a call given up on stop
the server's generation (closing it) and lets the person see that the model is writing. The prompt
budget leaves the completion limit's room in the model's context, and every repair turn is fitted
into the same budget (prompts.repair_conversation); a conversation that cannot fit ends the
proposal `invalid`, the calls that worked kept, instead of failing like an endpoint that is down.
"""

from __future__ import annotations

import math
import os
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Protocol

from autoresearch import formats
from autoresearch.edits import EditBlock, EditError, parse_description, parse_notes, set_constants
from autoresearch.endpoint import (DEFAULT_BASE_URL, CallStopped, CallTimedOut, ContextOverflow, call_within,
                                   context_overflow, refused_on_this_machine, served_context_tokens, served_parameters,
                                   served_token_count, server_message, wants_max_completion_tokens)
from autoresearch.errors import AgentUnavailable, InvalidProposal, NothingListens, Remedy, UserError
from autoresearch.guard import editable_digest
from autoresearch.ledger import ENDPOINT_CHECK_ATTEMPT
from autoresearch.prompts import (CHARS_PER_TOKEN, DEFAULT_REPLY_TOKENS, AgentContext, budget_that_fits, build_messages,
                                  estimate_tokens, prompt_tokens,
                                  repair_conversation, shorten, smallest_prompt_tokens)
from autoresearch.recipe import TOP_LEVEL_CONSTANT, Tunable

DEFAULT_MAX_ATTEMPTS = 3
RESTART_TEMPERATURE = 0.7  # at least, once a proposal starts again after the same failure twice
DEFAULT_TEMPERATURE = 0.2  # edits copy lines of a file exactly: a low temperature (llama.cpp's default is 0.8)
DEFAULT_REQUEST_TIMEOUT = 600.0
MAX_REPLY_CHARS = 100_000  # about 25k tokens: far more than one focused change needs
KEPT_REPLY_CHARS = 4_000  # the most kept of a failed reply in the repair conversation (less when the budget is tight)
# Of the room the model's context leaves beside the completion limit, what the prompt budget may take: the
# estimate of a prompt's tokens is not the server's count (on a server without a tokenizer to measure it).
CONTEXT_SAFETY = 0.9
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
    notes: str = ""  # what the agent wrote under NOTES: for its later experiments


class CompletionLimitRefused(AgentUnavailable):
    """The endpoint takes the completion limit under its other name (see `LLMAgent.check`)."""


class ProposalStopped(AgentUnavailable):
    """The run stopped while a call was under way; the call was given up and recorded."""

    def __init__(self, reason: str):
        super().__init__(reason, retryable=False)


class PromptTooLong(AgentUnavailable):
    """The server refused the conversation for its length (the model's context is smaller)."""

    def __init__(self, reason: str, overflow: ContextOverflow, remedy: Remedy | None = None):
        super().__init__(reason, retryable=False, remedy=remedy)
        self.overflow = overflow


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
    cached_tokens: int | None = None  # of prompt_tokens, read from the server's prompt cache (where it says)
    finish_reason: str | None = None  # why the model stopped: stop, length...


class Agent(Protocol):
    name: str

    def describe(self) -> str:
        """Where proposals come from, for the person (the model and its endpoint); empty when `name` says it all."""

    def check(self, record_call: Callable[[LLMCall], None]) -> None:
        """Prove the agent can propose, before anything trains; raises AgentUnavailable."""

    def propose(self, context: AgentContext, record_call: Callable[[LLMCall], None],
                on_writing: Callable[[int], None] | None = None, stop: threading.Event | None = None) -> Candidate:
        """One candidate; `on_writing(characters)` hears, from another thread, how much of a reply has come; `stop`
        (set by another thread) gives up the call under way, which is recorded."""


def make_agent(options) -> "Agent":
    """The agent a run's settings (settings.RunOptions) ask for."""
    if options.agent == "mutate":
        return MutateAgent(seed=options.seed)
    return LLMAgent(model=options.model, base_url=options.base_url, request_timeout=options.llm_timeout,
                    reply_tokens=options.reply_tokens, context_tokens=options.context_tokens,
                    temperature=options.temperature, edit_format=options.edit_format)


# --- the LLM agent

class LLMAgent:
    """Proposals from a chat-completions endpoint through the `openai` client."""

    name = "llm"

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 temperature: float | None = DEFAULT_TEMPERATURE, reply_tokens: int = DEFAULT_REPLY_TOKENS,
                 context_tokens: int | None = None, edit_format: str = "auto"):
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
        self.reply_tokens = reply_tokens
        # The edit format asked for (formats.EDIT_FORMATS); `auto` is resolved by `check`, which says why.
        self.edit_format = edit_format
        self.format_reason = "as set for the run" if edit_format != "auto" else ""
        # The model's context window: given, or learned by `check` where the server reports it.
        self.context_tokens = context_tokens
        # Characters a token, as the server's tokenizer measured the first prompt (None: not measured yet).
        self.chars_per_token: float | None = None
        self._measured = False
        # The name the endpoint takes a completion limit under; `check` learns it.
        self.completion_limit_parameter = "max_tokens"
        self._api_key = api_key
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
        if self.context_tokens is None:
            self.context_tokens = served_context_tokens(self.base_url, self.model, self._api_key)
        if self.edit_format == "auto":
            parameters, source = served_parameters(self.base_url, self.model, self._api_key)
            self.edit_format, self.format_reason = formats.choose_format(
                formats.ModelFacts(self.model, parameters, self.context_tokens, source))

    def prompt_budget(self, wanted: int) -> int:
        """The prompt budget: the one asked for, or less where the model's context must also hold the reply."""
        if self.context_tokens is None:
            return wanted
        return min(wanted, int(budget_that_fits(self.context_tokens, self.reply_tokens) * CONTEXT_SAFETY))

    def sized(self, context: AgentContext) -> AgentContext:
        """The context with the budget the model's context allows, at the server's own characters per token.

        The server's tokenizer (where it has one) measures the first prompt once; its ratio then
        sizes every prompt of the run.
        """
        context = replace(context, token_budget=self.prompt_budget(context.token_budget),
                          chars_per_token=self.chars_per_token or context.chars_per_token)
        if not self._measured:
            self._measured = True
            text = "\n\n".join(message["content"] for message in build_messages(context))
            counted = served_token_count(self.base_url, self.model, text, self._api_key)
            if counted:
                self.chars_per_token = len(text) / counted
                context = replace(context, chars_per_token=self.chars_per_token)
        return context

    def propose(self, context: AgentContext, record_call: Callable[[LLMCall], None],
                on_writing: Callable[[int], None] | None = None, stop: threading.Event | None = None) -> Candidate:
        """The reply in the run's edit format, repaired up to `max_attempts` times; after the same failure twice the
        conversation starts again in a simpler format (formats.simpler), the failure said in its prompt."""
        name = "search-replace" if self.edit_format == "auto" else self.edit_format  # auto: not checked (a test)
        editable = "".join(context.files.get(file, "") for file in context.recipe.editable)
        file_tokens = estimate_tokens(editable, self.chars_per_token or context.chars_per_token)
        context = self.sized(replace(context, edit_format=formats.fitting(name, context.recipe, context.files,
                                                                          file_tokens, self.context_tokens)))
        messages = build_messages(context)
        error, kind, first_error = "no attempt made", None, ""
        description = notes = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                reply, finish_reason = self._complete(messages, attempt, record_call, self._options(context),
                                                      context, on_writing, stop)
            except PromptTooLong as exc:
                if attempt == 1:
                    raise
                size = exc.overflow.context_tokens
                raise InvalidProposal(f"edit did not apply: {error.splitlines()[0]}; the repair conversation does "
                                      "not fit the model's context ("
                                      + (f"{size:,} tokens)" if size else "the server did not give its size)"),
                                      description, notes) from None
            cut_off = finish_reason == "length"
            # kept even when the reply is refused: the lineage says what was tried
            description = parse_description(reply) or description
            notes = parse_notes(reply) or notes
            try:
                check_reply_size(reply, cut_off)
                edit = formats.read_reply(context.edit_format, reply, context.recipe, context.files)
                if set(edit.changed) <= set(context.recipe.editable) and editable_digest(
                        context.recipe, {**context.files, **edit.changed}) in context.seen_hashes:
                    raise EditError(formats.tried_already(context.edit_format, context.recipe, context.files,
                                                          context.seen_hashes))
                return Candidate(description=edit.description, changed=edit.changed, blocks=edit.blocks,
                                 notes=edit.notes)
            except EditError as exc:
                error = str(exc)
                if cut_off and "length limit" not in error:
                    error = f"the reply was cut off at the model's length limit; {error}"
                first_error = first_error or error
            if attempt == self.max_attempts:
                break
            again = failure_kind(error)
            if again == kind:
                # the same failure twice: start again in a simpler form, the failure said in the prompt; the failed
                # replies left out (a small model shown its own reply writes it again word for word: BENCHMARKS.md)
                context = replace(context, refused=error.splitlines()[0],
                                  edit_format=formats.simpler(context.edit_format, context.recipe, context.files))
                messages = build_messages(context)
            else:
                repaired = repair_conversation(messages, shorten(reply, KEPT_REPLY_CHARS), error,
                                               context.token_budget, context.chars_per_token,
                                               formats.named(context.edit_format).repair_hint)
                if repaired is None:
                    raise InvalidProposal(f"edit did not apply: {error.splitlines()[0]}; no repair turn fits the "
                                          f"prompt budget of {context.token_budget:,} tokens", description, notes)
                messages = repaired
            kind = again
        last = error.splitlines()[0]
        then = f"; then, in the {context.edit_format} form: {last}" if last != first_error.splitlines()[0] else ""
        raise InvalidProposal(f"edit did not apply: {first_error.splitlines()[0]}{then}", description, notes)

    def _options(self, context: AgentContext) -> dict:
        """What a proposal's call sends besides its messages: the completion limit (the run's, or the format's own
        where that is shorter), and, where the proposal starts again, a temperature of at least
        RESTART_TEMPERATURE (at the run's low one a small model wrote its refused reply a third time, word for
        word: BENCHMARKS.md)."""
        cap = formats.named(context.edit_format).reply_tokens
        options: dict = {self.completion_limit_parameter: min(self.reply_tokens, cap or self.reply_tokens)}
        if context.refused and self.temperature is not None:
            options["temperature"] = max(self.temperature, RESTART_TEMPERATURE)
        return options

    def _complete(self, messages: list, attempt: int, record_call: Callable[[LLMCall], None],
                  options: dict | None = None, context: AgentContext | None = None,
                  on_writing: Callable[[int], None] | None = None,
                  stop: threading.Event | None = None) -> tuple[str, str | None]:
        """The reply's text and why the model stopped (`length`: at its limit), streamed; every call is recorded,
        a failed one too: its prompt's tokens estimated (the server counts them, but tells only at the end) and
        what came of the reply.

        Giving up (the whole call past its time, Ctrl-C or `stop`) closes the stream, so the server stops writing.
        """
        started = time.monotonic()
        options = dict(options or {})
        if self.temperature is not None:
            options.setdefault("temperature", self.temperature)
        answer = StreamedAnswer(on_writing)

        ratio = context.chars_per_token if context is not None else self.chars_per_token or CHARS_PER_TOKEN

        def failed(unavailable: AgentUnavailable, processed: bool = True) -> AgentUnavailable:
            """Recorded; with the estimate of its tokens where the server had the prompt (`processed`: given up
            on, or broken off), none where it refused the request."""
            counted = (prompt_tokens(messages, ratio), estimate_tokens(answer.text, ratio) if answer.text else 0) \
                if processed else (None, None)
            record_call(LLMCall(attempt, self.model, messages, answer.text or None, str(unavailable), *counted,
                                time.monotonic() - started))
            return unavailable

        def ask() -> None:
            answer.read(self.client.chat.completions.create(
                model=self.model, messages=messages, stream=True, stream_options={"include_usage": True}, **options))

        try:
            call_within(self.request_timeout, ask, give_up=answer.close, stop=stop)
        except KeyboardInterrupt:  # Ctrl-C in this thread (a serial caller): recorded, then passed on
            failed(AgentUnavailable(f"interrupted by the person (Ctrl-C) after {len(answer.text):,} characters"))
            raise
        except CallStopped:
            raise failed(ProposalStopped(f"given up when the run stopped, after {len(answer.text):,} characters "
                                         "of the reply")) from None
        except (CallTimedOut, self._openai.APITimeoutError):
            closed = f" (stream closed after {len(answer.text):,} characters)" if answer.text else ""
            raise failed(AgentUnavailable(f"no answer from {self.base_url} within {self.request_timeout:g}s"
                                          f"{closed}")) from None
        except (self._openai.OpenAIError, ValueError) as exc:
            # ValueError: a body that is not JSON; the server is having a bad moment, like a 500.
            raise failed(self._refusal(exc, messages, context), processed=bool(answer.text)) from None
        except Exception as exc:  # the connection broke mid-answer (httpx's errors are not the client's)
            if not isinstance(exc, OSError) and not _is_transport_error(exc):
                raise
            raise failed(AgentUnavailable(f"the answer from {self.base_url} broke off after {len(answer.text):,} "
                                          f"characters ({type(exc).__name__}: {exc})")) from None
        if not answer.chunks:  # a 200 without a completion (a proxy's error page): the server's fault
            raise failed(AgentUnavailable(f"{self.base_url} answered without a completion"), processed=False)
        if answer.finish_reason is None:
            raise failed(AgentUnavailable(f"the answer from {self.base_url} ended before the model finished "
                                          f"({len(answer.text):,} characters, no finish reason)"))
        usage = answer.usage
        details = getattr(usage, "prompt_tokens_details", None)
        counted = (getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))
        if usage is None:  # llama-cpp-python's stream says none: the estimate, so totals and --max-tokens still count
            written = estimate_tokens(answer.text, ratio)
            limit = options.get(self.completion_limit_parameter)
            counted = (prompt_tokens(messages, ratio), min(written, limit) if limit else written)
        record_call(LLMCall(attempt, self.model, messages, shorten(answer.text, MAX_REPLY_CHARS), None, *counted,
                            time.monotonic() - started, cached_tokens=getattr(details, "cached_tokens", None),
                            finish_reason=answer.finish_reason))
        return answer.text, answer.finish_reason

    def _refusal(self, exc: Exception, messages: list, context: AgentContext | None) -> AgentUnavailable:
        """What a failed request means for the run: worth another try later, or a setting to change first."""
        said = server_message(exc)
        url, model = self.base_url, self.model
        if isinstance(exc, self._openai.APIConnectionError):
            if refused_on_this_machine(exc, url):
                return NothingListens(f"nothing listens at {url} (connection refused): start the server there, or "
                                      "give the URL it listens at")
            return AgentUnavailable(f"cannot reach {url} ({said})", remedy=Remedy("base_url"))
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

    def _overflow(self, overflow: ContextOverflow, messages: list, context: AgentContext | None) -> PromptTooLong:
        """The prompt is longer than the model's context: how long each is, and the budget that would fit."""
        estimated = prompt_tokens(messages, context.chars_per_token if context is not None else CHARS_PER_TOKEN)
        counted = f", {overflow.prompt_tokens:,} by the server's count" if overflow.prompt_tokens else ""
        limit = f"{overflow.context_tokens:,} tokens" if overflow.context_tokens else "the server did not give its size"
        problem = (f"the prompt (about {estimated:,} tokens by the tool's estimate{counted}) does not fit the "
                   f"context of model {self.model} at {self.base_url} ({limit})")
        if context is None or overflow.context_tokens is None:
            budget = f" from {context.token_budget:,}" if context is not None else ""
            return PromptTooLong(f"{problem}; lower the prompt token budget{budget}, or serve the model with a "
                                 "longer context", overflow, Remedy("prompt_tokens"))
        fits = int(budget_that_fits(overflow.context_tokens, self.reply_tokens, estimated, overflow.prompt_tokens)
                   * CONTEXT_SAFETY)
        smallest = smallest_prompt_tokens(context)
        if smallest > fits:
            return PromptTooLong(f"{problem}; even the shortest prompt (about {smallest:,} tokens: the instructions, "
                                 f"program.md and the editable files) would not leave room for a reply of "
                                 f"{self.reply_tokens:,} tokens: serve the model with a longer context, or lower "
                                 "the completion limit", overflow, Remedy("reply_tokens"))
        return PromptTooLong(f"{problem}; lower the prompt token budget from {context.token_budget:,} to {fits:,} or "
                             "less, or serve the model with a longer context", overflow,
                             Remedy("prompt_tokens", str(fits)))


def failure_kind(error: str) -> str:
    """What kind of failure an error is, to tell the same failure twice: its first line without numbers."""
    return re.sub(r"\d+", "N", error.splitlines()[0] if error else "")


def check_reply_size(reply: str, cut_off: bool) -> None:
    """An empty or oversized reply is told apart from one whose blocks do not apply."""
    if not reply.strip():
        raise EditError("the reply was empty" + (" (cut off at the model's length limit)" if cut_off else ""))
    if len(reply) > MAX_REPLY_CHARS:
        raise EditError(f"the reply is {len(reply)} characters, over the limit of {MAX_REPLY_CHARS}; "
                        "answer with one focused change and only the blocks it needs")


class StreamedAnswer:
    """A reply read from a stream of chunks; `close` (from another thread) ends it and its connection."""

    def __init__(self, on_writing: Callable[[int], None] | None = None):
        self.on_writing = on_writing
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.usage = None
        self.chunks = 0
        self._stream = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def read(self, stream) -> None:
        with self._lock:
            self._stream, closed = stream, self._closed
        if closed:
            self.close()
            return
        for chunk in stream:
            self.chunks += 1
            if getattr(chunk, "usage", None) is not None:
                self.usage = chunk.usage
            for choice in getattr(chunk, "choices", None) or ():
                content = getattr(getattr(choice, "delta", None), "content", None)
                if content:
                    self.parts.append(content)
                    if self.on_writing is not None:
                        self.on_writing(sum(map(len, self.parts)))
                if getattr(choice, "finish_reason", None):
                    self.finish_reason = choice.finish_reason
            if self._closed:
                return

    def close(self) -> None:
        """Shut the connection at once (a read blocked on it ends, and the server sees the client go)."""
        with self._lock:
            self._closed, stream = True, self._stream
        if stream is None:
            return
        network = getattr(getattr(stream, "response", None), "extensions", {}).get("network_stream")
        sock = network.get_extra_info("socket") if network is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            stream.close()
        except Exception:  # closing a connection another thread is reading: whatever it says, it is closed
            pass


def _is_transport_error(exc: Exception) -> bool:
    """An error of the HTTP layer under the client (httpx's), raised while a stream is read."""
    return type(exc).__module__.split(".")[0] in ("httpx", "httpcore")


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

    def propose(self, context: AgentContext, record_call: Callable[[LLMCall], None],
                on_writing: Callable[[int], None] | None = None, stop: threading.Event | None = None) -> Candidate:
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
            values = {match.group("name"): mutate_number(match.group("value"), rng, tunables.get(match.group("name")))
                      for match in reversed(chosen)}
            new_source, changes, blocks = set_constants(source, values, target)
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
