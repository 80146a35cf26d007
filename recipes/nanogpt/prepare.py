"""Data, model saving and evaluation for the nanogpt recipe. FIXED: the agent never edits this file.

    python prepare.py                   # 16 training shards, the pinned validation and test shards, the tokenizer;
                                        # prints show:/hide: lines (what the training may and may never read)
    python prepare.py --num-shards 40   # more training data (a shard is ~250M characters, ~90 MB on disk)
    python prepare.py --evaluate        # the harness's evaluation of a saved model (AUTORESEARCH_MODEL_DIR,
                                        # AUTORESEARCH_SPLIT=val|test, AUTORESEARCH_SEED)

Run it once before the first experiment (autoresearch runs it at the start of every run). Everything lands in the
cache; a second run only fills what is missing, and an interrupted download resumes where it stopped.

1. Download. Parquet shards of FineWeb-Edu (the shuffled repack karpathy/fineweb-edu-100b-shuffle: 1823 shards of
   whole documents in a `text` column) over plain HTTP, several at a time. A partial file is resumed with a Range
   request; a finished file is checked (it must be readable parquet with a `text` column) and renamed into place
   atomically, so a shard that exists is complete. Shard 1822 is the pinned validation split and shard 1821 the
   pinned test split; training reads shards 0..N-1. The training shards go to <cache>/data, the held-out ones to
   <cache>/heldout with their sha256 (heldout/meta.json), checked before every evaluation.
2. Tokenizer. Byte-level BPE with 8192 tokens (one of them the beginning-of-document token <|bos|>), trained with the
   `tokenizers` library on the first ~1B characters of the training shards and cached as tokenizer.json.
3. Evaluation rows. The validation rows the evaluation reads are packed once and cached in heldout/eval.

The training may read data/ and tokenizer/ (`show:`), never heldout/ (`hide:`).

What train.py uses:
    MAX_SEQ_LEN                               the longest context the evaluation feeds (its rows' length)
    load_tokenizer()                          .vocab_size, .bos_id, .encode(texts), .decode(ids), .token_bytes
    make_dataloader("train", B, T, device)    packed batches (x, y) of shape (B, T), endless
    save_model(model, context)                exports model(idx) -> logits (B, T, vocab) into AUTORESEARCH_OUTPUT_DIR,
                                              under bf16 autocast where the GPU has bf16 (as the evaluation runs it)

Packing: every row holds T+1 tokens and starts at a document's <|bos|>. Documents are taken best-fit from a buffer
(the longest that still fits the room left); when none fits, the shortest is cropped to fill the row, so no token
is padding. The evaluation (autoresearch.lm, run by the harness in its own process) scores a fixed number of
validation tokens (EVAL_TOKENS) in rows of MAX_SEQ_LEN + 1, in calls of EVAL_BATCH_SIZE rows' worth of tokens,
whatever the training batch and the model's context are; bits per byte divide the summed loss by the UTF-8 bytes of
the predicted tokens, so the number does not depend on the vocabulary.

Environment variables:
    AUTORESEARCH_CACHE              cache root (default ~/.cache/autoresearch); this recipe uses <root>/nanogpt
    AUTORESEARCH_NANOGPT_DATA_URL   base URL of the shards, read as <base>/shard_NNNNN.parquet
                                    (default https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main)
    AUTORESEARCH_OUTPUT_DIR         where save_model writes the model (set by the harness; by hand: <cache>/model)
    AUTORESEARCH_NANOGPT_TINY       1 shrinks the evaluation (128-token rows, 2048 tokens) for CPU smoke tests;
                                    such numbers are not comparable with a full run
"""

from __future__ import annotations

import argparse
import array
import bisect
import hashlib
import http.client
import json
import os
import queue
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch

from autoresearch import lm

try:
    import pyarrow.parquet as pq
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
except ImportError as exc:  # the tool's core does not need these; the recipe does
    raise ImportError(f"the nanogpt recipe needs tokenizers and pyarrow: pip install -e '.[nanogpt]' in the autoresearch clone, or bash scripts/setup.sh ({exc})") from exc

# ---------------------------------------------------------------------------------------------------------------
# Constants (fixed: changing any of them changes the metric)

DEFAULT_DATA_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
VAL_SHARD = 1822  # the last shard of the repack
TEST_SHARD = 1821
DEFAULT_NUM_SHARDS = 16  # ~4B characters, ~1B tokens: about twice what a 5-minute H100 run reads
TEXT_COLUMN = "text"

