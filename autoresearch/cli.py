"""The command line: parse options, call the domain modules, render. Nothing else lives here.

Errors a person can fix become one line on stderr and exit code 1; Ctrl-C exits 130 with the
command that resumes the run; anything unexpected keeps its traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from autoresearch.console import OUTCOME_STYLES, format_duration, format_metric, make_reporter
from autoresearch.errors import UserError
from autoresearch.ledger import Ledger
from autoresearch.recipe import builtin_recipes
from autoresearch.review import experiment_records, pick_tag, run_summary
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
            stdout.print(f"{recipe.name:<10} {recipe.description}", highlight=False)


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
        seed: int = typer.Option(0, "--seed", help="Seed handed to training (AUTORESEARCH_SEED) and to the mutate agent."),
        resume: Optional[str] = typer.Option(None, "--resume", help="Go on with the run of this tag."),
        max_agent_failures: int = typer.Option(5, "--max-agent-failures", help="Stop after this many failed LLM calls in a row.")):
    """Run experiments on branch autoresearch/<tag>, in its own worktree under runs/<tag>/."""
    from autoresearch.agents import LLMAgent, MutateAgent
    from autoresearch.loop import ResearchLoop, RunOptions, StopRun

    with user_errors():
        if budget is not None and budget <= 0:
            raise UserError("--budget must be positive")
        if agent not in ("llm", "mutate"):
            raise UserError(f"--agent must be llm or mutate, not {agent!r}")
        workspace = Workspace.find()
        chosen = MutateAgent(seed=seed) if agent == "mutate" else LLMAgent(model=model, base_url=base_url)
        options = RunOptions(recipe=recipe, tag=tag, budget_seconds=budget, max_experiments=max_experiments,
                             hours=hours, min_delta=min_delta, seed=seed, max_agent_failures=max_agent_failures)
        reporter = make_reporter(stderr)
        loop = ResearchLoop(workspace, chosen, reporter)
        try:
            summary = loop.resume(resume, options) if resume else loop.start(options)
        except KeyboardInterrupt:
            reporter.close()
            stderr.print(f"interrupted; the branch is at the best commit. Resume with: "
                         f"autoresearch run --resume {loop.tag or tag or 'TAG'}", highlight=False)
            raise typer.Exit(130) from None
        except StopRun as exc:
            reporter.close()
            raise UserError(str(exc)) from None
        reporter.close()
    gain = summary.best_metric - summary.baseline_metric if summary.best_metric is not None else None
    stderr.print(f"run {summary.tag} done ({summary.stop_reason}): {summary.experiments} experiments, "
                 f"{summary.kept} kept, best {format_metric(summary.best_metric)}"
                 + (f" ({gain:+.4g} against the baseline)" if gain is not None else "")
                 + f". See: autoresearch log --tag {summary.tag}", highlight=False)


@app.command()
def log(tag: Optional[str] = typer.Option(None, "--tag", help="Run to show (default: the latest)."),
        as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON.")):
    """Every experiment of a run: outcome, metric, delta, duration, description."""
    with user_errors():
        ledger = Ledger(Workspace.find().ledger_path)
        tag = pick_tag(ledger, tag)
        records = experiment_records(ledger, tag)
        summary = run_summary(ledger, tag, records)
    if as_json:
        print(json.dumps(records, indent=2))
        return
    table = Table(title=f"run {tag} · {summary['recipe']} · {summary['metric']} ({summary['direction']} is better)")
    for column, justify in (("#", "right"), ("commit", "left"), ("outcome", "left"), (summary["metric"], "right"),
                            ("delta", "right"), ("time", "right"), ("description", "left")):
        table.add_column(column, justify=justify)
    for record in records:
        outcome = record["outcome"] + (f": {record['reason']}" if record["reason"] else "")
        table.add_row(str(record["number"]), (record["commit"] or "")[:7],
                      Text(outcome, style=OUTCOME_STYLES.get(record["outcome"], "")),
                      format_metric(record["metric"]),
                      f"{record['delta']:+.4g}" if record["delta"] is not None else "",
                      format_duration(record["duration_seconds"]), record["description"] or "")
    stdout.print(table)
    gain = f"{summary['gain']:+.4g}" if summary["gain"] is not None else "-"
    stdout.print(f"{summary['experiments']} experiments, {summary['kept']} kept, {summary['crashes']} crashed, "
                 f"{summary['invalid']} invalid; best {summary['metric']} {format_metric(summary['best_metric'])}, "
                 f"gain over baseline {gain}", highlight=False)
