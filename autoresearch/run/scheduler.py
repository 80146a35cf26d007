"""The loop as a scheduler over things in flight: drafts of proposals and training runs on slots.

One thread (the caller's) owns the ledger and the run branch and decides everything; the others
only wait: a draft thread waits for the agent (an LLM answer can take minutes), a slot thread waits
for a training or an evaluation process. They hand back what they got through one queue of
events, so the ledger has a single writer and every decision is taken in one place.

- Drafting ahead: while experiments train, the next ones are drafted against the current best,
  with the experiments in flight listed in the prompt ("training now"). How many are drafted at
  once follows the measured proposal and training times (within MAX_DRAFTS). A ready draft waits,
  uncommitted, for a free slot; if the best has moved meanwhile its blocks are applied again onto
  the new best when it gets one, or it is drafted again if they no longer apply. The first drafts
  start while the baseline's last run trains, past half its budget, and wait for its decision.
  Without the sandbox the loop stays serial: the ledger's check after each training
  (recovery.LedgerGuard) needs the tool to write nothing while a training runs.
- Slots: `slots` trainings at once, each on its own device (CUDA_VISIBLE_DEVICES), its own fresh
  copy and its own sandbox. The baseline's noise runs use them side by side.
- One best, nothing lost: a candidate is decided against the best it was drafted from. If the best
  moved on while it trained and it still beat its own parent, its blocks are applied onto the new
  best as a new experiment, trained and decided against that best: nothing is kept on a number
  measured at another commit, and a keep always moves the branch forward from the best, so no
  kept change is dropped by a later one. The best is recorded as its own pointer (runs.best_number).

With one slot and no drafting ahead it is the serial loop: propose, train, decide, propose again.

It is handed its collaborators and owns none of their rules: the journal records (the only writer),
the briefing says what the agent is shown, the limits say whether another experiment may start, the
proposer asks the agent under the retry policy, the keep rule (keep.py) judges, the trainer trains
and evaluates. It reads the run's state and never changes it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque

from autoresearch.agents import Candidate
from autoresearch.console import Reporter
from autoresearch.edits import EditError, apply_blocks, unified_diff
from autoresearch.errors import InvalidProposal, LedgerTampered, StopRun
from autoresearch.guard import check_candidate, editable_digest
from autoresearch.keep import DecisionRecord, Evidence, KeepRule, failed_confirmation, judge
from autoresearch.execution.contention import BUSY_SHARE, busy_share
from autoresearch.noise import derive_seed, harness_tampering, mean, noise_warning
from autoresearch.outcomes import baseline_cause
from autoresearch.proposer import Proposer
from autoresearch.run.briefing import Briefing
from autoresearch.run.flights import Draft, Flight, draft_concurrency, in_flight_lines
from autoresearch.run.journal import Journal
from autoresearch.run.limits import Limits
from autoresearch.run.state import Best, RunState
from autoresearch.execution.jobs import Slot
from autoresearch.trainer import Ticket, Trained, Trainer, TrainingRequest

POLL_SECONDS = 0.2  # how often the scheduler looks at its limits when nothing happens
BASELINE_DESCRIPTION = "baseline: the unmodified recipe"


class Scheduler:
    """Runs one invocation of a run's loop until a limit is reached and nothing is in flight."""

    def __init__(self, state: RunState, journal: Journal, briefing: Briefing, limits: Limits, proposer: Proposer,
                 rule: KeepRule, trainer: Trainer, reporter: Reporter, slots: list[Slot], draft_ahead: bool,
                 seed: int, noise_runs: int, confirm_runs: int):
        self.state, self.journal, self.briefing, self.limits = state, journal, briefing, limits
        self.proposer, self.rule, self.trainer, self.reporter = proposer, rule, trainer, reporter
        self.slots = slots
        self.draft_ahead = draft_ahead
        self.seed, self.noise_runs, self.confirm_runs = seed, noise_runs, confirm_runs
        self.events: queue.Queue = queue.Queue()
        self.flights: dict[int, Flight] = {}
        self.drafts: dict[int, Draft] = {}
        self.ready: deque[tuple[Draft, Candidate, float]] = deque()  # drafted, waiting for a slot
        self.pending: deque[tuple[Flight, TrainingRequest]] = deque()
        self.busy: dict[int, tuple[Flight, Ticket]] = {}
        self.stop_reason = ""
        self.invalid_drafts = 0  # drafts found invalid since a training run last ended
        self.propose_times: list[float] = []
        self.train_times: list[float] = []

    # --- the loop

    def run(self) -> str:
        try:
            while True:
                self._admit()
                self._dispatch()
                if not (self.flights or self.drafts or self.ready):
                    if self.stop_reason:
                        return self.stop_reason
                    continue  # _admit starts something, or says why it will not
                try:
                    event = self.events.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                self._handle(*event)
        except BaseException as exc:
            self._abandon(exc)
            raise

    def _admit(self) -> None:
        """Start what may start now: the baseline, new drafts; or note that a limit stops new ones."""
        if not self.stop_reason:
            self.stop_reason = self._limit() or ""
        if self.stop_reason:
            return
        if not self.state.best.measured:
            if not self.flights:
                self._start_baseline()
            if not self._baseline_proven():
                return
        while self._may_draft():
            self._start_draft()

    def _may_draft(self) -> bool:
        """Whether one more draft may start: within the limits, and while a slot would otherwise wait for it.

        At most as many proposals wait for a slot (drafted, or drafting) as there are slots; how many
        are drafted at once follows the measured times. Serial: only when nothing else is in flight.
        """
        if self.stop_reason or self._limit():
            return False
        if any(not draft.calls for draft in self.drafts.values()) and self.limits.spending_unmeasured():
            return False  # under a cap, one draft at a time until one proposal's cost is known
        if not self.draft_ahead:
            return not (self.flights or self.drafts or self.ready)
        if self.flights and self.invalid_drafts >= len(self.slots):
            return False  # an agent that keeps proposing what is training waits for a result to tell it more
        waiting = len(self.drafts) + len(self.ready) + sum(1 for _, request in self.pending if request.attempt == 0)
        return len(self.drafts) < self._draft_concurrency() and waiting < len(self.slots)

    def _limit(self, asks_agent: bool = True) -> str | None:
        unrecorded = sum(1 for draft in self.drafts.values() if not draft.calls)
        return self.limits.reached(in_flight=len(self.flights) + len(self.drafts) + len(self.ready),
                                   drafting=unrecorded, asks_agent=asks_agent)

    def _baseline_in_flight(self) -> Flight | None:
        return next((flight for flight in self.flights.values() if flight.kind == "baseline"), None)

    def _baseline_proven(self) -> bool:
        """While the baseline trains: whether it has trained long enough to draft the first proposals.

        Once its last run (of the first and the noise runs) is past half its budget: a broken recipe has
        usually crashed by then, so few drafts are wasted on it, and drafts for every slot started then
        are ready when the baseline ends, without waiting long for it. They are told the baseline
        trains; its numbers come with the next drafts.
        """
        if not self.draft_ahead:
            return False
        baseline = self._baseline_in_flight()
        if baseline is None or baseline.last_run_started is None or any(
                flight is baseline for flight, _ in self.pending):
            return False
        return time.monotonic() - baseline.last_run_started >= self.state.budget_seconds / 2

    def _draft_concurrency(self) -> int:
        starting = sum(1 for _, request in self.pending if request.attempt == 0)
        idle = max(0, len(self.slots) - len(self.busy) - len(self.ready) - starting)
        return draft_concurrency(len(self.slots), idle, self.state.best.measured, self.propose_times,
                                 self.train_times)

    def _dispatch(self) -> None:
        """Onto each free slot: a queued training run (confirmations first), else the next ready draft."""
        for slot in self.slots:
            while slot.index not in self.busy and (self.pending or self.ready):
                if self.pending:
                    flight, request = self.pending.popleft()
                    self._start_training(slot, flight, request)
                elif not self.state.best.measured:
                    break  # drafted while the baseline trains: placed once it is decided
                else:
                    self._place(*self.ready.popleft())  # commits it and queues its first run, or not

    def _handle(self, kind: str, *payload) -> None:
        if kind == "call":
            number, call = payload
            self.journal.record_call(number, call)
            if number in self.drafts:
                self.drafts[number].calls += 1
        elif kind == "drafted":
            self._drafted(*payload)
        elif kind == "trained":
            self._trained(*payload)
        elif kind == "evaluated":
            self._evaluated(*payload)
        elif kind == "note":
            self.reporter.note(payload[0])

    # --- the baseline

    def _start_baseline(self) -> None:
        state = self.state
        number = self.journal.open_experiment(description=BASELINE_DESCRIPTION, commit_sha=state.best.commit)
        files = state.read_files(state.recipe.editable)
        self.journal.update(number, files_hash=editable_digest(state.recipe, files))
        flight = Flight(number, "baseline", BASELINE_DESCRIPTION, state.best, time.monotonic(), files=files,
                        commit=state.best.commit)
        self.flights[number] = flight
        # The first run and the noise runs are independent: side by side on the slots.
        for attempt in range(self.noise_runs + 1):
            kind = "first" if attempt == 0 else "noise"
            description = BASELINE_DESCRIPTION if attempt == 0 else (
                f"{BASELINE_DESCRIPTION} (noise run {attempt} of {self.noise_runs}, "
                f"seed {derive_seed(self.seed, number, attempt)})")
            self._queue(flight, attempt, kind, description)

    def _stop_noise_runs(self, flight: Flight) -> None:
        """The baseline's first run failed: its queued noise runs never start, its running ones are stopped
        (only noise runs that already scored may stand in for it)."""
        queued = [entry for entry in self.pending if entry[0] is flight]
        for entry in queued:
            self.pending.remove(entry)
        flight.running -= len(queued)
        for busy_flight, ticket in self.busy.values():
            if busy_flight is flight:
                ticket.cancel()

    def _noise_stands_in(self, flight: Flight) -> bool:
        """A first run that timed out while two noise runs (side by side on other slots) had scored: they are
        the baseline, and the run goes on. A crash never: the unmodified recipe is broken."""
        if flight.first.outcome != "timeout" or len(flight.metrics) < 2:
            return False
        self.reporter.note(f"the baseline's first run timed out ({flight.first.reason}); its "
                           f"{len(flight.metrics)} noise runs that scored stand in for it")
        return True

    def _baseline_done(self, flight: Flight) -> None:
        first = flight.first
        if first.outcome == "timeout" and flight.drafted_beside and self.proposer.local:
            # the tool's own proposal shared the machine with it: not the recipe's fault; once more, alone
            self._close(flight, first.outcome, first.reason, None, first)
            self.draft_ahead = False
            self.reporter.note(f"the baseline (experiment {flight.number}) timed out while the tool drafted a "
                               "proposal beside it with the model server on this machine; training it again with "
                               "no drafting ahead for the rest of this run")
            self._start_baseline()
            return
        if first.outcome is not None and not self._noise_stands_in(flight):
            self._close(flight, first.outcome, first.reason, None, first)
            log = first.evaluation.log_path if first.evaluation else first.result.log_path
            cause, figure = baseline_cause(first, self.state.budget_seconds)
            raise StopRun(f"the baseline (the unmodified recipe) failed with {first.outcome}"
                          f"{': ' + first.reason if first.reason else ''}{figure}; see {log}", baseline_failed=True,
                          cause=cause)
        for trained in flight.failed_noise:
            if trained.outcome == "interrupted":
                continue
            self.reporter.note(f"a noise run of the baseline failed ({trained.outcome}: {trained.reason}); "
                               f"see {trained.result.log_path}")
        self.journal.refine_noise(flight.metrics, restart=True)
        self._close(flight, "keep", None, mean(flight.metrics), first if first.outcome is None else None,
                    decision=DecisionRecord.of_baseline(flight.metrics, flight.seeds, self.state.noise.std))
        state = self.state
        if line := noise_warning(state.recipe.metric, state.best.metric, state.noise.std, self.briefing.keep_margin(),
                                 max(flight.busy_shares, default=None), BUSY_SHARE):
            self.reporter.note(line)

    # --- drafting

    def _in_flight(self) -> tuple[str, ...]:
        return in_flight_lines(self.flights.values(), [(draft, candidate) for draft, candidate, _ in self.ready])

    def _start_draft(self, number: int | None = None) -> None:
        """A draft against the current best, in a thread of its own; a new experiment row unless `number` is given."""
        state = self.state
        best = state.best
        parent_number = best.number
        if parent_number is None:  # drafted while the baseline trains: the baseline is its parent
            parent_number = self._baseline_in_flight().number
        if number is None:
            number = self.journal.open_experiment(parent_sha=best.commit, parent_number=parent_number)
        files = state.read_files(state.recipe.editable + state.recipe.fixed)
        draft = Draft(number, best.commit, parent_number, files, time.monotonic())
        self.drafts[number] = draft
        training = frozenset(editable_digest(state.recipe, flight.files) for flight in self.flights.values()
                             if flight.files)
        context = self.briefing.context(number, files, self._in_flight(), training)
        self.reporter.keep_margin(context.keep_margin)
        self.reporter.phase("proposing", number=number)
        self.reporter.drafting(sorted(self.drafts))

        baseline = self._baseline_in_flight()
        if baseline is not None:
            baseline.drafted_beside = True

        def record(call) -> None:  # a call of a stopped run too: the stop records it (_abandon)
            self.events.put(("call", number, call))

        def work() -> None:
            try:
                candidate = self.proposer.propose(
                    f"experiment {number}", context, record,
                    on_writing=lambda characters: self.reporter.llm_writing(characters, number),
                    note=lambda text: self.events.put(("note", text)), stop=draft.cancelled)
                self.events.put(("drafted", draft, candidate, None))
            except BaseException as exc:  # handed to the scheduler, which decides what it means
                self.events.put(("drafted", draft, None, exc))
            finally:
                draft.done.set()

        threading.Thread(target=work, daemon=True, name=f"draft-{number}").start()

    def _drafted(self, draft: Draft, candidate: Candidate | None, error: BaseException | None) -> None:
        if draft.cancelled.is_set() or self.drafts.get(draft.number) is not draft:
            return
        if error is not None and not isinstance(error, InvalidProposal):
            raise error  # the draft stays listed, so the stop records its experiment as interrupted
        del self.drafts[draft.number]
        self.reporter.drafting(sorted(self.drafts))
        seconds = time.monotonic() - draft.started
        self.propose_times.append(seconds)
        if isinstance(error, InvalidProposal):
            flight = Flight(draft.number, "candidate", "", Best(draft.parent, draft.parent_number), draft.started)
            self.flights[draft.number] = flight
            self._close(flight, "invalid", error.reason, None, None, description=error.description,
                        notes=error.notes or None, propose_seconds=seconds)
            return
        self.ready.append((draft, candidate, seconds))

    def _place(self, draft: Draft, candidate: Candidate, seconds: float) -> None:
        """A ready draft gets a slot: onto the best as it is now, committed and queued; else drafted again."""
        state = self.state
        files = draft.files
        if draft.parent != state.best.commit:  # the best moved on while this was drafted
            files = state.read_files(state.recipe.editable + state.recipe.fixed)
            try:
                changed = apply_blocks(files, candidate.blocks)
            except EditError as exc:
                self.reporter.note(f"experiment {draft.number}: the draft no longer applies on top of the new "
                                   f"best (experiment {state.best.number}: {str(exc).splitlines()[0]}); "
                                   "drafting it again")
                self._start_draft(draft.number)
                return
            candidate = Candidate(candidate.description, changed, candidate.blocks, candidate.notes)
        flight = Flight(draft.number, "candidate", "", state.best, draft.started, propose_seconds=seconds)
        self._commit(flight, candidate, files)

    def _commit(self, flight: Flight, candidate: Candidate, files: dict[str, str]) -> None:
        """Guard, commit on top of the flight's parent, and queue its first training."""
        state = self.state
        self.flights[flight.number] = flight
        flight.description, flight.candidate = candidate.description, candidate
        editable = {name: candidate.changed.get(name, files[name]) for name in state.recipe.editable}
        digest = editable_digest(state.recipe, editable)
        self.journal.update(flight.number, description=candidate.description, notes=candidate.notes or None,
                            files_hash=digest, propose_seconds=flight.propose_seconds, parent_sha=flight.parent.commit,
                            parent_number=flight.parent.number,
                            diff=unified_diff({n: files[n] for n in candidate.changed}, candidate.changed))
        reason = check_candidate(state.recipe, candidate.changed) or harness_tampering(files, candidate.changed)
        if reason is None:
            earlier = state.seen_hashes.get(digest)
            if earlier is None:
                earlier = next((other.number for other in self.flights.values() if other is not flight and
                                other.files and editable_digest(state.recipe, other.files) == digest), None)
            if earlier is not None:
                reason = f"duplicate of experiment {earlier}"
        if reason is not None:
            self._close(flight, "invalid", reason, None, None, files=editable)
            return
        flight.files = editable
        self.reporter.phase("committing", candidate.description, number=flight.number)
        flight.commit = self.journal.commit(flight.number, flight.parent.commit, candidate.changed,
                                            candidate.description)
        self._queue(flight, 0, "first", candidate.description)

    # --- training runs on slots

    def _queue(self, flight: Flight, attempt: int, kind: str, description: str, first: bool = False) -> None:
        request = TrainingRequest(number=flight.number, attempt=attempt, kind=kind,
                                  seed=derive_seed(self.seed, flight.number, attempt),
                                  commit=flight.commit, description=description)
        flight.running += 1
        if first:  # a confirmation run: an experiment already started goes before new ones
            self.pending.appendleft((flight, request))
        else:
            self.pending.append((flight, request))

    def _start_training(self, slot: Slot, flight: Flight, request: TrainingRequest) -> None:
        state, trainer = self.state, self.trainer
        ticket = trainer.start(request, slot)
        self.busy[slot.index] = (flight, ticket)
        flight.last_run_started = time.monotonic()
        self.reporter.phase("training", request.description, budget=state.budget_seconds,
                            grace=state.recipe.past_budget(state.budget_seconds), slot=slot.index, number=flight.number)

        def work() -> None:
            try:
                self.events.put(("trained", slot, trainer.run_training(ticket), None))
            except BaseException as exc:
                self.events.put(("trained", slot, None, exc))

        threading.Thread(target=work, daemon=True, name=f"slot-{slot.index}").start()

    def _trained(self, slot: Slot, result, error: BaseException | None) -> None:
        flight, ticket = self.busy[slot.index]
        if error is not None:
            raise error
        self.train_times.append(result.seconds)
        try:
            outcome, reason = self.trainer.finish_training(ticket, result)
        except LedgerTampered as exc:
            raise StopRun(str(exc)) from None
        if outcome is not None or ticket.cancelled:
            self._run_done(slot, self.trainer.finish(ticket, result, outcome, reason, None))
            return
        self.reporter.phase("evaluating", slot=slot.index, number=flight.number)
        trainer = self.trainer

        def work() -> None:
            try:
                self.events.put(("evaluated", slot, result, trainer.run_evaluation(ticket), None))
            except BaseException as exc:
                self.events.put(("evaluated", slot, result, None, exc))

        threading.Thread(target=work, daemon=True, name=f"slot-{slot.index}-evaluation").start()

    def _evaluated(self, slot: Slot, result, evaluation, error: BaseException | None) -> None:
        flight, ticket = self.busy[slot.index]
        if error is not None:
            raise error
        self._run_done(slot, self.trainer.finish(ticket, result, None, None, evaluation))

    def _run_done(self, slot: Slot, trained: Trained) -> None:
        flight, ticket = self.busy.pop(slot.index)
        self.invalid_drafts = 0
        flight.running -= 1
        attempt = ticket.request.attempt
        if attempt == 0:
            flight.first = trained
        if flight.kind == "baseline":
            share = busy_share(trained.result.contention_seconds, trained.result.seconds)
            flight.busy_shares += [] if share is None else [share]
            if trained.outcome is None:
                flight.metrics.append(trained.metric)
                flight.seeds.append(ticket.request.seed)
            elif attempt > 0:
                flight.failed_noise.append(trained)
            else:
                self._stop_noise_runs(flight)  # no noise run trains after a failed first training
            if flight.running == 0:
                self._baseline_done(flight)
            return
        if trained.outcome is not None:
            if attempt == 0:
                self._close(flight, trained.outcome, trained.reason, None, trained)
            else:
                failed = "invalid" if trained.outcome == "invalid" else "discard"
                self._close(flight, failed, f"confirmation run {attempt} (seed {ticket.request.seed}): "
                                            f"{trained.outcome}: {trained.reason}", mean(flight.metrics), flight.first,
                            decision=failed_confirmation(flight.metrics, flight.seeds, flight.parent.run_metrics(),
                                                         self.state.noise.std))
            return
        flight.metrics.append(trained.metric)
        flight.seeds.append(ticket.request.seed)
        self._decide(flight)

    # --- deciding

    def _decide(self, flight: Flight) -> None:
        """The keep rule on the flight's runs so far, against the best it was drafted from; then act on it."""
        state = self.state
        self.reporter.phase("deciding", number=flight.number)
        parent_is_best = flight.parent.commit == state.best.commit
        against = state.best.run_metrics() if parent_is_best else flight.parent.run_metrics()
        judgement = judge(Evidence(flight.metrics, flight.seeds, against, parent_is_best, state.recipe.direction,
                                   state.noise, state.noise_groups), self.rule, state.recipe.metric)
        if judgement.verdict == "confirm":
            attempt = len(flight.metrics)
            seed = derive_seed(self.seed, flight.number, attempt)
            self._queue(flight, attempt, "confirm", f"{flight.description} (confirmation run {attempt} of at most "
                                                     f"{self.confirm_runs}, seed {seed})", first=True)
            return
        if judgement.refines_noise:
            self.journal.refine_noise(flight.metrics)
        if judgement.verdict == "combine":
            self._combine(flight, judgement.record)
            return
        self._close(flight, judgement.verdict, judgement.reason, judgement.metric, flight.first,
                    decision=judgement.record)

    def _combine(self, flight: Flight, record: DecisionRecord) -> None:
        """It beat its own parent, but the best moved on meanwhile: its change on top of the new best, as a new experiment."""
        state = self.state
        best = state.best
        files = state.read_files(state.recipe.editable + state.recipe.fixed)
        try:
            changed = apply_blocks(files, flight.candidate.blocks)
        except EditError:
            changed = None
        beat = f"beat its parent (experiment {flight.parent.number}), but the best moved on to experiment " \
               f"{best.number}"
        if not changed:
            self._close(flight, "discard", f"{beat}, and it does not apply on top of that",
                        mean(flight.metrics), flight.first, decision=record)
            return
        limit = self._limit(asks_agent=False)  # it stays counted as in flight: its place passes to the combination
        if limit:
            self._close(flight, "discard", f"{beat}; no combination with it ({limit})", mean(flight.metrics),
                        flight.first, decision=record)
            return
        number = self.journal.open_experiment(parent_sha=best.commit, parent_number=best.number)
        self._close(flight, "discard", f"{beat}: combined with it as experiment {number}",
                    mean(flight.metrics), flight.first, decision=record)
        combined = Flight(number, "candidate", "", best, time.monotonic())
        self._commit(combined, Candidate(f"{flight.description} (on top of experiment {best.number})", changed,
                                         flight.candidate.blocks), files)

    def _close(self, flight: Flight, outcome: str, reason: str | None, metric: float | None, trained: Trained | None,
               files: dict[str, str] | None = None, **fields) -> None:
        self.flights.pop(flight.number, None)
        if trained is None and outcome == "invalid":
            self.invalid_drafts += 1
        self.journal.close(flight.number, outcome, reason, metric, trained=trained, commit=flight.commit,
                           files=files or flight.files, started=flight.started, **fields)
        self.limits.clock.record()

    # --- stopping

    def _abandon(self, error: BaseException) -> None:
        """Ctrl-C or a stop: cancel every training, give up every draft's call (recorded, with the time it
        proposed), record each open experiment as interrupted."""
        for draft in self.drafts.values():
            draft.cancelled.set()
        for _, ticket in self.busy.values():
            ticket.cancel()
        self._settle_drafts()  # while the trainings' processes end
        deadline = time.monotonic() + 30
        while self.busy and time.monotonic() < deadline:  # their processes end within the kill wait
            try:
                kind, slot, *rest = self.events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            if kind in ("trained", "evaluated") and slot.index in self.busy:
                _, ticket = self.busy.pop(slot.index)
                self.trainer.interrupted(ticket)
        for _, ticket in self.busy.values():
            self.trainer.interrupted(ticket)
        reason = ("stopped by the person (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else
                  str(error) if isinstance(error, StopRun) else f"tool error: {type(error).__name__}: {error}")
        now = time.monotonic()
        proposed = {draft.number: now - draft.started for draft in self.drafts.values()}
        proposed.update({draft.number: seconds for draft, _, seconds in self.ready})
        for number in list(self.flights) + list(self.drafts) + [draft.number for draft, _, _ in self.ready]:
            self.journal.interrupt(number, reason, propose_seconds=proposed.get(number))
        self.journal.rewind()

    def _settle_drafts(self, seconds: float = 5.0) -> None:
        """Wait (a little) for the drafts' threads to give up their calls, and record the calls they hand back."""
        deadline = time.monotonic() + seconds
        held = []

        def take(event) -> None:
            if event[0] == "call":
                self.journal.record_call(*event[1:])
            elif event[0] in ("trained", "evaluated"):
                held.append(event)

        while any(not draft.done.is_set() for draft in self.drafts.values()) and time.monotonic() < deadline:
            try:
                take(self.events.get(timeout=POLL_SECONDS))
            except queue.Empty:
                continue
        while True:  # the calls that came with the last answers
            try:
                take(self.events.get_nowait())
            except queue.Empty:
                break
        for event in held:  # the trainings' ends, for the stop's own wait
            self.events.put(event)
