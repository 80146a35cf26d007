"""Tests of the `tiny` recipe: prepare.py's splits, cache, show/hide lines and evaluation, and
train.py run end to end, with the evaluation run the way the harness runs it (python -I -B in a
fresh folder, a clean environment)."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from autoresearch import lm

RECIPE_DIR = Path(__file__).resolve().parents[2] / "recipes" / "tiny"
SUMMARY_NAMES = ("training_seconds", "stolen_seconds", "export_seconds", "model_mb", "total_seconds",
                 "peak_memory_mb", "num_steps", "num_params_M")
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
        prepare.prepare()
        yield directory


@pytest.fixture
def data_dir(cache, monkeypatch):
    """The prepared folder of this interpreter, with AUTORESEARCH_CACHE pointing at its cache."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    return prepare.cache_dir()


def run_training(cache_dir: Path, output_dir: Path, workdir: Path | None = None,
                 budget: str = "2") -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUTORESEARCH_")}
    env.update(AUTORESEARCH_CACHE=str(cache_dir), AUTORESEARCH_TIME_BUDGET=budget, AUTORESEARCH_SEED="0",
               AUTORESEARCH_OUTPUT_DIR=str(output_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "train.py"], cwd=workdir or RECIPE_DIR, env=env,
                          capture_output=True, text=True, timeout=120)


def run_evaluation(cache_dir: Path, model_dir: Path, workdir: Path, split: str = "val",
                   seed: int = 0) -> subprocess.CompletedProcess:
    """The evaluation as the harness runs it: the fixed files in a fresh folder, python -I -B, an
    environment of nothing but PATH and the evaluation's own variables."""
    workdir.mkdir(parents=True)
    for name in ("prepare.py", "recipe.yaml"):
        shutil.copy(RECIPE_DIR / name, workdir)
    env = {"PATH": os.environ["PATH"], "AUTORESEARCH_CACHE": str(cache_dir), "AUTORESEARCH_MODEL_DIR": str(model_dir),
           "AUTORESEARCH_SPLIT": split, "AUTORESEARCH_SEED": str(seed)}
    command = [sys.executable, "-I", "-B", *recipe()["evaluate"].split()[1:]]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


def recipe() -> dict:
    return yaml.safe_load((RECIPE_DIR / "recipe.yaml").read_text())


def summary_of(output: str) -> dict[str, float]:
    """The `name: value` lines after the last `---`."""
    lines = output.splitlines()
    assert "---" in lines, output
    block = lines[len(lines) - 1 - lines[::-1].index("---") + 1:]
    return {match[1]: float(match[2]) for line in block if (match := SUMMARY_LINE.match(line))}


def values_of(output: str) -> dict[str, float]:
    return {match[1]: float(match[2]) for line in output.splitlines() if (match := SUMMARY_LINE.match(line))}