VOCAB_SIZE = 8192
BOS_TOKEN = "<|bos|>"
# GPT-4-style pre-tokenization, numbers in groups of at most two digits (a small vocabulary has no room for more)
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
TOKENIZER_TRAIN_CHARS = 1_000_000_000
TOKENIZER_DOC_CHARS = 10_000  # long documents would only repeat their own words

TINY = os.environ.get("AUTORESEARCH_NANOGPT_TINY") == "1"
MAX_SEQ_LEN = 128 if TINY else 2048
EVAL_TOKENS = 16 * 128 if TINY else 20 * 524_288  # predicted tokens per evaluation (~10.5M)
EVAL_BATCH_SIZE = 8 if TINY else 16  # rows per evaluation batch, independent of training
PACK_BUFFER_DOCS = 1000
DOC_CHARS_PER_TOKEN = 8  # a row never uses more than T+1 tokens of a document: cut its text at 8 chars per token

DOWNLOAD_ATTEMPTS = 6
RETRY_SECONDS = 2.0  # doubled after every failed attempt
HTTP_TIMEOUT = 60
CHUNK_BYTES = 1 << 20
SPLITS = ("train", "val", "test")
HELDOUT_SHARDS = {"val": VAL_SHARD, "test": TEST_SHARD}
METRICS = {"val": "val_bpb", "test": "test_bpb"}  # recipe.yaml's metric and test_metric


# ---------------------------------------------------------------------------------------------------------------
# Places

def cache_root() -> Path:
    return Path(os.environ.get("AUTORESEARCH_CACHE") or "~/.cache/autoresearch").expanduser() / "nanogpt"


def data_dir() -> Path:
    """The training shards."""
    return cache_root() / "data"


def heldout_dir() -> Path:
    """The validation and test shards and what is made from them: never shown to the training."""
    return cache_root() / "heldout"


def tokenizer_path() -> Path:
    return cache_root() / "tokenizer" / "tokenizer.json"


def data_url() -> str:
    return (os.environ.get("AUTORESEARCH_NANOGPT_DATA_URL") or DEFAULT_DATA_URL).rstrip("/")


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def shard_path(index: int) -> Path:
    return (heldout_dir() if index in HELDOUT_SHARDS.values() else data_dir()) / shard_name(index)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")


def train_shards() -> list[Path]:
    paths = []
    for path in sorted(data_dir().glob("shard_*.parquet")):
        try:
            index = int(path.stem.split("_")[1])
        except (IndexError, ValueError):
            continue
        if index not in (VAL_SHARD, TEST_SHARD):
            paths.append(path)
    return paths


def split_paths(split: str) -> list[Path]:
    check_split(split)
    paths = train_shards() if split == "train" else [shard_path(HELDOUT_SHARDS[split])]
    if not paths or not all(p.is_file() for p in paths):
        raise FileNotFoundError(f"no {split} data in {paths[0].parent if paths else data_dir()}: run "
                                "`python prepare.py` in the recipe folder first")
    return paths


# ---------------------------------------------------------------------------------------------------------------
# What the training may see, and the held-out data's fingerprints

def move_heldout_out_of_data() -> None:
    """Caches made before the held-out data had its own folder kept it in data/ and eval/: move it."""
    moves = [(data_dir() / shard_name(index), shard_path(index)) for index in HELDOUT_SHARDS.values()]
    moves.append((cache_root() / "eval", heldout_dir() / "eval"))
    for old, new in moves:
        if old.exists() and not new.exists():
            new.parent.mkdir(parents=True, exist_ok=True)
            os.replace(old, new)


def heldout_meta_path() -> Path:
    return heldout_dir() / "meta.json"


def record_heldout_hashes() -> dict[str, str]:
    """sha256 of each held-out shard, recorded once (prepare) and checked by every evaluation."""
    recorded = read_heldout_hashes()
    for index in HELDOUT_SHARDS.values():
        name = shard_name(index)
        if name not in recorded and shard_path(index).is_file():
            recorded[name] = lm.sha256_of(shard_path(index))
    path = heldout_meta_path()
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"sha256": recorded}, indent=2))
    os.replace(tmp, path)
    return recorded


