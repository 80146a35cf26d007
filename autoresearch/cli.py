"""The command line: parse options, call the domain modules, render. Nothing else lives here.

Errors a person can fix become one line on stderr and exit code 1; Ctrl-C exits 130 with the
command that resumes the run; anything unexpected keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from autoresearch import __version__
from autoresearch.agents import DEFAULT_TEMPERATURE, RESTART_TEMPERATURE
from autoresearch.console import format_metric, make_reporter, plural, stop_writing_to
from autoresearch.errors import UserError
from autoresearch.gains import gain_or_none
from autoresearch.interrupts import two_stage_interrupts
from autoresearch.ledger import Ledger
from autoresearch.keep import DEFAULT_CONFIRM_RUNS, DEFAULT_NOISE_MULTIPLE, DEFAULT_NOISE_RUNS
from autoresearch.errors import WorkspaceBusy
from autoresearch.settings import DEFAULT_MODEL, RAY_EXTRA_HINT, check_gpus, check_options
from autoresearch.hardware import nvidia_gpu_ids
from autoresearch.errors import InvalidSetting
from autoresearch.pricing import load_price_table
from autoresearch.prompts import DEFAULT_REPLY_TOKENS, PROMPT_TOKEN_BUDGET
from autoresearch.quoting import printable, printable_record
from autoresearch.recipe import builtin_recipes
from autoresearch.outcomes import OUTCOMES
from autoresearch.review import (experiment_detail, experiment_records, pick_tag, row_json, rows_json,
                                 rows_tsv, run_details, run_summaries, run_summary)
from autoresearch.views import RULE_WIDTH, experiment_lines, log_lines, painter, runs_lines
from autoresearch.workspace import RECIPES_DIR, Workspace, check_tag, init_workspace

app = typer.Typer(no_args_is_help=True, add_completion=False)
stdout = Console()
stderr = Console(stderr=True)


@contextlib.contextmanager
def user_errors():
    """UserError -> one line on stderr and exit 1; a setting's error is worded with its flag."""
    try:
        yield
    except InvalidSetting as exc:
        _error(f"{flag_of(exc.setting)} {exc.problem}")
    except WorkspaceBusy as exc:
        _error(f"{exc}, or pass --allow-concurrent to train both at once")
    except UserError as exc:
        _error(str(exc))


def say(text: str) -> None:
    """One line for the person on stderr: no markup read into it, never wrapped (a nohup log keeps it whole)."""
    try:
        stderr.print(printable(text), markup=False, highlight=False, soft_wrap=True)
    except OSError:  # its reader went away (`2>&1 | head`, a dead tee): the line goes nowhere, the work goes on
        stop_writing_to(sys.stderr)


def _error(text: str) -> None:
    stderr.print(f"[red]error:[/red] {escape(printable(text))}", highlight=False, soft_wrap=True)
    raise typer.Exit(1) from None


