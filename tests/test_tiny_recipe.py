"""Tests of the `tiny` recipe: prepare.py's split and evaluation, and train.py run end to end."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes" / "tiny"
SUMMARY_NAMES = ("val_bpb", "training_seconds", "total_seconds", "peak_memory_mb", "num_steps", "num_params_M")
SUMMARY_LINE = re.compile(r"^([A-Za-z_]\w*): (\S+)$")


def load_prepare():
    spec = importlib.util.spec_from_file_location("tiny_prepare", RECIPE_DIR / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare = load_prepare()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One prepared cache for the whole module, pointed to by AUTORESEARCH_CACHE."""
    directory = tmp_path_factory.mktemp("autoresearch-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTORESEARCH_CACHE", str(directory))
        patch.delenv("AUTORESEARCH_EVAL_TEST", raising=False)
        prepare.prepare()
        yield directory


def run_training(cache_dir: Path, workdir: Path | None = None, eval_test: bool = False,
                 budget: str = "2") -> subprocess.CompletedProcess:
    env = {**os.environ, "AUTORESEARCH_CACHE": str(cache_dir), "AUTORESEARCH_TIME_BUDGET": budget,
           "AUTORESEARCH_SEED": "0"}
    env.pop("AUTORESEARCH_EVAL_TEST", None)
    if eval_test:
        env["AUTORESEARCH_EVAL_TEST"] = "1"
    return subprocess.run([sys.executable, "train.py"], cwd=workdir or RECIPE_DIR, env=env,
                          capture_output=True, text=True, timeout=120)


def summary_of(output: str) -> dict[str, float]:
    """The `name: value` lines after the last `---`."""
    lines = output.splitlines()
    assert "---" in lines, output
    block = lines[len(lines) - 1 - lines[::-1].index("---") + 1:]
    return {match[1]: float(match[2]) for line in block if (match := SUMMARY_LINE.match(line))}


# ---------------------------------------------------------------------------------------------
# prepare.py


def test_split_is_by_file_deterministic_and_disjoint():
    files = prepare.list_source_files(prepare.stdlib_dir())
    assert len(files) > 500 and files == sorted(files)
    assert not any("site-packages" in path or "__pycache__" in path for path in files)

    splits = prepare.split_files(files)
    assert splits == prepare.split_files(list(reversed(files)))
    assert all(splits[name] for name in prepare.SPLITS)
    assert sum(len(paths) for paths in splits.values()) == len(files)
    assert set().union(*map(set, splits.values())) == set(files)
    # The rule is a fixed hash of the path: these assignments hold on every machine.
    assert prepare.split_of("aifc.py") == "val"
    assert prepare.split_of("os.py") == "train"


def test_cache_holds_each_split_in_file_order(cache):
    root = prepare.stdlib_dir()
    val_files = prepare.split_files(prepare.list_source_files(root))["val"]
    expected = b"".join((root / path).read_bytes() for path in val_files)
    assert (cache / "tiny" / "val.bin").read_bytes() == expected
    sizes = [(cache / "tiny" / f"{split}.bin").stat().st_size for split in prepare.SPLITS]
    assert sizes[0] > 5 * sizes[1] and all(sizes)
    assert not list((cache / "tiny").glob("*.tmp"))


def test_test_split_is_refused_without_the_flag(cache, monkeypatch):
    monkeypatch.delenv("AUTORESEARCH_EVAL_TEST", raising=False)
    with pytest.raises(prepare.HeldOutSplitError):
        prepare.load_split("test")
    with pytest.raises(prepare.HeldOutSplitError):
        prepare.evaluation_bytes("test")
    monkeypatch.setenv("AUTORESEARCH_EVAL_TEST", "0")
    with pytest.raises(prepare.HeldOutSplitError):
        prepare.load_split("test")
    monkeypatch.setenv("AUTORESEARCH_EVAL_TEST", "1")
    assert len(prepare.evaluation_bytes("test")) == prepare.EVAL_BYTES + 1


def test_evaluation_bytes_are_fixed_and_differ_between_splits(cache, monkeypatch):
    val = prepare.evaluation_bytes("val")
    assert len(val) == prepare.EVAL_BYTES + 1
    assert prepare.evaluation_bytes("val") == val
    monkeypatch.setenv("AUTORESEARCH_EVAL_TEST", "1")
    assert prepare.evaluation_bytes("test") != val


def test_train_batches_are_shifted_windows_and_seeded(cache):
    first = prepare.TrainBatches(batch_size=4, seq_len=16, seed=3)
    inputs, targets = first.next_batch()
    assert inputs.shape == targets.shape == (4, 16)
    assert inputs.dtype == torch.long
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    again = prepare.TrainBatches(batch_size=4, seq_len=16, seed=3).next_batch()
    assert torch.equal(again[0], inputs)


