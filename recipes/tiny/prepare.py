"""Data, model saving and evaluation for the `tiny` recipe: bytes of the Python standard library.

    python prepare.py              # build the data cache (quick once built); prints show:/hide: lines
    python prepare.py --evaluate   # the harness's evaluation of a saved model (AUTORESEARCH_MODEL_DIR,
                                   # AUTORESEARCH_SPLIT=val|test, AUTORESEARCH_SEED)

This file is fixed: the agent edits train.py, never this file, so the metric stays comparable.

The splits keep the held-out data held out:
  * training: the .py files of the running interpreter's standard library outside its `test` package;
  * validation and test: the .py files of the `test` package, the standard library's own test suite,
    split between the two by a hash of the path (identical on every machine with the same Python).
    Nothing a training imports lives there, so a sandbox can hide the whole folder; the `hide:` lines
    name it and every other copy of a standard library's test suite on the machine. A held-out file
    whose content is also a training file (an empty __init__.py) is left out.

The cache, $AUTORESEARCH_CACHE/tiny (default ~/.cache/autoresearch/tiny), holds one folder per format
and interpreter, v<FORMAT_VERSION>/<python version>-<hash of the stdlib path>/, built in a temporary
folder and renamed into place, so it is whole or absent:
    train/train.bin        the training split (shown to the training, read-only)
    heldout/val.bin, heldout/test.bin
    meta.json              files and bytes per split, and the held-out files' sha256, checked before
                           every evaluation

What train.py uses: VOCAB_SIZE, TrainBatches (random windows of the training split), TrainingClock (the
budget counts the time the machine was ours, not the time a cloud host's hypervisor gave to other
tenants) and save_model(model, context), which exports the model into AUTORESEARCH_OUTPUT_DIR.

The evaluation (autoresearch.lm) scores EVAL_BYTES bytes of the split, drawn as EVAL_SLICES evenly
spaced slices, the same bytes whatever context the model has (at most MAX_CONTEXT).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import platform
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

from autoresearch import lm

# ---------------------------------------------------------------------------------------------
# Fixed constants (changing any of them changes the metric)

VOCAB_SIZE = 256  # one token per byte
FORMAT_VERSION = 3  # bump when the cache layout or the split rule changes
HELDOUT_PACKAGE = "test"  # the standard library's test suite: the validation and test files
SPLIT_BUCKETS = 1000
VAL_BUCKETS = range(0, 500)  # half of the test suite's files validate, the other half test
MAX_SPLIT_BYTES = 48 * 1024 * 1024  # cap on the bytes of one split, so a first prepare stays quick
EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}

EVAL_BYTES = 65536  # bytes scored by one evaluation
EVAL_SLICES = 64  # drawn as evenly spaced slices so the set spans many files of the split
EVAL_TOKENS_PER_CALL = 16384  # evaluation batch, independent of the training batch size
MAX_CONTEXT = 1024  # the longest context the evaluation feeds
METRICS = {"val": "val_bpb", "test": "test_bpb"}  # recipe.yaml's metric and test_metric

# Where other copies of a standard library's test suite usually are (besides the running one's).
TEST_SUITE_PATTERNS = (
    "/usr/lib/python3*/test", "/usr/lib64/python3*/test", "/usr/local/lib/python3*/test",
    "/opt/python*/lib/python3*/test", "/opt/conda/lib/python3*/test",
    "~/.pyenv/versions/*/lib/python3*/test", "~/miniconda3/lib/python3*/test", "~/anaconda3/lib/python3*/test",
    "~/.local/share/uv/python/*/lib/python3*/test",
    "/Library/Frameworks/Python.framework/Versions/*/lib/python3*/test",
)


# ---------------------------------------------------------------------------------------------
# Locating the source files and splitting them


def stdlib_dir() -> Path:
    """The standard library folder of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def is_excluded_dir(name: str) -> bool:
    # Third-party packages and build configuration are not the standard library; config-* holds
    # machine-specific files that would make the split differ between machines.
    return name in EXCLUDED_DIRS or name.startswith("config-")