def show_version(wanted: bool) -> None:
    if wanted:
        _emit(f"autoresearch {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                      help="Print the version and exit.")):
    """Overnight ML research on one GPU box: an agent proposes, the tool trains, keeps or reverts."""


def open_run(tag: str | None) -> tuple[Workspace, Ledger, str]:
    """The workspace around the current folder, its ledger, and the asked-for run (or the latest)."""
    if tag is not None:
        check_tag(tag)
    workspace = Workspace.find()
    ledger = Ledger(workspace.ledger_path)
    return workspace, ledger, pick_tag(ledger, tag)


@app.command()
def init(directory: Path = typer.Argument(..., help="Folder to make a workspace (created if needed)."),
         recipe: str = typer.Option("tiny", "--recipe", help="Built-in recipe to copy (see `autoresearch recipes`).")):
    """Make DIRECTORY a workspace (program.md and a recipe, committed) in a new git repository or the one around it."""
    with user_errors():
        made = init_workspace(directory, recipe)
    go_there = "" if made.recipe.parent.parent == Path.cwd().resolve() else f"cd {shlex.quote(str(directory))} && "
    what = (f"{RECIPES_DIR}/{recipe} committed; your program.md kept as it was (init commits only what it wrote)"
            if made.program_kept else f"{RECIPES_DIR}/{recipe} and program.md, committed")
    say(f"workspace ready in {directory}: {what}; next: "
        f"{go_there}autoresearch run --agent mutate --budget 30 --max-experiments 5")


@app.command()
def recipes():
    """List the built-in recipes."""
    with user_errors():
        for recipe in builtin_recipes():
            _emit(f"{recipe.name:<10} {recipe.description}")


# The flag of each setting whose name differs from it (settings.RunOptions); the rest are --the-name.
SETTING_FLAGS = {"budget_seconds": "--budget", "agent_backoff_seconds": "--agent-backoff"}


def flag_of(setting: str) -> str:
    return SETTING_FLAGS.get(setting, "--" + setting.replace("_", "-"))


@app.command()
def run(recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe folder (default: the only one)."),
        tag: Optional[str] = typer.Option(None, "--tag", help="Run name (default: from the date, made unique)."),
        agent: Optional[str] = typer.Option(None, "--agent", help="llm (an OpenAI-compatible endpoint; the default) "
                                            "or mutate (offline)."),
        model: Optional[str] = typer.Option(None, "--model", help=f"Model name for the llm agent (default "
                                            f"AUTORESEARCH_MODEL, else {DEFAULT_MODEL})."),
        base_url: Optional[str] = typer.Option(None, "--base-url", help="Endpoint URL (default OPENAI_BASE_URL, "
                                               "else OpenAI's)."),
        budget: Optional[float] = typer.Option(None, "--budget", help="Training seconds per experiment (default: the "
                                               "recipe's)."),
        max_experiments: Optional[int] = typer.Option(None, "--max-experiments", help="Stop after N experiments, the "
                                                      "baseline included; on --resume N counts the run's experiments "
                                                      "so far (interrupted ones not)."),
        hours: Optional[float] = typer.Option(None, "--hours", help="Start no new experiment after H hours; on "
                                              "--resume the hours the run has been going count (not the time it "
                                              "was stopped)."),
        min_delta: Optional[float] = typer.Option(None, "--min-delta", help="Keep only gains larger than this "
                                                  "(default 0)."),
        noise_runs: Optional[int] = typer.Option(None, "--noise-runs", help=f"Train the unmodified recipe N more "
                                                 f"times with other seeds to measure the noise floor (default "
                                                 f"{DEFAULT_NOISE_RUNS}; 0: off; docs/noise.md)."),
        noise_multiple: Optional[float] = typer.Option(None, "--noise-multiple", help=f"Keep only gains larger than "
                                                       f"this many standard errors of the noise (default "
                                                       f"{DEFAULT_NOISE_MULTIPLE:g})."),
        confirm_runs: Optional[int] = typer.Option(None, "--confirm-runs", help=f"At most N more runs with new seeds "
                                                   f"for a candidate whose gain is not clearly past the noise "
                                                   f"(default {DEFAULT_CONFIRM_RUNS})."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed handed to training (AUTORESEARCH_SEED) and to "
                                           "the mutate agent (default 0)."),
        resume: Optional[str] = typer.Option(None, "--resume", help="Go on with the run of this tag, with its own "
                                             "settings; a flag given with it overrides that one setting."),
        max_agent_failures: Optional[int] = typer.Option(None, "--max-agent-failures", help="Stop after this many "
                                                         "failed LLM calls in a row (default 5)."),
        llm_timeout: Optional[float] = typer.Option(None, "--llm-timeout", help="Seconds one LLM request may take "
                                                    "before it counts as a failed call (default 600)."),
        agent_backoff: Optional[float] = typer.Option(None, "--agent-backoff", help="Seconds to wait after a failed "
                                                      "LLM call; doubles with each failure in a row, up to 5 minutes "
                                                      "(default 5)."),
        prompt_tokens: Optional[int] = typer.Option(None, "--prompt-tokens", help=f"The most tokens (estimated) of "
                                                    f"the conversation for one proposal, repair turns included "
                                                    f"(default {PROMPT_TOKEN_BUDGET:,}); less where the model's "
                                                    f"context must also hold the reply."),
        reply_tokens: Optional[int] = typer.Option(None, "--reply-tokens", help=f"The completion limit sent with "
                                                   f"each proposal (default {DEFAULT_REPLY_TOKENS:,}): a local "
                                                   f"server without one writes until its context is full."),
        context_tokens: Optional[int] = typer.Option(None, "--context-tokens", help="The model's context window in "
                                                     "tokens (default: what the server reports: vLLM, llama.cpp); "
                                                     "the prompt budget leaves the completion limit's room in it."),
        edit_format: Optional[str] = typer.Option(None, "--edit-format", help="How the llm agent writes its change: "
                                                  "auto (the default: by the model's size, which the run's first "
                                                  "lines say), search-replace (blocks; large models), whole (the "
                                                  "whole file back; mid-size models) or knobs (new values for the "
                                                  "recipe's tunable constants; the smallest models)."),
        temperature: Optional[float] = typer.Option(None, "--temperature", help="The sampling temperature sent with "
                                                    f"every LLM call (default {DEFAULT_TEMPERATURE:g}: edits copy a "
                                                    "file's lines); a proposal that starts again after the same "
                                                    f"failure twice is sampled at {RESTART_TEMPERATURE:g} where this "
                                                    "is lower."
                                                   ),
        max_cost: Optional[float] = typer.Option(None, "--max-cost", help="Stop before an experiment that would take "
                                                 "the run's LLM spending past this many dollars (prices: "
                                                 "autoresearch.yaml)."),
        max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Stop before an experiment that would "
                                                 "take the run's LLM tokens (prompt and completion) past this."),
        sandbox: Optional[str] = typer.Option(None, "--sandbox", help="auto (the default): train inside bubblewrap "
                                              "when a check at the start passes, else say what is missing and go "
                                              "on; on: refuse to start without it; off: no sandbox (docs/trust.md)."),
        slots: Optional[int] = typer.Option(None, "--slots", help="Trainings at once, each in its own sandbox "
                                            "(default 1, or on Ray what the cluster offers, which it caps; more "
                                            "than one need the sandbox)."),
        gpus: Optional[str] = typer.Option(None, "--gpus", help="GPUs to train on, one training on each at once, "
                                           "e.g. 0,1,2,3 (each training sees only its own: CUDA_VISIBLE_DEVICES); "
                                           "instead of --slots."),
        draft_ahead: Optional[bool] = typer.Option(None, "--draft-ahead/--no-draft-ahead", help="Draft the next "
                                                   "proposals while experiments train (default on, but off where "
                                                   "a model server on this machine would share the training's CPU; "
                                                   "needs the sandbox, else the loop is serial)."),
        executor: Optional[str] = typer.Option(None, "--executor", help="local (the default): train on this "
                                               "machine; ray: every training and evaluation is a job on a Ray "
                                               f"cluster, one GPU each ({escape(RAY_EXTRA_HINT)}; "
                                               "docs/cluster.md)."),
        ray_address: Optional[str] = typer.Option(None, "--ray-address", help="The Ray cluster to join with "
                                                  "--executor ray (default RAY_ADDRESS, else auto: the one started "
                                                  "on this machine)."),
        allow_concurrent: bool = typer.Option(False, "--allow-concurrent", help="Train although another run trains "
                                              "in this workspace (they will share the machine).")):
    """Run experiments on branch autoresearch/<tag>, in its own worktree under runs/<tag>/.

    With --resume TAG every setting is the run's own, unless given again (it then overrides that one setting).
    """
    from autoresearch.agents import make_agent
    from autoresearch.repo import RUN_BRANCH_PREFIX
    from autoresearch.run.session import Session
    from autoresearch.errors import StopRun
    from autoresearch.settings import RunOptions, resumed_options

    given = {name: value for name, value in dict(
        agent=agent, model=model, base_url=base_url, budget_seconds=budget, max_experiments=max_experiments,
        hours=hours, min_delta=min_delta, noise_runs=noise_runs, noise_multiple=noise_multiple,
        confirm_runs=confirm_runs, seed=seed, max_agent_failures=max_agent_failures, llm_timeout=llm_timeout,
        agent_backoff_seconds=agent_backoff, max_cost=max_cost, max_tokens=max_tokens,
        prompt_tokens=prompt_tokens, reply_tokens=reply_tokens, context_tokens=context_tokens,
        edit_format=edit_format, temperature=temperature, sandbox=sandbox, slots=slots, gpus=gpus, draft_ahead=draft_ahead, executor=executor,
        ray_address=ray_address).items() if value is not None}
    with user_errors():
        for name in (tag, resume):
            if name is not None:
                check_tag(name)
        workspace = Workspace.find()
        if resume:
            if recipe is not None or tag is not None:
                raise UserError("--resume goes on with the run's own recipe and tag; drop --recipe and --tag")
            stored = Ledger(workspace.ledger_path).run(resume)
            if stored is None:
                raise UserError(f"no run tagged {resume!r} in {workspace.ledger_path}; `autoresearch runs` lists them")
            options = resumed_options(stored, given)
            for override in options.overrides:
                say(f"run {resume}: {flag_of(override.setting)} {override.after} overrides the run's "
                    f"{override.before}")
        else:
            # Where the person's shell points now is part of the run: a resume goes on with the same.
            given.setdefault("model", os.environ.get("AUTORESEARCH_MODEL") or DEFAULT_MODEL)
            if os.environ.get("OPENAI_BASE_URL"):
                given.setdefault("base_url", os.environ["OPENAI_BASE_URL"])
            options = RunOptions(recipe=recipe, tag=tag, **given)
        options.allow_concurrent = allow_concurrent
        check_options(options)
        if options.gpus is not None and options.executor == "local":
            check_gpus(options.gpus, nvidia_gpu_ids())
        chosen = make_agent(options)
        reporter = make_reporter(stderr)
        loop = Session(workspace, chosen, reporter)

        def resume_command() -> str:
            return f"autoresearch run --resume {shlex.quote(loop.tag or resume or tag or 'TAG')}"

        def second_interrupt() -> str:
            return f"interrupted again: stopped at once. `{resume_command()}` puts the run straight and goes on"

        try:
            with two_stage_interrupts(second_interrupt):
                summary = loop.resume(resume, options) if resume else loop.start(options)
        except KeyboardInterrupt:
            reporter.close()
            say(f"interrupted; the branch is at the best commit. Resume with: {resume_command()}")
            raise typer.Exit(130) from None
        except StopRun as exc:
            reporter.close()
            if exc.baseline_failed:
                raise UserError(f"{exc}; {baseline_advice(exc.cause, resume_command())}") from None
            raise UserError(f"{exc}; after fixing it, go on with: {resume_command()}{remedy_flag(exc.remedy)}") from None
        except BaseException:
            reporter.close()
            raise
        reporter.close()
    gain = gain_or_none(summary.best_metric, summary.baseline_metric, summary.direction)
    counted = (f" ({summary.counted} that count, {summary.experiments - summary.counted} interrupted)"
               if summary.counted != summary.experiments else "")
    say(f"run {summary.tag} done ({summary.stop_reason}): {plural(summary.experiments, 'experiment')}{counted}, "
        f"{plural(summary.kept_changes, 'change')} kept over the baseline, best {format_metric(summary.best_metric)}"
        + (f" (gain {gain:+.4g} over the baseline)" if gain is not None else "")
        + f". See: autoresearch log --tag {shlex.quote(summary.tag)}")
    if summary.kept_changes:
        branch = shlex.quote(RUN_BRANCH_PREFIX + summary.tag)
        say(f"take it home: the best is on branch {branch}; `git diff HEAD...{branch}` shows what it changed, "
            f"`git merge {branch}` (or `git cherry-pick HEAD..{branch}`) brings it onto your branch")