class UniformModel(torch.nn.Module):
    """Predicts every byte with probability 1/256: exactly 8 bits per byte."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, inputs):
        return torch.zeros(*inputs.shape, prepare.VOCAB_SIZE)


@pytest.mark.parametrize("seq_len", [1000, 256, 77])
def test_evaluate_bpb_scores_the_same_bytes_for_any_seq_len(cache, seq_len):
    assert prepare.evaluate_bpb(UniformModel(), seq_len) == pytest.approx(8.0)


def test_stolen_seconds_reads_the_hosts_steal_time():
    stolen = prepare.stolen_seconds()
    assert stolen >= 0
    if Path("/proc/stat").exists():
        per_cpu = [line.split() for line in Path("/proc/stat").read_text().splitlines()
                   if line.startswith("cpu") and not line.startswith("cpu ")]
        worst = max(int(fields[8]) for fields in per_cpu) / os.sysconf("SC_CLK_TCK")
        assert worst <= prepare.stolen_seconds() <= worst + 1.0


def test_training_clock_leaves_out_stolen_time_up_to_a_wall_limit():
    stolen = [100.0]
    clock = prepare.TrainingClock(1.0, read_stolen=lambda: stolen[0])
    assert clock.wall_limit == pytest.approx(1.25)
    assert 0 <= clock.seconds() < 0.1 and not clock.expired()
    stolen[0] += 0.6  # the hypervisor ran someone else for 0.6 s of our wall time
    time.sleep(max(0.0, 1.0 - clock.wall_seconds()))
    assert clock.stolen_seconds() == pytest.approx(0.6)
    assert clock.seconds() == pytest.approx(clock.wall_seconds() - 0.6, abs=0.01)
    assert not clock.expired()  # a second of wall time, only about 0.4 s of it ours
    time.sleep(max(0.0, 1.25 - clock.wall_seconds()))
    assert clock.expired()  # the wall limit, although the training seconds are short of the budget
    assert clock.seconds() < 1.0

    idle = prepare.TrainingClock(0.2, read_stolen=lambda: 7.0)
    while not idle.expired():
        pass
    assert idle.seconds() >= 0.2 and idle.stolen_seconds() == 0
    assert prepare.TrainingClock(600).wall_limit == 615  # a quarter of the budget, at most 15 s


# ---------------------------------------------------------------------------------------------
# train.py end to end


@pytest.mark.slow
def test_training_prints_the_summary(cache):
    result = run_training(cache)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = summary_of(result.stdout)
    assert set(SUMMARY_NAMES) <= set(summary), result.stdout
    assert "test_bpb" not in summary
    assert math.isfinite(summary["val_bpb"]) and 0 < summary["val_bpb"] < 8.5
    assert summary["num_steps"] >= 1 and summary["num_params_M"] > 0
    # Wall time is training time plus stolen time: at least the budget. The clock is read between
    # steps, so training ends at the first step past the budget (or past the wall limit, a quarter
    # more): it overshoots by about one step, however slow a loaded machine makes a step.
    wall_seconds = summary["training_seconds"] + summary["stolen_seconds"]
    mean_step = wall_seconds / summary["num_steps"]
    assert summary["stolen_seconds"] >= 0 and 2 <= wall_seconds < 2.5 + 3 * mean_step + 0.5


@pytest.mark.slow
def test_training_with_eval_test_prints_test_bpb(cache):
    result = run_training(cache, eval_test=True)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = summary_of(result.stdout)
    assert set(SUMMARY_NAMES) <= set(summary)
    assert math.isfinite(summary["test_bpb"]) and summary["test_bpb"] != summary["val_bpb"]


@pytest.mark.slow
def test_training_stops_on_a_nan_loss(cache, tmp_path):
    shutil.copy(RECIPE_DIR / "prepare.py", tmp_path)
    source = (RECIPE_DIR / "train.py").read_text()
    # A poisoned loss, as a diverging run would produce; the recipe must stop on the first one.
    source, replaced = re.subn(r"loss = F\.cross_entropy\(", 'loss = float("nan") * F.cross_entropy(', source)
    assert replaced == 1
    (tmp_path / "train.py").write_text(source)
    result = run_training(cache, workdir=tmp_path, budget="30")
    assert result.returncode != 0
    assert re.search(r"^loss is nan at step \d+$", result.stdout, re.MULTILINE), result.stdout
    assert "val_bpb" not in result.stdout