def list_source_files(root: Path) -> list[str]:
    """Relative POSIX paths of the standard library's .py files, sorted."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if not is_excluded_dir(name)]
        for name in files:
            # _sysconfigdata_*.py is generated per platform build.
            if name.endswith(".py") and not name.startswith("_sysconfigdata"):
                found.append(Path(folder, name).relative_to(root).as_posix())
    return sorted(found)


def split_of(relative_path: str) -> str:
    """The split a file belongs to: a fixed function of its path, the same on every machine."""
    if not relative_path.startswith(HELDOUT_PACKAGE + "/"):
        return "train"
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return "val" if int.from_bytes(digest[:8], "big") % SPLIT_BUCKETS in VAL_BUCKETS else "test"


def split_files(files: list[str]) -> dict[str, list[str]]:
    """Each split's files, in sorted order."""
    assignment: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for relative_path in sorted(files):
        assignment[split_of(relative_path)].append(relative_path)
    return assignment


def test_suite_copies() -> list[Path]:
    """Every standard-library test suite on this machine: the running interpreter's and the usual
    other installs (the training could read any of them instead of the hidden one)."""
    candidates = [stdlib_dir() / HELDOUT_PACKAGE]
    for prefix in {sys.base_prefix, sys.prefix, sys.exec_prefix}:
        candidates += map(Path, glob.glob(os.path.join(prefix, "lib", "python3*", HELDOUT_PACKAGE)))
    pyenv_root = os.environ.get("PYENV_ROOT")
    patterns = TEST_SUITE_PATTERNS + ((os.path.join(pyenv_root, "versions/*/lib/python3*/test"),) if pyenv_root else ())
    for pattern in patterns:
        candidates += map(Path, glob.glob(os.path.expanduser(pattern)))
    found = {path.resolve() for path in candidates if path.is_dir()}
    return sorted(found)


# ---------------------------------------------------------------------------------------------
# The cache


def cache_root() -> Path:
    base = os.environ.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "autoresearch"
    return Path(base) / "tiny"


def cache_dir(root: Path | None = None) -> Path:
    """This interpreter's prepared data: the key is in the name, so a folder there is the right one."""
    stdlib = str(root or stdlib_dir())
    key = f"{platform.python_version()}-{hashlib.sha256(stdlib.encode()).hexdigest()[:10]}"
    return cache_root() / f"v{FORMAT_VERSION}" / key