@app.command()
def log(tag: Optional[str] = typer.Option(None, "--tag", help="Run to show (default: the latest)."),
        outcome: Optional[str] = typer.Option(None, "--outcome", help="Only one outcome: "
                                              + ", ".join(OUTCOMES) + "."),
        last: Optional[int] = typer.Option(None, "--last", help="Only the last N experiments (after --outcome)."),
        as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON (the shape of every JSON output)."),
        as_tsv: bool = typer.Option(False, "--tsv", help="Print the same rows as tab-separated values.")):
    """Every experiment of a run: outcome, metric, gain over the best before it, time, tokens, cost, description."""
    with user_errors():
        if as_json and as_tsv:
            raise UserError("choose one of --json and --tsv")
        workspace, ledger, tag = open_run(tag)
        prices = load_price_table(workspace.root)
        records = experiment_records(ledger, tag, prices, nested=as_json or as_tsv, outcome=outcome, last=last)
        if as_json or as_tsv:
            _emit(rows_json(records) if as_json else rows_tsv(records))
            return
        everything = outcome is None and last is None  # else the totals come from the ledger's indexes
        summary = run_summary(ledger, tag, records if everything else None, prices, workspace.runs_dir)
    # what a training printed (a reason quoting its last line) is shown escaped, never interpreted (quoting.py)
    records, summary = printable_record(records), printable_record(summary)
    _emit("\n".join(log_lines(records, summary, painter(stdout), stdout.width if stdout.is_terminal else None)))