def read_heldout_hashes() -> dict[str, str]:
    try:
        return dict(json.loads(heldout_meta_path().read_text())["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def checked_heldout_shard(split: str) -> Path:
    """The split's shard, if it is the one prepare recorded; lm.HeldOutDataError otherwise."""
    path = shard_path(HELDOUT_SHARDS[split])
    remedy = "delete it and run `python prepare.py` in the recipe folder again"
    return lm.check_held_out(path, read_heldout_hashes().get(path.name), remedy)


def show_paths() -> list[Path]:
    """What the training may read: the training shards and the tokenizer (trained on them)."""
    return [data_dir(), tokenizer_path().parent]


def hide_paths() -> list[Path]:
    """What the training must never see: the held-out folder, and held-out data wherever an older layout left it."""
    old = [data_dir() / shard_name(index) for index in HELDOUT_SHARDS.values()] + [cache_root() / "eval"]
    return [heldout_dir()] + [path for path in old if path.exists()]


# ---------------------------------------------------------------------------------------------------------------
# Download (standard library only: urllib, Range requests to resume, atomic renames)

class DownloadError(RuntimeError):
    """A download that retrying will not fix."""


def download_file(url: str, dest: Path, attempts: int = DOWNLOAD_ATTEMPTS, log=print) -> bool:
    """Fetch url into dest, resuming dest.partial; True if it downloaded, False if dest was already there."""
    if dest.exists():
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    for attempt in range(1, attempts + 1):
        try:
            _fetch(url, partial)
            _check_parquet(partial)
            os.replace(partial, dest)
            return True
        except DownloadError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
            if attempt == attempts:
                raise DownloadError(f"{url}: gave up after {attempts} attempts: {exc}") from exc
            wait = RETRY_SECONDS * 2 ** (attempt - 1)
            log(f"  {dest.name}: attempt {attempt} of {attempts} failed: {exc}; retrying in {wait:g}s")
            time.sleep(wait)
    return False  # not reached


def _fetch(url: str, partial: Path) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"User-Agent": "autoresearch-nanogpt"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=HTTP_TIMEOUT)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing past what we hold: the parquet check decides whether it is whole
            return
        if exc.code in (401, 403, 404, 410):
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        raise
    with response:
        mode = "wb"
        if have and response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {have}-"):
                partial.unlink(missing_ok=True)
                raise OSError(f"the server answered range {content_range!r} to bytes={have}-; starting over")
            mode = "ab"
        else:
            have = 0  # the server sent the whole file (it ignores ranges): start over
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length is not None else None
        with open(partial, mode) as f:
            while chunk := response.read(CHUNK_BYTES):
                f.write(chunk)
    size = partial.stat().st_size
    if expected is not None and size != expected:
        raise OSError(f"connection closed at {size} of {expected} bytes")


def _check_parquet(path: Path) -> None:
    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # truncated or not parquet: throw it away, the next attempt starts over
        path.unlink(missing_ok=True)
        raise ValueError(f"{path.name} is not a complete parquet file ({exc})") from exc
    if TEXT_COLUMN not in names:
        path.unlink(missing_ok=True)
        raise DownloadError(f"{path.name} has no {TEXT_COLUMN!r} column (it has {', '.join(names)})")


def download_shards(num_shards: int = DEFAULT_NUM_SHARDS, workers: int = 8, log=print) -> None:
    """Training shards 0..num_shards-1 plus the pinned validation and test shards."""
    indices = list(range(max(0, min(num_shards, TEST_SHARD)))) + [VAL_SHARD, TEST_SHARD]
    missing = [i for i in indices if not shard_path(i).exists()]
    log(f"data: {len(indices) - len(missing)} of {len(indices)} shards already in {data_dir()} and {heldout_dir()}")
    if not missing:
        return
    base = data_url()
    errors = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(download_file, f"{base}/{shard_name(i)}", shard_path(i), log=log): i for i in missing}
        for done, future in enumerate(as_completed(futures), 1):
            index = futures[future]
            try:
                future.result()
                size = shard_path(index).stat().st_size / 1e6
                log(f"  [{done}/{len(missing)}] {shard_name(index)} ({size:.1f} MB)")
            except Exception as exc:
                errors.append(f"{shard_name(index)}: {exc}")
    if errors:
        raise DownloadError("some shards did not download:\n  " + "\n  ".join(errors))


# ---------------------------------------------------------------------------------------------------------------
# Documents

def iter_texts(paths: list[Path], loop: bool = False):
    """(epoch, texts): one parquet row group of documents at a time, shards in order; forever when loop."""
    epoch = 1
    while True:
        for path in paths:
            with pq.ParquetFile(path) as parquet:
                for group in range(parquet.num_row_groups):
                    texts = parquet.read_row_group(group, columns=[TEXT_COLUMN]).column(0).to_pylist()
                    yield epoch, [t for t in texts if t]
        if not loop:
            return
        epoch += 1


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer

