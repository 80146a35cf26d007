"""The command line: parse options, call the domain modules, render. Nothing else lives here.

Errors a person can fix become one line on stderr and exit code 1; Ctrl-C exits 130 with the
command that resumes the run; anything unexpected keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from autoresearch.console import format_metric, make_reporter, plural
from autoresearch.errors import UserError
from autoresearch.interrupts import two_stage_interrupts
from autoresearch.ledger import Ledger
from autoresearch.noise import DEFAULT_CONFIRM_RUNS, DEFAULT_NOISE_MULTIPLE, DEFAULT_NOISE_RUNS
from autoresearch.pricing import load_price_table
from autoresearch.prompts import PROMPT_TOKEN_BUDGET
from autoresearch.recipe import builtin_recipes
from autoresearch.review import (experiment_detail, experiment_records, pick_tag, row_json, rows_json,
                                 rows_tsv, run_details, run_summaries, run_summary)
from autoresearch.views import experiment_view, log_lines, painter, runs_lines
from autoresearch.workspace import Workspace, init_workspace

app = typer.Typer(help="Overnight ML research on one GPU box: an agent proposes, the tool trains, keeps or reverts.",
                  no_args_is_help=True, add_completion=False)
stdout = Console()
stderr = Console(stderr=True)


@contextlib.contextmanager
def user_errors():
    """UserError -> one line on stderr and exit 1."""
    try:
        yield
    except UserError as exc:
        stderr.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def open_run(tag: str | None) -> tuple[Workspace, Ledger, str]:
    """The workspace around the current folder, its ledger, and the asked-for run (or the latest)."""
    workspace = Workspace.find()
    ledger = Ledger(workspace.ledger_path)
    return workspace, ledger, pick_tag(ledger, tag)


@app.command()
def init(directory: Path = typer.Argument(..., help="Folder to make a workspace (created if needed)."),
         recipe: str = typer.Option("tiny", "--recipe", help="Built-in recipe to copy (see `autoresearch recipes`).")):
    """Make DIRECTORY a workspace: a git repository with program.md and a recipe."""
    with user_errors():
        target = init_workspace(directory, recipe)
    stderr.print(f"workspace ready: {target} and {directory / 'program.md'}; next: "
                 f"cd {directory} && autoresearch run --agent mutate --budget 30 --max-experiments 5", highlight=False)


@app.command()
def recipes():
    """List the built-in recipes."""
    with user_errors():
        for recipe in builtin_recipes():
            stdout.print(f"{recipe.name:<10} {recipe.description}", highlight=False, soft_wrap=True)


@app.command()
def run(recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe folder (default: the only one)."),
        tag: Optional[str] = typer.Option(None, "--tag", help="Run name (default: from the date, made unique)."),
        agent: str = typer.Option("llm", "--agent", help="llm (an OpenAI-compatible endpoint) or mutate (offline)."),
        model: str = typer.Option(os.environ.get("AUTORESEARCH_MODEL", "gpt-5-mini"), "--model",
                                  help="Model name for the llm agent (env AUTORESEARCH_MODEL)."),
        base_url: Optional[str] = typer.Option(None, "--base-url", help="Endpoint URL (else OPENAI_BASE_URL)."),
        budget: Optional[float] = typer.Option(None, "--budget", help="Training seconds per experiment (default: the recipe's)."),
        max_experiments: Optional[int] = typer.Option(None, "--max-experiments", help="Stop after N experiments, the baseline included."),
        hours: Optional[float] = typer.Option(None, "--hours", help="Start no new experiment after H hours."),
        min_delta: float = typer.Option(0.0, "--min-delta", help="Keep only gains larger than this."),
        noise_runs: int = typer.Option(DEFAULT_NOISE_RUNS, "--noise-runs", help="Train the unmodified recipe N more "
                                       "times with other seeds to measure the noise floor (0: off; docs/noise.md)."),
        noise_multiple: float = typer.Option(DEFAULT_NOISE_MULTIPLE, "--noise-multiple", help="Keep only gains larger "
                                             "than this many standard errors of the noise."),
        confirm_runs: int = typer.Option(DEFAULT_CONFIRM_RUNS, "--confirm-runs", help="At most N more runs with new "
                                         "seeds for a candidate whose gain is not clearly past the noise."),
        seed: int = typer.Option(0, "--seed", help="Seed handed to training (AUTORESEARCH_SEED) and to the mutate agent."),
        resume: Optional[str] = typer.Option(None, "--resume", help="Go on with the run of this tag."),
        max_agent_failures: int = typer.Option(5, "--max-agent-failures", help="Stop after this many failed LLM calls in a row."),
        llm_timeout: float = typer.Option(600.0, "--llm-timeout", help="Seconds one LLM request may take, from "
                                          "connecting to the last byte of the answer, before it counts as a failed call."),
        prompt_tokens: int = typer.Option(PROMPT_TOKEN_BUDGET, "--prompt-tokens", help="The most tokens (estimated "
                                          "at four characters each) of the prompt for one proposal; lower it for a "
                                          "model with a small context."),
        agent_backoff: float = typer.Option(5.0, "--agent-backoff", help="Seconds to wait after a failed LLM call; "
                                            "doubles with each failure in a row, up to 5 minutes."),
        max_cost: Optional[float] = typer.Option(None, "--max-cost", help="Stop before an experiment that would take "
                                                 "the run's LLM spending past this many dollars (prices: autoresearch.yaml)."),
        max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Stop before an experiment that would take "
                                                 "the run's LLM tokens (prompt and completion) past this.")):
    """Run experiments on branch autoresearch/<tag>, in its own worktree under runs/<tag>/."""
    from autoresearch.agents import LLMAgent, MutateAgent
    from autoresearch.loop import ResearchLoop, RunOptions, StopRun

    with user_errors():
        if budget is not None and budget <= 0:
            raise UserError("--budget must be positive")
        if agent not in ("llm", "mutate"):
            raise UserError(f"--agent must be llm or mutate, not {agent!r}")
        if noise_runs < 0 or confirm_runs < 0 or noise_multiple < 0:
            raise UserError("--noise-runs, --confirm-runs and --noise-multiple cannot be negative")
        workspace = Workspace.find()
        if llm_timeout <= 0 or agent_backoff < 0:
            raise UserError("--llm-timeout must be positive and --agent-backoff cannot be negative")
        if prompt_tokens <= 0:
            raise UserError("--prompt-tokens must be positive")
        chosen = (MutateAgent(seed=seed) if agent == "mutate"
                  else LLMAgent(model=model, base_url=base_url, request_timeout=llm_timeout))
        options = RunOptions(recipe=recipe, tag=tag, budget_seconds=budget, max_experiments=max_experiments,
                             hours=hours, min_delta=min_delta, seed=seed, max_agent_failures=max_agent_failures,
                             noise_runs=noise_runs, noise_multiple=noise_multiple, confirm_runs=confirm_runs,
                             agent_backoff_seconds=agent_backoff, max_cost=max_cost, max_tokens=max_tokens,
                             prompt_tokens=prompt_tokens)
        reporter = make_reporter(stderr)
        loop = ResearchLoop(workspace, chosen, reporter)

        def second_interrupt() -> str:
            return (f"interrupted again: stopped at once. `autoresearch run --resume {loop.tag or tag or 'TAG'}` "
                    "puts the run straight and goes on")

        try:
            with two_stage_interrupts(second_interrupt):
                summary = loop.resume(resume, options) if resume else loop.start(options)
        except KeyboardInterrupt:
            reporter.close()
            stderr.print(f"interrupted; the branch is at the best commit. Resume with: "
                         f"autoresearch run --resume {loop.tag or tag or 'TAG'}", highlight=False)
            raise typer.Exit(130) from None
        except StopRun as exc:
            reporter.close()
            raise UserError(f"{exc}; after fixing it, go on with: autoresearch run --resume {loop.tag}"
                            + remedy_flag(exc.remedy)) from None
        reporter.close()
    gain = summary.best_metric - summary.baseline_metric if summary.best_metric is not None else None
    stderr.print(f"run {summary.tag} done ({summary.stop_reason}): {plural(summary.experiments, 'experiment')}, "
                 f"{summary.kept} kept, best {format_metric(summary.best_metric)}"
                 + (f" ({gain:+.4g} against the baseline)" if gain is not None else "")
                 + f". See: autoresearch log --tag {summary.tag}", highlight=False)


@app.command()
def log(tag: Optional[str] = typer.Option(None, "--tag", help="Run to show (default: the latest)."),
        outcome: Optional[str] = typer.Option(None, "--outcome", help="Only keep, discard, crash, timeout or invalid."),
        last: Optional[int] = typer.Option(None, "--last", help="Only the last N experiments (after --outcome)."),
        as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON (the shape of every JSON output)."),
        as_tsv: bool = typer.Option(False, "--tsv", help="Print the same rows as tab-separated values.")):
    """Every experiment of a run: outcome, metric, delta, time, tokens, cost, description."""
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
        stderr.print("no runs yet in this workspace; start one with `autoresearch run`", highlight=False)
    else:
        _emit("\n".join(runs_lines(summaries, painter(stdout))))


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
    stdout.print(experiment_view(detail, summary, with_prompt=prompt), highlight=False)


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
           as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")):
    """Do the run's gains hold? Re-train its baseline and best commits on new seeds, on validation and test."""
    from autoresearch.verify import format_interval, verify_run

    with user_errors():
        if budget is not None and budget <= 0:
            raise UserError("--budget must be positive")
        workspace, ledger, tag = open_run(tag)
        try:
            result = verify_run(workspace, ledger, tag, seeds=seeds, budget_seconds=budget,
                                on_progress=lambda text: stderr.print(f"verify {tag}: {text}", highlight=False))
        except KeyboardInterrupt:
            stderr.print("verify interrupted; nothing was recorded", highlight=False)
            raise typer.Exit(130) from None
    if as_json:
        _emit(row_json(ledger.verifications(tag)[-1]))
        return
    lines = [f"run {tag}: baseline {result.baseline_commit[:7]} vs best {result.best_commit[:7]}, "
             f"{plural(len(result.seeds), 'new seed')} each ({result.direction} is better)"]
    for split, name, interval in (("validation", result.metric, result.val), ("test", result.test_metric, result.test)):
        lines.append(f"  {split:<10} {name}: " + (format_interval(interval) if interval else "no interval"))
    failed = [r for r in result.runs if r["outcome"] != "ok"]
    if failed:
        lines.append(f"  {len(failed)} of {plural(len(result.runs), 'training')} failed; first: "
                     f"{failed[0]['role']} seed "
                     f"{failed[0]['seed']}: {failed[0]['reason']} ({failed[0]['log_path']})")
    lines.append(f"verdict: {result.verdict}: {result.message}")
    _emit("\n".join(lines))


def remedy_flag(remedy) -> str:
    """The flag (and value) that mends a stopped run, to add to its resume command: ` --prompt-tokens 1500`."""
    if remedy is None:
        return ""
    return f" --{remedy.setting.replace('_', '-')} {remedy.value or remedy.setting.upper()}"


def _emit(text: str) -> None:
    """Data to stdout; a reader that went away (`| head`) is not an error."""
    try:
        stdout.file.write(text + "\n" if text else "")
        stdout.file.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