@app.command()
def runs(as_json: bool = typer.Option(False, "--json", help="Print the run summaries as JSON.")):
    """Every run in the workspace: start, duration, experiments, kept, crashes, best, gain, cost, status."""
    with user_errors():
        workspace = Workspace.find()
        summaries = run_summaries(Ledger(workspace.ledger_path), load_price_table(workspace.root), workspace.runs_dir)
    if as_json:
        _emit(rows_json(summaries))
    elif not summaries:
        say("no runs yet in this workspace; start one with `autoresearch run`")
    else:
        _emit("\n".join(runs_lines(printable_record(summaries), painter(stdout))))


@app.command()
def show(number: int = typer.Argument(..., help="Experiment number, as in `autoresearch log`."),
         tag: Optional[str] = typer.Option(None, "--tag", help="Run (default: the latest)."),
         prompt: bool = typer.Option(False, "--prompt", help="Also the exact prompt and reply of every LLM call."),
         as_json: bool = typer.Option(False, "--json", help="Print it as JSON (the log row plus the details).")):
    """One experiment whole: outcome and why, every number, timings, cost, its diff and its log tail."""
    with user_errors():
        workspace, ledger, tag = open_run(tag)
        prices = load_price_table(workspace.root)
        detail = experiment_detail(ledger, tag, number, prices, with_prompt=prompt, repo=workspace.repo)
        if as_json:
            _emit(row_json(detail))
            return
        summary = run_summary(ledger, tag, prices=prices, runs_dir=workspace.runs_dir)
    detail, summary = printable_record(detail), printable_record(summary)  # its log tail, reason...: escaped
    _emit("\n".join(experiment_lines(detail, summary, with_prompt=prompt, paint=painter(stdout),
                                      width=stdout.width if stdout.is_terminal else RULE_WIDTH)))