class BPETokenizer:
    """The trained tokenizer: encode/decode plus the UTF-8 length of every token (for bits per byte)."""

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        if hasattr(tokenizer, "encode_special_tokens"):
            tokenizer.encode_special_tokens = True  # a literal "<|bos|>" in the text is text, not a boundary
        self.vocab_size = tokenizer.get_vocab_size()
        self.bos_id = tokenizer.token_to_id(BOS_TOKEN)
        if self.bos_id is None:
            raise ValueError(f"the tokenizer has no {BOS_TOKEN} token")
        byte_chars = set(pre_tokenizers.ByteLevel.alphabet())  # byte-level BPE spells each byte as one character
        token_bytes = [0] * self.vocab_size
        for token, index in tokenizer.get_vocab().items():
            if token == BOS_TOKEN:
                continue  # special tokens stand for no bytes and are left out of bits per byte
            if not all(c in byte_chars for c in token):
                raise ValueError(f"token {index} ({token!r}) is not byte-level BPE")
            token_bytes[index] = len(token)  # one character per byte
        self.token_bytes = token_bytes
        self._encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without <|bos|> (the packer adds it)."""
        return [e.ids for e in self._encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)


def train_tokenizer(max_chars: int = TOKENIZER_TRAIN_CHARS, log=print) -> BPETokenizer:
    """Train byte-level BPE on the first max_chars characters of the training shards and cache it."""
    paths = split_paths("train")

    def batches():
        seen = 0
        for _, texts in iter_texts(paths):
            batch = []
            for text in texts:
                batch.append(text[:TOKENIZER_DOC_CHARS])
                seen += len(batch[-1])
                if seen >= max_chars:
                    break
            yield batch
            if seen >= max_chars:
                return

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, show_progress=False, special_tokens=[BOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    start = time.time()
    tokenizer.train_from_iterator(batches(), trainer=trainer)
    path = tokenizer_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tokenizer.save(str(tmp))
    os.replace(tmp, path)
    _TOKENIZERS.pop(path, None)
    log(f"tokenizer: {tokenizer.get_vocab_size()} tokens trained in {time.time() - start:.1f}s -> {path}")
    return load_tokenizer()


_TOKENIZERS: dict[Path, BPETokenizer] = {}


def load_tokenizer() -> BPETokenizer:
    path = tokenizer_path()
    if path not in _TOKENIZERS:
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer at {path}: run `python prepare.py` in the recipe folder first")
        _TOKENIZERS[path] = BPETokenizer(Tokenizer.from_file(str(path)))
    return _TOKENIZERS[path]


# ---------------------------------------------------------------------------------------------------------------
# Packing and the data loader

def _by_length(entry):
    return entry[0]


def _by_length_then_age(entry):
    return entry[0], entry[1]


def pack_rows(docs, row_len: int, buffer_docs: int = PACK_BUFFER_DOCS):
    """Rows of exactly row_len tokens from token documents that each start with <|bos|>, so every row starts at a
    document start. Best fit: the longest buffered document that fits the room left goes in; when none fits, the
    shortest is cropped to fill the row (its tail is dropped). No padding. Ends when the documents run out."""
    docs = iter(docs)
    pool: list[tuple[int, int, torch.Tensor]] = []  # (length, arrival, tokens), sorted
    arrivals = 0
    exhausted = False
    while True:
        parts, room = [], row_len
        while room:
            while not exhausted and len(pool) < buffer_docs:
                doc = next(docs, None)
                if doc is None:
                    exhausted = True
                elif len(doc):
                    bisect.insort(pool, (len(doc), arrivals, doc), key=_by_length_then_age)
                    arrivals += 1
            if not pool:
                return  # the last, unfinished row is dropped
            i = bisect.bisect_right(pool, room, key=_by_length) - 1
            if i >= 0:
                length, _, doc = pool.pop(i)
                parts.append(doc)
                room -= length
            else:
                _, _, doc = pool.pop(0)
                parts.append(doc[:room])
                room = 0
        yield torch.cat(parts) if len(parts) > 1 else parts[0]


def documents_as_tensors(bos_id: int, token_lists: list[list[int]]) -> list[torch.Tensor]:
    """One int32 tensor per document, <|bos|> first: views into one flat buffer (far faster than a tensor per list)."""
    flat, offsets = array.array("i"), [0]
    for ids in token_lists:
        flat.append(bos_id)
        flat.extend(ids)
        offsets.append(len(flat))
    if not flat:
        return []
    tokens = torch.frombuffer(flat, dtype=torch.int32)
    return [tokens[a:b] for a, b in zip(offsets, offsets[1:])]


def token_documents(tokenizer: BPETokenizer, text_batches, row_len: int):
    """Token tensors of the documents, one by one (see documents_as_tensors)."""
    cap = row_len * DOC_CHARS_PER_TOKEN
    for texts in text_batches:
        yield from documents_as_tensors(tokenizer.bos_id, tokenizer.encode([t[:cap] for t in texts]))


class PackedLoader:
    """Batches (x, y), each (B, T) int64, y shifted by one from x, cut from packed rows of T+1 tokens.

    Two background threads keep a few batches ready: one reads parquet and tokenizes (tokenizers encodes on all
    cores and releases the GIL), the other turns tokens into tensors and packs rows. On CUDA the batches sit in
    pinned memory and go to the GPU with non_blocking=True.
    """

    def __init__(self, split: str, batch_size: int, seq_len: int = MAX_SEQ_LEN, device="cpu", prefetch: int = 4):
        self.split = split
        self.paths = split_paths(split)
        self.tokenizer = load_tokenizer()
        self.batch_size, self.seq_len = batch_size, seq_len
        self.device = torch.device(device)
        self.epoch = 1
        self._pin = self.device.type == "cuda"
        self._tokens: queue.Queue = queue.Queue(maxsize=4)
        self._batches: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._done = False
        self._threads = [threading.Thread(target=self._tokenize, name=f"nanogpt-{split}-tokenize", daemon=True),
                         threading.Thread(target=self._pack, name=f"nanogpt-{split}-pack", daemon=True)]
        for thread in self._threads:
            thread.start()

    def _tokenize(self) -> None:
        cap = (self.seq_len + 1) * DOC_CHARS_PER_TOKEN
        try:
            for epoch, texts in iter_texts(self.paths, loop=self.split == "train"):
                self._put(self._tokens, (epoch, self.tokenizer.encode([t[:cap] for t in texts])))
                if self._stop.is_set():
                    return
            self._put(self._tokens, None)
        except BaseException as exc:
            self._put(self._tokens, exc)

    def _documents(self):
        while True:
            item = self._tokens.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            self.epoch, token_lists = item
            yield from documents_as_tensors(self.tokenizer.bos_id, token_lists)

    def _pack(self) -> None:
        try:
            rows = pack_rows(self._documents(), self.seq_len + 1)
            while not self._stop.is_set():
                batch = torch.empty((2, self.batch_size, self.seq_len), dtype=torch.int64, pin_memory=self._pin)
                for b in range(self.batch_size):
                    row = next(rows, None)
                    if row is None:
                        self._put(self._batches, None)
                        return
                    batch[0, b] = row[:-1]
                    batch[1, b] = row[1:]
                self._put(self._batches, batch)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(self._batches, exc)

    def _put(self, target: queue.Queue, item) -> None:
        while not self._stop.is_set():
            try:
                target.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._done:
            raise StopIteration
        item = self._batches.get()
        if item is None:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            raise RuntimeError(f"the {self.split} data loader failed: {item}") from item
        item = item.to(self.device, non_blocking=True)
        return item[0], item[1]

    def close(self) -> None:
        self._stop.set()


def make_dataloader(split: str, batch_size: int, seq_len: int = MAX_SEQ_LEN, device="cpu") -> PackedLoader:
    """Packed (x, y) batches of the split; "train" cycles through its shards forever (loader.epoch counts)."""
    return PackedLoader(split, batch_size, seq_len, device)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation

def eval_rows(split: str = "val") -> torch.Tensor:
    """The fixed evaluation rows of a split, (EVAL_TOKENS // MAX_SEQ_LEN, MAX_SEQ_LEN + 1) int32, packed once from
    the checked held-out shard (the cache's name holds the shard's and the tokenizer's hashes)."""
    check_split(split)
    if split == "train":
        raise ValueError("the evaluation reads a held-out split: val or test")
    shard = checked_heldout_shard(split)
    n_rows, row_len = EVAL_TOKENS // MAX_SEQ_LEN, MAX_SEQ_LEN + 1
    key = hashlib.sha256(tokenizer_path().read_bytes())
    key.update(read_heldout_hashes()[shard.name].encode())
    path = heldout_dir() / "eval" / f"{split}_{n_rows}x{row_len}_{key.hexdigest()[:12]}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    texts = (t for _, t in iter_texts([shard]))
    rows = []
    for row in pack_rows(token_documents(load_tokenizer(), texts, row_len), row_len):
        rows.append(row)
        if len(rows) == n_rows:
            break
    if len(rows) < n_rows:
        raise RuntimeError(f"the {split} shard gives only {len(rows)} rows of {row_len} tokens; evaluation needs {n_rows}")
    table = torch.stack(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    torch.save(table, tmp)
    os.replace(tmp, path)
    return table


def evaluate_split(request: lm.EvaluationRequest) -> dict[str, float]:
    """Bits per byte of the saved model on the split's fixed rows (see autoresearch.lm), and the time it took.
    <|bos|> targets have no bytes and are left out."""
    started = time.time()
    tokenizer = load_tokenizer()
    rows = eval_rows(request.split).long()
    result = lm.evaluate(request.model_dir, rows, torch.tensor(tokenizer.token_bytes), vocab_size=tokenizer.vocab_size,
                         max_context=MAX_SEQ_LEN, seed=request.seed, tokens_per_call=EVAL_BATCH_SIZE * MAX_SEQ_LEN)
    return {METRICS[request.split]: round(result.score.bits_per_byte, 6),
            "eval_tokens": result.score.tokens,
            "eval_bytes": result.score.bytes,
            "eval_context": result.score.context,
            "load_seconds": round(result.load_seconds, 2),
            "check_seconds": round(result.check_seconds, 2),
            "score_seconds": round(result.score_seconds, 2),
            "eval_seconds": round(time.time() - started, 2)}


# ---------------------------------------------------------------------------------------------------------------
# Saving the model (what train.py calls at its end)

def output_dir() -> Path:
    """Where the model goes: the harness's AUTORESEARCH_OUTPUT_DIR, else the cache (a run by hand)."""
    return Path(os.environ.get("AUTORESEARCH_OUTPUT_DIR") or cache_root() / "model")


def evaluation_autocast(device: torch.device) -> torch.dtype | None:
    """bf16 on GPUs that have it, as the evaluation has always run; None (fp32) elsewhere."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.bfloat16
    return None


def save_model(model: torch.nn.Module, context: int = MAX_SEQ_LEN) -> lm.SavedModel:
    """Export model(idx) -> logits (B, T, vocab) (the uncompiled module; a compiled one is unwrapped) for the
    evaluation, in the dtype it will compute in."""
    device = next(model.parameters()).device
    example = torch.zeros(2, context, dtype=torch.long, device=device)
    return lm.save_model(model, example, output_dir(), autocast_dtype=evaluation_autocast(device))


# ---------------------------------------------------------------------------------------------------------------
# Command line

def disk_usage(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Download the data and train the tokenizer of the nanogpt recipe, "
                                                 "or evaluate a saved model.")
    parser.add_argument("--num-shards", type=int, default=DEFAULT_NUM_SHARDS,
                        help=f"training shards to download (default {DEFAULT_NUM_SHARDS}, at most {TEST_SHARD})")
    parser.add_argument("--workers", type=int, default=8, help="parallel downloads (default 8)")
    parser.add_argument("--evaluate", action="store_true",
                        help="score the model in AUTORESEARCH_MODEL_DIR on AUTORESEARCH_SPLIT (the harness runs this)")
    args = parser.parse_args(argv)
    if args.evaluate:
        return lm.run_evaluation(evaluate_split)
    start = time.time()
    print(f"cache: {cache_root()}")
    print(f"source: {data_url()}")
    move_heldout_out_of_data()
    download_shards(args.num_shards, args.workers)
    record_heldout_hashes()
    print(f"downloaded in {time.time() - start:.0f}s")
    if tokenizer_path().is_file():
        print(f"tokenizer: cached at {tokenizer_path()}")
    else:
        train_tokenizer()
    tokenizer = load_tokenizer()
    step = time.time()
    rows = eval_rows("val")
    print(f"validation: {rows.shape[0]} rows of {rows.shape[1]} tokens ({time.time() - step:.1f}s), vocab {tokenizer.vocab_size}")
    print(f"disk: {disk_usage(cache_root()) / 1e9:.2f} GB in {cache_root()}")
    for path in show_paths():
        print(f"show: {path.resolve()}")
    for path in hide_paths():
        print(f"hide: {path.resolve()}")
    print(f"ready in {time.time() - start:.0f}s; now run `python train.py` (or `autoresearch run`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
