"""Data and evaluation for the `tiny` recipe: bytes of the Python standard library's source.

This file is fixed: the agent edits train.py, never this file, so the metric stays comparable.

What it does:
  * collects the `.py` files of the standard library of the interpreter running it (no download),
    sorts them, and assigns each file to train / val / test by a hash of its relative path, so the
    split is by file and identical on every machine with the same Python version;
  * caches the three splits as raw byte files under $AUTORESEARCH_CACHE/tiny
    (default ~/.cache/autoresearch/tiny), written atomically;
  * hands out random training batches (`TrainBatches`) and measures validation bits per byte on a
    fixed set of bytes (`evaluate_bpb`);
  * holds the test split back: it is only handed out when AUTORESEARCH_EVAL_TEST=1;
  * keeps the training clock (`TrainingClock`): the budget counts the time the machine was ours,
    not the time a cloud host's hypervisor gave to other tenants.

Run `python prepare.py` to build the cache ahead of time (train.py also builds it on first use).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sysconfig
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Fixed constants (changing any of them changes the metric)

VOCAB_SIZE = 256  # one token per byte
FORMAT_VERSION = 1  # bump when the cache layout or the split rule changes
SPLITS = ("train", "val", "test")
SPLIT_BUCKETS = 1000
VAL_BUCKETS = range(0, 50)  # 5% of the files
TEST_BUCKETS = range(50, 100)  # another 5%
MAX_SOURCE_BYTES = 48 * 1024 * 1024  # cap on the bytes read, so a first prepare stays quick
EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}

EVAL_BYTES = 65536  # bytes scored by one evaluation
EVAL_SLICES = 64  # drawn as evenly spaced slices so the set spans many files of the split
EVAL_TOKENS_PER_BATCH = 16384  # evaluation batch, independent of the training batch size

EVAL_TEST_ENV = "AUTORESEARCH_EVAL_TEST"


class HeldOutSplitError(RuntimeError):
    """Raised when the test split is asked for without AUTORESEARCH_EVAL_TEST=1."""


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
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % SPLIT_BUCKETS
    if bucket in VAL_BUCKETS:
        return "val"
    if bucket in TEST_BUCKETS:
        return "test"
    return "train"


def split_files(files: list[str]) -> dict[str, list[str]]:
    """Each split's files, in sorted order."""
    assignment: dict[str, list[str]] = {split: [] for split in SPLITS}
    for relative_path in sorted(files):
        assignment[split_of(relative_path)].append(relative_path)
    return assignment


# ---------------------------------------------------------------------------------------------
# The cache


def cache_dir() -> Path:
    """Where this recipe's prepared data lives."""
    base = os.environ.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "autoresearch"
    return Path(base) / "tiny"


def expected_meta_key(root: Path) -> dict:
    """What must match for a cached copy to be reused."""
    return {"format": FORMAT_VERSION, "python": platform.python_version(), "stdlib": str(root)}