@app.command()
def plot(tag: Optional[str] = typer.Option(None, "--tag", help="Run (default: the latest)."),
         output: Optional[Path] = typer.Option(None, "-o", "--output", help="PNG file (default: runs/<tag>/progress.png).")):
    """A PNG of the run: every experiment's metric by outcome, the running best, the kept changes labelled."""
    from autoresearch.plot import write_plot

    with user_errors():
        workspace, ledger, tag = open_run(tag)
        records = experiment_records(ledger, tag, load_price_table(workspace.root))
        path = output or workspace.run_dir(tag) / "progress.png"
        try:
            write_plot(records, run_summary(ledger, tag, records, runs_dir=workspace.runs_dir), path)
        except OSError as exc:
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    _emit(str(path))


@app.command()
def report(tag: Optional[str] = typer.Option(None, "--tag", help="Run (default: the latest)."),
           output: Optional[Path] = typer.Option(None, "-o", "--output", help="HTML file (default: runs/<tag>/report.html).")):
    """One self-contained HTML page: summary, plot, the table of experiments, each one's diff and log tail."""
    from autoresearch.ledger import now_iso
    from autoresearch.plot import render_plot
    from autoresearch.report import write_report

    with user_errors():
        workspace, ledger, tag = open_run(tag)
        details = run_details(ledger, tag, load_price_table(workspace.root))
        summary = run_summary(ledger, tag, details, runs_dir=workspace.runs_dir)
        path = output or workspace.run_dir(tag) / "report.html"
        try:
            write_report(summary, details, render_plot(details, summary), path, generated_at=now_iso())
        except OSError as exc:
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    _emit(str(path))