def read_meta(directory: Path) -> dict | None:
    try:
        return json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def build(root: Path, directory: Path) -> dict:
    """Write the three splits and meta.json into `directory` (a fresh folder)."""
    assignment = split_files(list_source_files(root))
    contents = {split: bytearray() for split in assignment}
    files_read = {split: 0 for split in assignment}
    training_contents = {hashlib.sha256((root / path).read_bytes()).digest() for path in assignment["train"]}
    duplicates = 0
    # Reading in sorted order and stopping at the cap keeps the selection deterministic.
    for split, paths in assignment.items():
        for relative_path in paths:
            data = (root / relative_path).read_bytes()
            if split != "train" and hashlib.sha256(data).digest() in training_contents:
                duplicates += 1
                continue
            if len(contents[split]) + len(data) > MAX_SPLIT_BYTES:
                break
            contents[split] += data
            files_read[split] += 1
    (directory / "train").mkdir()
    (directory / "heldout").mkdir()
    (directory / "train" / "train.bin").write_bytes(bytes(contents["train"]))
    for split in ("val", "test"):
        (directory / "heldout" / f"{split}.bin").write_bytes(bytes(contents[split]))
    meta = {"format": FORMAT_VERSION, "python": platform.python_version(), "stdlib": str(root),
            "files": files_read, "bytes": {split: len(data) for split, data in contents.items()},
            "held_out_duplicates_left_out": duplicates,
            "sha256": {split: hashlib.sha256(contents[split]).hexdigest() for split in ("val", "test")}}
    # The evaluation sees the held-out folder and not the rest of the cache: the hashes go there too.
    (directory / "heldout" / "sha256.json").write_text(json.dumps(meta["sha256"], indent=2))
    (directory / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def prepare(verbose: bool = False) -> Path:
    """Build the cache unless it exists; return its folder."""
    root = stdlib_dir()
    directory = cache_dir(root)
    if read_meta(directory) is not None:
        return directory
    started = time.perf_counter()
    directory.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        meta = build(root, building)
        for path in [building, *building.rglob("*")]:  # mkdtemp makes 0700; the cache is shared data
            path.chmod(0o755 if path.is_dir() else 0o644)
        try:
            os.rename(building, directory)
        except OSError:
            if read_meta(directory) is None:  # not another prepare that finished first
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    if verbose:
        print(f"prepared {sum(meta['files'].values())} files, {sum(meta['bytes'].values()) / 1e6:.1f} MB "
              f"in {time.perf_counter() - started:.1f}s into {directory}")
    return directory


def show_paths(directory: Path) -> list[Path]:
    """What the training may read: the training split."""
    return [directory / "train"]


def hide_paths(directory: Path) -> list[Path]:
    """What the training must never see: the held-out splits of every cache folder, and every copy of
    the standard library's test suite the splits are made from."""
    # Every key and format, and a build a kill left behind (its temporary folder starts with a dot).
    held_out = sorted(cache_root().glob("v*/*/heldout")) + [directory / "heldout"]
    return sorted({path.resolve() for path in held_out}) + test_suite_copies()


# ---------------------------------------------------------------------------------------------
# Training data, clock and model saving (what train.py uses)


def load_train() -> torch.Tensor:
    """All bytes of the training split as a uint8 tensor (built first when run by hand without a cache).

    The sandbox shows the training its `train/` folder and nothing else of the cache, so the split
    is read from there directly; a folder of the cache exists only once complete (it is renamed in).
    """
    path = cache_dir() / "train" / "train.bin"
    if not path.is_file():
        path = prepare() / "train" / "train.bin"
    data = bytearray(path.read_bytes())
    return torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


class TrainBatches:
    """Random windows of the train split: `next_batch()` gives inputs and next-byte targets."""

    def __init__(self, batch_size: int, seq_len: int, seed: int, device: torch.device | str = "cpu"):
        self.data = load_train()
        self.batch_size = batch_size
        self.offsets = torch.arange(seq_len + 1)
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.max_start = len(self.data) - seq_len - 1

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, self.max_start, (self.batch_size, 1), generator=self.generator)
        windows = self.data[starts + self.offsets].long()
        if self.device.type == "cuda":
            windows = windows.pin_memory().to(self.device, non_blocking=True)
        else:
            windows = windows.to(self.device)
        return windows[:, :-1], windows[:, 1:]


def stolen_seconds() -> float:
    """Steal time of this machine's most-robbed CPU so far: seconds a cloud host's hypervisor ran
    other tenants instead of us (Linux /proc/stat; 0 where it does not exist)."""
    try:
        with open("/proc/stat") as stat:
            per_cpu = [line.split() for line in stat if line.startswith("cpu") and not line.startswith("cpu ")]
    except OSError:
        return 0.0
    steal_ticks = [int(fields[8]) for fields in per_cpu if len(fields) > 8]
    return max(steal_ticks, default=0) / os.sysconf("SC_CLK_TCK")


class TrainingClock:
    """Seconds of training the run has had: wall time minus the time stolen by the hypervisor.

    On a shared cloud VM a noisy neighbour can take half of a one-minute run (measured: 395 steps
    instead of 790), and a budget in plain wall time would turn that into a worse metric. The
    threads of one matmul wait for the slowest CPU, so the most-robbed CPU's loss counts. The
    clock never runs more than a quarter of the budget (at most 15 s) past it in wall time; the
    harness extends its deadline by the steal it measures, capped the same way.
    """

    def __init__(self, budget_seconds: float, read_stolen=stolen_seconds):
        self.budget_seconds = budget_seconds
        self.wall_limit = budget_seconds + min(budget_seconds / 4, 15.0)
        self.read_stolen = read_stolen
        self.started = time.perf_counter()
        self.stolen_at_start = read_stolen()

    def wall_seconds(self) -> float:
        return time.perf_counter() - self.started

    def stolen_seconds(self) -> float:
        return self.read_stolen() - self.stolen_at_start

    def seconds(self) -> float:
        """Training seconds so far: what the schedule and the budget follow."""
        return self.wall_seconds() - self.stolen_seconds()

    def expired(self) -> bool:
        wall = self.wall_seconds()  # one reading of each clock, so both tests see the same moment
        return wall - self.stolen_seconds() >= self.budget_seconds or wall >= self.wall_limit