def write_atomically(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; the cache is ordinary shared data
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_meta(directory: Path) -> dict | None:
    try:
        return json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def prepare(verbose: bool = False) -> Path:
    """Build the cache unless a matching one exists; return its folder."""
    root = stdlib_dir()
    directory = cache_dir()
    key = expected_meta_key(root)
    meta = read_meta(directory)
    if meta is not None and all(meta.get(name) == value for name, value in key.items()):
        if all((directory / f"{split}.bin").is_file() for split in SPLITS):
            return directory

    started = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    assignment = split_files(list_source_files(root))
    contents: dict[str, bytearray] = {split: bytearray() for split in SPLITS}
    files_read: dict[str, int] = {split: 0 for split in SPLITS}
    total = 0
    # Reading in sorted order and stopping at the cap keeps the selection deterministic.
    for relative_path in sorted(path for files in assignment.values() for path in files):
        data = (root / relative_path).read_bytes()
        if total + len(data) > MAX_SOURCE_BYTES:
            break
        split = split_of(relative_path)
        contents[split] += data
        files_read[split] += 1
        total += len(data)

    for split in SPLITS:
        write_atomically(directory / f"{split}.bin", bytes(contents[split]))
    meta = {
        **key,
        "files": files_read,
        "bytes": {split: len(contents[split]) for split in SPLITS},
        "val_sha256": hashlib.sha256(contents["val"]).hexdigest(),
    }
    # meta.json goes last: its presence means the split files are complete.
    write_atomically(directory / "meta.json", json.dumps(meta, indent=2).encode())
    if verbose:
        seconds = time.perf_counter() - started
        print(f"prepared {sum(files_read.values())} files, {total / 1e6:.1f} MB in {seconds:.1f}s "
              f"into {directory}")
    return directory


# ---------------------------------------------------------------------------------------------
# Handing out data


def test_split_enabled() -> bool:
    """True only when the harness asks for the held-out test evaluation."""
    return os.environ.get(EVAL_TEST_ENV) == "1"


def load_split(split: str) -> torch.Tensor:
    """All bytes of one split as a uint8 tensor. The test split needs AUTORESEARCH_EVAL_TEST=1."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if split == "test" and not test_split_enabled():
        raise HeldOutSplitError(f"the test split is held out: it is only handed out when "
                                f"{EVAL_TEST_ENV}=1 (set by `autoresearch verify`)")
    directory = prepare()
    data = bytearray((directory / f"{split}.bin").read_bytes())
    return torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def evaluation_bytes(split: str = "val") -> bytes:
    """The fixed EVAL_BYTES + 1 bytes an evaluation reads (the first byte is only context)."""
    return bytes(evaluation_stream(split).tolist())


def evaluation_stream(split: str = "val") -> torch.Tensor:
    """`evaluation_bytes` as a long tensor."""
    data = load_split(split)
    slice_length = (EVAL_BYTES + 1) // EVAL_SLICES + 1
    stride = (len(data) - slice_length) // (EVAL_SLICES - 1)
    if stride < slice_length:
        raise RuntimeError(f"the {split} split holds {len(data)} bytes, too few for an evaluation")
    pieces = [data[index * stride: index * stride + slice_length] for index in range(EVAL_SLICES)]
    return torch.cat(pieces)[: EVAL_BYTES + 1].long()


class TrainBatches:
    """Random windows of the train split: `next_batch()` gives inputs and next-byte targets."""

    def __init__(self, batch_size: int, seq_len: int, seed: int, device: torch.device | str = "cpu"):
        self.data = load_split("train")
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


# ---------------------------------------------------------------------------------------------
# The training clock


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
    clock never runs more than a quarter of the budget (at most 15 s) past it in wall time, which
    leaves the evaluation inside the harness's grace period.
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


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate_bpb(model: torch.nn.Module, seq_len: int, split: str = "val",
                 device: torch.device | str | None = None) -> float:
    """Bits per byte of `model` on the split's fixed evaluation bytes.

    `model(inputs)` takes a (batch, time) long tensor of bytes and returns (batch, time, 256)
    next-byte logits. The scored bytes are the same whatever `seq_len` is; the stream is cut into
    consecutive windows of `seq_len` bytes and each byte is predicted from those before it in its
    window.
    """
    if device is None:
        device = next(model.parameters()).device
    stream = evaluation_stream(split)
    inputs, targets = stream[:-1], stream[1:]
    full_windows = EVAL_BYTES // seq_len
    rows_per_batch = max(1, EVAL_TOKENS_PER_BATCH // seq_len)
    chunks = []
    for first in range(0, full_windows, rows_per_batch):
        rows = min(rows_per_batch, full_windows - first)
        span = slice(first * seq_len, (first + rows) * seq_len)
        chunks.append((inputs[span].view(rows, seq_len), targets[span].view(rows, seq_len)))
    if full_windows * seq_len < EVAL_BYTES:
        rest = slice(full_windows * seq_len, EVAL_BYTES)
        chunks.append((inputs[rest].view(1, -1), targets[rest].view(1, -1)))

    was_training = model.training
    model.eval()
    total_nats = 0.0
    try:
        for chunk_inputs, chunk_targets in chunks:
            logits = model(chunk_inputs.to(device))
            total_nats += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                          chunk_targets.to(device).reshape(-1), reduction="sum").item()
    finally:
        model.train(was_training)
    return total_nats / (math.log(2) * EVAL_BYTES)


# ---------------------------------------------------------------------------------------------

if __name__ == "__main__":
    directory = prepare(verbose=True)
    meta = read_meta(directory)
    for split in SPLITS:
        print(f"{split}: {meta['files'][split]} files, {meta['bytes'][split]:,} bytes")
    print(f"cache: {directory}")
