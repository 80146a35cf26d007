"""The console reporters (autoresearch.console): the live panel on a terminal, plain lines off one, progress values."""

from __future__ import annotations

import io
import time

from autoresearch.console import LiveReporter, PlainReporter, progress_values

CALL_COST = (1000 * 0.25 + 200 * 2.0) / 1e6  # gpt-5-mini's default price, per call


def console_for(stream):
    from rich.console import Console

    return Console(file=stream, force_terminal=True, width=140, color_system=None)


def render(live: LiveReporter) -> str:
    from rich.console import Console

    out = Console(file=io.StringIO(), width=140, color_system=None)
    out.print(live._render())
    return out.file.getvalue()


def test_progress_values_from_the_common_shapes():
    assert progress_values("step    5 |   1.0s | loss 3.2100 | lr 1.00e-03 | 12.3k bytes/s") == {
        "step": "5", "loss": "3.2100", "lr": "1.00e-03"}
    assert progress_values("epoch 3/10 loss: 0.5, acc=91.2%") == {"loss": "0.5", "acc": "91.2%"}
    assert progress_values("12:30:01 warming up") == {}


def test_live_panel_tells_where_the_run_stands():
    screen = io.StringIO()
    live = LiveReporter(console_for(screen))
    try:
        live.run_started("night", "synth", "val_loss", "lower", 60.0, "llm")
        live.experiment_started(0)
        live.experiment_finished({"number": 0, "outcome": "keep", "reason": None, "metric": 0.29,
                                  "description": "baseline: the unmodified recipe"}, 0.29, 0.29)
        live.experiment_started(1)
        live.tokens_used(1000, 200, CALL_COST)
        live.experiment_finished({"number": 1, "outcome": "crash", "reason": "oom", "metric": None,
                                  "description": "wider model"}, 0.29, 0.29)
        live.experiment_started(2)
        live.tokens_used(1500, 300, 0.001)
        live.phase("training", "lower the learning rate", budget=60.0)
        live.training_output("step  120 | 3.0s | loss 3.2100 | lr 1.00e-03")
        live.training_output("val_loss: 0.27")
        panel = render(live)
    finally:
        live.close()
    assert "run night" in panel and "elapsed" in panel
    assert "experiment 2 · training · lower the learning rate" in panel
    assert "/60s" in panel and "step 120  loss 3.2100  lr 1.00e-03  val_loss 0.27" in panel
    assert "best val_loss 0.29 (gain +0 over baseline)" in panel and "1 keep, 1 crash" in panel
    assert "LLM tokens 3.0k (2.5k in, 500 out), cost $0.0016" in panel
    assert "crash: oom" in panel and "wider model" in panel


def test_live_training_bar_counts_training_only_and_forgets_the_last_training():
    screen = io.StringIO()
    live = LiveReporter(console_for(screen))
    try:
        live.run_started("night", "synth", "val_loss", "lower", 60.0, "llm")
        live.limits(10, 3, 7200.0)
        live.noise_floor(0.01, 3)
        live.keep_margin(0.0283)
        live.experiment_started(4)
        live.phase("training", "wider", budget=0.05, grace=30.0)
        assert "starting (0s, no output yet)" in render(live)  # start-up is not training
        live.training_output("step 1 | loss 3.5")
        time.sleep(0.1)
        panel = render(live)
        assert "budget spent, finishing (+0s; stopped in 30s if still going)" in panel
        assert "3 of 10 finished, 1h59m left" in panel or "3 of 10 finished, 2h00m left" in panel
        assert "a change must gain more than 0.0283 over the best to be kept" in panel
        live.phase("training", "wider (confirmation run 1)", budget=60.0, grace=30.0)
        assert "loss 3.5" not in render(live)  # nothing of the training before stays beside the bar
    finally:
        live.close()


def test_plain_lines_off_a_terminal_include_tokens_and_cost():
    stream = io.StringIO()
    plain = PlainReporter(stream)
    plain.experiment_started(3)
    plain.tokens_used(1000, 200, CALL_COST)
    plain.tokens_used(10, 5, None)
    lines = [line.split("] ", 1)[1] for line in stream.getvalue().splitlines()]
    assert lines == ["experiment 3: started",
                     "experiment 3: LLM call, 1000 + 200 tokens, $0.0006; run so far: tokens 1.2k (1.0k in, 200 out),"
                     " cost $0.0006",
                     "experiment 3: LLM call, 10 + 5 tokens, -; run so far: tokens 1.2k (1.0k in, 205 out), cost -"]


def test_plain_lines_say_where_the_run_stands_against_its_limits():
    stream = io.StringIO()
    plain = PlainReporter(stream)
    plain.limits(10, 3, None)
    plain.experiment_started(4)
    plain.keep_margin(0.02)
    plain.keep_margin(0.02)  # said once while it stays the same
    lines = [line.split("] ", 1)[1] for line in stream.getvalue().splitlines()]
    assert lines == ["experiment 4: started; 3 of 10 finished",
                     "experiment 4: a change must gain more than 0.02 over the best to be kept"]