def output_dir() -> Path:
    """Where the model goes: the harness's AUTORESEARCH_OUTPUT_DIR, else the cache (a run by hand)."""
    return Path(os.environ.get("AUTORESEARCH_OUTPUT_DIR") or cache_root() / "model")


def save_model(model: torch.nn.Module, context: int) -> lm.SavedModel:
    """Export `model` (bytes (batch, context) -> logits (batch, context, 256)) for the evaluation."""
    device = next(model.parameters()).device
    example = torch.zeros(2, context, dtype=torch.long, device=device)
    return lm.save_model(model, example, output_dir())


# ---------------------------------------------------------------------------------------------
# Evaluation (run by the harness in its own process: python -I -B prepare.py --evaluate)


def heldout_bytes(split: str) -> bytes:
    """All bytes of a held-out split, checked against the sha256 recorded when it was prepared.

    The evaluation never builds data (the harness ran prepare first); it reads the held-out folder only.
    """
    directory = cache_dir()
    try:
        recorded = json.loads((directory / "heldout" / "sha256.json").read_text()).get(split)
    except (OSError, ValueError):
        recorded = None
    remedy = f"delete {directory} and run `python prepare.py` again"
    return lm.check_held_out(directory / "heldout" / f"{split}.bin", recorded, remedy).read_bytes()


def evaluation_stream(split: str) -> torch.Tensor:
    """The fixed EVAL_BYTES + 1 bytes an evaluation reads (the first byte is only context), as longs."""
    data = heldout_bytes(split)
    slice_length = (EVAL_BYTES + 1) // EVAL_SLICES + 1
    stride = (len(data) - slice_length) // (EVAL_SLICES - 1)
    if stride < slice_length:
        raise lm.HeldOutDataError(f"the {split} split holds {len(data)} bytes, too few for an evaluation")
    pieces = bytearray(b"".join(data[index * stride: index * stride + slice_length] for index in range(EVAL_SLICES)))
    return torch.frombuffer(pieces, dtype=torch.uint8)[: EVAL_BYTES + 1].long()


def evaluate_split(request: lm.EvaluationRequest) -> dict[str, float]:
    """Bits per byte of the saved model on the split's evaluation bytes, and the time it took."""
    started = time.perf_counter()
    stream = evaluation_stream(request.split)
    result = lm.evaluate(request.model_dir, stream[None], torch.ones(VOCAB_SIZE), vocab_size=VOCAB_SIZE,
                         max_context=MAX_CONTEXT, seed=request.seed, tokens_per_call=EVAL_TOKENS_PER_CALL)
    return {METRICS[request.split]: round(result.score.bits_per_byte, 6),
            "eval_bytes": result.score.bytes,
            "eval_context": result.score.context,
            "load_seconds": round(result.load_seconds, 2),
            "check_seconds": round(result.check_seconds, 2),
            "score_seconds": round(result.score_seconds, 2),
            "eval_seconds": round(time.perf_counter() - started, 2)}


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare the tiny recipe's data, or evaluate a saved model.")
    parser.add_argument("--evaluate", action="store_true",
                        help="score the model in AUTORESEARCH_MODEL_DIR on AUTORESEARCH_SPLIT (the harness runs this)")
    args = parser.parse_args(argv)
    if args.evaluate:
        return lm.run_evaluation(evaluate_split)
    directory = prepare(verbose=True)
    meta = read_meta(directory)
    for split in ("train", "val", "test"):
        print(f"{split}: {meta['files'][split]} files, {meta['bytes'][split]:,} bytes")
    print(f"cache: {directory}")
    for path in show_paths(directory):
        print(f"show: {path.resolve()}")
    for path in hide_paths(directory):
        print(f"hide: {path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