class UniformModel(torch.nn.Module):
    """Predicts every byte with probability 1/256: exactly 8 bits per byte."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, inputs):
        return torch.zeros(inputs.size(0), inputs.size(1), prepare.VOCAB_SIZE) + 0 * self.unused


class NextBytePeeker(UniformModel):
    def forward(self, inputs):
        return super().forward(inputs) + 5.0 * F.one_hot(F.pad(inputs[:, 1:], (0, 1)), prepare.VOCAB_SIZE)


def saved_model(model: torch.nn.Module, folder: Path, monkeypatch, context: int = 128) -> Path:
    monkeypatch.setenv("AUTORESEARCH_OUTPUT_DIR", str(folder))
    prepare.save_model(model, context)
    return folder


# ---------------------------------------------------------------------------------------------
# recipe.yaml


def test_recipe_yaml_names_the_prepare_and_evaluate_commands():
    spec = recipe()
    assert spec["prepare"] == "python prepare.py"
    assert spec["evaluate"] == "python prepare.py --evaluate"
    assert (spec["metric"], spec["test_metric"]) == tuple(prepare.METRICS.values())
    assert 0 < spec["grace_seconds"] <= 30


# ---------------------------------------------------------------------------------------------
# prepare.py: splits and cache


def test_split_is_by_file_deterministic_and_disjoint():
    files = prepare.list_source_files(prepare.stdlib_dir())
    assert len(files) > 500 and files == sorted(files)
    assert not any("site-packages" in path or "__pycache__" in path for path in files)

    splits = prepare.split_files(files)
    assert splits == prepare.split_files(list(reversed(files)))
    assert all(splits[name] for name in splits)
    assert set().union(*map(set, splits.values())) == set(files)
    assert sum(len(paths) for paths in splits.values()) == len(files)
    # Held out: the test suite, and all of it; the training split: the rest of the library.
    assert all(path.startswith("test/") for path in splits["val"] + splits["test"])
    assert not any(path.startswith("test/") for path in splits["train"])
    # The rule is a fixed hash of the path: these assignments hold on every machine.
    assert [prepare.split_of(path) for path in ("os.py", "test/test_os.py", "test/test_sys.py")] == \
        ["train", "val", "test"]


def test_cache_holds_each_split_in_file_order(data_dir):
    root = prepare.stdlib_dir()
    splits = prepare.split_files(prepare.list_source_files(root))
    training = {(root / path).read_bytes() for path in splits["train"]}
    val = [(root / path).read_bytes() for path in splits["val"]]
    assert (data_dir / "heldout" / "val.bin").read_bytes() == b"".join(data for data in val if data not in training)
    assert (data_dir / "train" / "train.bin").read_bytes() == b"".join((root / path).read_bytes()
                                                                       for path in splits["train"])
    meta = prepare.read_meta(data_dir)
    assert meta["sha256"]["test"] == lm.sha256_of(data_dir / "heldout" / "test.bin")
    assert meta["held_out_duplicates_left_out"] > 0 and all(meta["bytes"].values())
    assert not [path for path in data_dir.parent.iterdir() if path.name.startswith(".")]  # no build left over


def test_the_training_split_holds_no_held_out_bytes(data_dir):
    training = (data_dir / "train" / "train.bin").read_bytes()
    for split in ("val", "test"):
        stream = bytes(prepare.evaluation_stream(split).tolist())
        slices = [stream[start:start + 256] for start in range(0, len(stream) - 256, 1024)]
        assert not [piece for piece in slices if piece in training], split


def test_prepare_is_quick_once_built_and_builds_in_a_fresh_folder(data_dir, tmp_path, monkeypatch):
    stamp = (data_dir / "meta.json").stat().st_mtime_ns
    started = time.perf_counter()
    assert prepare.prepare() == data_dir
    assert time.perf_counter() - started < 0.5 and (data_dir / "meta.json").stat().st_mtime_ns == stamp
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path))
    built = prepare.prepare()
    assert built.parent == tmp_path / "tiny" / f"v{prepare.FORMAT_VERSION}"
    assert sorted(path.name for path in built.iterdir()) == ["heldout", "meta.json", "train"]
    assert [path.name for path in built.parent.iterdir()] == [built.name]


def test_prepare_prints_show_and_hide_lines_covering_the_held_out_data(cache):
    env = {**os.environ, "AUTORESEARCH_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-I", "-B", *recipe()["prepare"].split()[1:]], cwd=RECIPE_DIR, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    shown = [Path(line[6:]) for line in done.stdout.splitlines() if line.startswith("show: ")]
    hidden = [Path(line[6:]) for line in done.stdout.splitlines() if line.startswith("hide: ")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTORESEARCH_CACHE", str(cache))
        directory = prepare.cache_dir()
    assert shown == [directory / "train"]
    assert directory / "heldout" in hidden
    assert Path(sysconfig.get_paths()["stdlib"], "test").resolve() in hidden
    for other in ("/usr/lib/python3.11/test", "/root/.pyenv/versions/3.11.7/lib/python3.11/test"):
        if Path(other).is_dir():
            assert Path(other).resolve() in hidden
    assert all(path.is_absolute() and path.exists() for path in shown + hidden)
    assert not any(path == shown[0] or path in shown[0].parents for path in hidden)


def test_train_batches_are_shifted_windows_and_seeded(cache):
    first = prepare.TrainBatches(batch_size=4, seq_len=16, seed=3)
    inputs, targets = first.next_batch()
    assert inputs.shape == targets.shape == (4, 16)
    assert inputs.dtype == torch.long
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    again = prepare.TrainBatches(batch_size=4, seq_len=16, seed=3).next_batch()
    assert torch.equal(again[0], inputs)


# ---------------------------------------------------------------------------------------------
# prepare.py --evaluate


def test_the_evaluation_scores_a_saved_model_in_its_own_process(cache, tmp_path, monkeypatch):
    folder = saved_model(UniformModel(), tmp_path / "model", monkeypatch, context=100)
    for split in ("val", "test"):
        done = run_evaluation(cache, folder, tmp_path / split, split)
        assert done.returncode == 0, done.stdout + done.stderr
        values = values_of(done.stdout)
        assert values[prepare.METRICS[split]] == pytest.approx(8.0)
        assert values["eval_bytes"] == prepare.EVAL_BYTES and values["eval_context"] == 100
        assert done.stdout.splitlines()[-1].startswith("eval_seconds: ")
        assert not [path for path in (tmp_path / split).iterdir() if path.name not in ("prepare.py", "recipe.yaml")]


def test_the_evaluation_refuses_a_model_that_reads_the_next_byte(cache, tmp_path, monkeypatch):
    done = run_evaluation(cache, saved_model(NextBytePeeker(), tmp_path / "model", monkeypatch), tmp_path / "eval")
    assert done.returncode == lm.REFUSED_EXIT_CODE, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("refused: not causal")
    assert "val_bpb" not in done.stdout


def test_the_evaluation_fails_on_a_tampered_held_out_file(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    held_out = prepare.prepare() / "heldout" / "val.bin"
    folder = saved_model(UniformModel(), tmp_path / "model", monkeypatch)
    data = bytearray(held_out.read_bytes())
    data[len(data) // 2] ^= 1  # one bit of the validation bytes
    held_out.write_bytes(bytes(data))
    done = run_evaluation(tmp_path / "cache", folder, tmp_path / "eval")
    assert done.returncode not in (0, lm.REFUSED_EXIT_CODE), done.stdout + done.stderr
    assert "HeldOutDataError" in done.stdout.splitlines()[-1] and "has changed since it was prepared" in done.stdout
    assert "val_bpb" not in done.stdout


def test_the_evaluation_of_a_training_that_saved_nothing_fails(cache, tmp_path):
    (tmp_path / "empty").mkdir()
    done = run_evaluation(cache, tmp_path / "empty", tmp_path / "eval")
    assert done.returncode == lm.FAILED_EXIT_CODE
    assert "no saved model" in done.stdout.splitlines()[-1]


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
def test_training_saves_a_model_that_the_evaluation_scores(cache, tmp_path):
    result = run_training(cache, tmp_path / "model")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = summary_of(result.stdout)
    assert set(SUMMARY_NAMES) <= set(summary), result.stdout
    assert "val_bpb" not in summary and "test_bpb" not in summary  # the training measures nothing
    assert summary["num_steps"] >= 1 and summary["num_params_M"] > 0 and summary["model_mb"] > 1
    # Wall time is training time plus stolen time: at least the budget. The clock is read between
    # steps, so training ends at the first step past the budget (or past the wall limit, a quarter
    # more): it overshoots by about one step, however slow a loaded machine makes a step.
    wall_seconds = summary["training_seconds"] + summary["stolen_seconds"]
    mean_step = wall_seconds / summary["num_steps"]
    assert summary["stolen_seconds"] >= 0 and 2 <= wall_seconds < 2.5 + 3 * mean_step + 0.5

    done = run_evaluation(cache, tmp_path / "model", tmp_path / "eval")
    assert done.returncode == 0, done.stdout + done.stderr
    values = values_of(done.stdout)
    assert math.isfinite(values["val_bpb"]) and 0 < values["val_bpb"] < 8.5
    assert values["eval_context"] == 128


@pytest.mark.slow
def test_training_stops_on_a_nan_loss(cache, tmp_path):
    shutil.copy(RECIPE_DIR / "prepare.py", tmp_path)
    source = (RECIPE_DIR / "train.py").read_text()
    # A poisoned loss, as a diverging run would produce; the recipe must stop on the first one.
    source, replaced = re.subn(r"loss = F\.cross_entropy\(", 'loss = float("nan") * F.cross_entropy(', source)
    assert replaced == 1
    (tmp_path / "train.py").write_text(source)
    result = run_training(cache, tmp_path / "model", workdir=tmp_path, budget="30")
    assert result.returncode != 0
    assert re.search(r"^loss is nan at step \d+$", result.stdout, re.MULTILINE), result.stdout
    assert not list((tmp_path / "model").iterdir())