@app.command()
def verify(tag: Optional[str] = typer.Option(None, "--tag", help="Run to verify (default: the latest)."),
           seeds: int = typer.Option(3, "--seeds", help="New seeds for each of the two commits (at least 2)."),
           budget: Optional[float] = typer.Option(None, "--budget", help="Training seconds (default: the run's)."),
           as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
           allow_concurrent: bool = typer.Option(False, "--allow-concurrent", help="Train although a run trains in "
                                                 "this workspace (they will share the machine).")):
    """Do the run's gains hold? Re-train its baseline and best commits on new seeds, on validation and test."""
    from autoresearch.verify import format_interval, verify_run

    with user_errors():
        if budget is not None and budget <= 0:
            raise UserError("--budget must be positive")
        workspace, ledger, tag = open_run(tag)
        try:
            result = verify_run(workspace, ledger, tag, seeds=seeds, budget_seconds=budget,
                                allow_concurrent=allow_concurrent,
                                on_progress=lambda text: say(f"verify {tag}: {text}"))
        except KeyboardInterrupt:
            say("verify interrupted; nothing was recorded")
            raise typer.Exit(130) from None
    if as_json:
        _emit(row_json(ledger.verifications(tag)[-1]))
        return
    lines = [f"run {tag}: baseline {result.baseline_commit[:7]} vs best {result.best_commit[:7]}, "
             f"{plural(len(result.seeds), 'new seed')} each ({result.direction} is better)"]
    for split, name, interval in (("validation", result.metric, result.val), ("test", result.test_metric, result.test)):
        lines.append(f"  {split:<10} {name}: " + (format_interval(interval) if interval else "no interval"))
    own = {r["role"].split()[-1]: r for r in result.runs if r["role"].startswith("own ") and r["outcome"] == "ok"}
    if own:
        lines.append(f"  the run's own models on the test split: " + ", ".join(
            f"{role} {result.test_metric} {format_metric(own[role]['test_metric'])}" for role in ("baseline", "best")
            if role in own))
    failed = [r for r in result.runs if r["outcome"] != "ok"]
    if failed:
        lines.append(f"  {len(failed)} of {plural(len(result.runs), 'training')} failed; first: "
                     f"{failed[0]['role']} seed "
                     f"{failed[0]['seed']}: {failed[0]['reason']} ({failed[0]['log_path']})")
    lines.append(f"verdict: {result.verdict}: {result.message}")
    _emit("\n".join(lines))


@app.command()
def rm(tag: str = typer.Argument(..., help="The run to remove, as `autoresearch runs` lists it."),
       yes: bool = typer.Option(False, "--yes", help="Do not ask (needed when stdin is not a terminal).")):
    """Remove a run whole: its worktree, branch autoresearch/<tag>, experiment refs, ledger rows and runs/<tag>."""
    from autoresearch.removal import find_remains, remove_run

    with user_errors():
        workspace = Workspace.find()
        ledger = Ledger(workspace.ledger_path) if workspace.ledger_path.exists() else None  # rm makes none
        remains = find_remains(workspace, ledger, tag)  # checks the tag (an old run's odd one too)
        if not yes:
            if not sys.stdin.isatty():
                raise UserError(f"stdin is not a terminal, so rm cannot ask: pass --yes to remove run {tag} "
                                f"(autoresearch rm {shlex.quote(tag)} --yes)")
            if not typer.confirm(f"remove run {tag}: {remains.describe()}?", default=False, err=True):
                raise UserError(f"run {tag} not removed")
        removed = remove_run(workspace, ledger, tag)
    say(f"removed run {tag}: {removed.describe()}")


def baseline_advice(cause: str | None, resume: str) -> str:
    """What to do after the unmodified recipe failed, by its cause (outcomes.baseline_cause)."""
    if cause == "busy":
        return (f"the machine was busy, not the recipe broken: stop the other work on it (or give the training "
                f"more time with --budget), then `{resume}` trains the baseline again")
    if cause == "budget":
        return (f"the budget is too small for the recipe's start-up, a training step and saving the model: "
                f"`{resume} --budget SECONDS` with more, or raise startup_seconds/export_seconds in recipe.yaml")
    return (f"fix the recipe and commit the fix, then `{resume}` trains the baseline again from the workspace's "
            "last commit")


def remedy_flag(remedy) -> str:
    """The flag (and value) that mends a stopped run, to add to its resume command: ` --prompt-tokens 1500`."""
    if remedy is None:
        return ""
    return f" {flag_of(remedy.setting)} {remedy.value or remedy.setting.upper()}"


def _emit(text: str) -> None:
    """Data to stdout; a reader that went away (`| head`) is not an error."""
    try:
        stdout.file.write(text + "\n" if text else "")
        stdout.file.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
