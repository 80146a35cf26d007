"""The nanogpt recipe on CPU, without network: its own parquet shards served from 127.0.0.1, the tokenizer, packing,
the show/hide lines, the evaluation as the harness runs it (python -I -B in a fresh folder), and train.py's tiny
configuration end to end."""

from __future__ import annotations

import importlib.util
import math
import os
import random
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

pytest.importorskip("tokenizers")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
torch = pytest.importorskip("torch")

from autoresearch import lm  # noqa: E402
from autoresearch.recipe import load_recipe  # noqa: E402
from autoresearch.execution.output import parse_summary  # noqa: E402

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "nanogpt"
SUMMARY_KEYS = ("training_seconds", "export_seconds", "model_mb", "total_seconds", "peak_memory_mb",
                "tokens_per_second", "total_tokens_M", "num_steps", "num_params_M", "depth")


# ---------------------------------------------------------------------------------------------------------------
# A small corpus, an HTTP server for it, the recipe's modules

def _load(name: str, path: Path, tiny: bool = True, prepare_module=None):
    """Import a recipe file under its own module name (other recipes have a prepare.py too)."""
    saved_env, saved_prepare = os.environ.get("AUTORESEARCH_NANOGPT_TINY"), sys.modules.get("prepare")
    os.environ["AUTORESEARCH_NANOGPT_TINY"] = "1" if tiny else "0"
    if prepare_module is not None:
        sys.modules["prepare"] = prepare_module
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        if saved_env is None:
            os.environ.pop("AUTORESEARCH_NANOGPT_TINY", None)
        else:
            os.environ["AUTORESEARCH_NANOGPT_TINY"] = saved_env
        if prepare_module is not None:
            if saved_prepare is None:
                sys.modules.pop("prepare", None)
            else:
                sys.modules["prepare"] = saved_prepare


def _documents(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "ven", "dor", "el", "qua", "zu", "ph", "or", "ith"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(400)]
    extras = ["naïve café", "Grüße aus Köln", "中文字符", "🙂 ok", "<|bos|> is text here", "x = f(12345)\n    return x",
              "3.14159", "don't", "  indented\n\tline"]
    docs = []
    for _ in range(count):
        sentences = []
        for _ in range(rng.randint(2, 30)):
            sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 14)))
            if rng.random() < 0.2:
                sentence += " " + rng.choice(extras)
            sentences.append(sentence.capitalize() + ".")
        docs.append(" ".join(sentences) + ("\n\n" if rng.random() < 0.3 else ""))
    return docs


def _write_shard(path: Path, docs: list[str]) -> None:
    pq.write_table(pa.table({"text": docs}), path, row_group_size=64)


@pytest.fixture(scope="module")
def prep():
    return _load("nanogpt_prepare", RECIPE / "prepare.py")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, prep):
    root = tmp_path_factory.mktemp("shards")
    for i in range(2):
        _write_shard(root / prep.shard_name(i), _documents(i, 300))
    _write_shard(root / prep.shard_name(prep.VAL_SHARD), _documents(100, 60))
    _write_shard(root / prep.shard_name(prep.TEST_SHARD), _documents(101, 60))
    (root / "not-parquet.parquet").write_bytes(b"this is not parquet" * 100)
    return root


class _Handler(BaseHTTPRequestHandler):
    """Static files with byte ranges; server.cut[name] = n sends n bytes of the next answer and hangs up."""

    def do_GET(self):
        server = self.server
        name = self.path.lstrip("/")
        server.requests.append((name, self.headers.get("Range")))
        path = server.root / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        wanted = self.headers.get("Range")
        if wanted and not server.ignore_range:
            start = int(wanted.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = server.cut.pop(name, None)
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(corpus):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.root, httpd.requests, httpd.cut, httpd.ignore_range = corpus, [], {}, False
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def fresh(server, prep, tmp_path, monkeypatch):
    """An empty cache pointed at the local server, retries without waiting."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AUTORESEARCH_NANOGPT_DATA_URL", server.url)
    monkeypatch.delenv("AUTORESEARCH_EVAL_TEST", raising=False)
    monkeypatch.setattr(prep, "RETRY_SECONDS", 0.0)
    server.requests.clear()
    server.cut.clear()
    server.ignore_range = False
    return server


@pytest.fixture(scope="module")
def cache(tmp_path_factory, server, prep):
    """A cache made by prepare.py's own command line against the local server (module-wide: it trains the tokenizer)."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTORESEARCH_CACHE", str(root))
        mp.setenv("AUTORESEARCH_NANOGPT_DATA_URL", server.url)
        mp.setenv("AUTORESEARCH_NANOGPT_TINY", "1")
        mp.delenv("AUTORESEARCH_EVAL_TEST", raising=False)
        done = subprocess.run([sys.executable, "prepare.py", "--num-shards", "2", "--workers", "2"], cwd=RECIPE,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tokenizer: " in done.stdout and "ready in" in done.stdout
    (root / "prepare-output.txt").write_text(done.stdout)
    return root


@pytest.fixture
def prepared(cache, prep, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    monkeypatch.delenv("AUTORESEARCH_EVAL_TEST", raising=False)
    return prep


# ---------------------------------------------------------------------------------------------------------------
# recipe.yaml

def test_recipe_yaml_follows_the_contract():
    recipe = load_recipe(RECIPE)
    assert recipe.name == "nanogpt"
    assert recipe.command == "python train.py"
    assert (recipe.metric, recipe.direction, recipe.budget_seconds) == ("val_bpb", "lower", 300)
    assert recipe.editable == ("train.py",)
    assert set(recipe.fixed) == {"prepare.py", "recipe.yaml"}
    assert recipe.test_metric == "test_bpb"
    assert recipe.description and "\n" not in recipe.description


def test_recipe_yaml_names_the_prepare_and_evaluate_commands():
    spec = yaml.safe_load((RECIPE / "recipe.yaml").read_text())
    assert spec["prepare"] == "python prepare.py"
    assert spec["evaluate"] == "python prepare.py --evaluate"
    assert (spec["metric"], spec["test_metric"]) == ("val_bpb", "test_bpb")
    assert 0 < spec["grace_seconds"] < 180  # start-up, the compile warm-up and saving; no evaluation any more


# ---------------------------------------------------------------------------------------------------------------
# Download

def test_download_resumes_a_broken_transfer_with_a_range_request(fresh, prep, corpus):
    fresh.cut["shard_00000.parquet"] = 1000  # the first answer stops after 1000 bytes
    prep.download_shards(2, workers=2, log=lambda *_: None)
    data = prep.data_dir()
    for i in (0, 1, prep.VAL_SHARD, prep.TEST_SHARD):
        assert prep.shard_path(i).read_bytes() == (corpus / prep.shard_name(i)).read_bytes()
    assert prep.shard_path(prep.VAL_SHARD).parent == prep.heldout_dir()  # held out apart from the training shards
    assert sorted(path.name for path in data.iterdir()) == ["shard_00000.parquet", "shard_00001.parquet"]
    assert ("shard_00000.parquet", "bytes=1000-") in fresh.requests
    assert not list(data.glob("*.partial"))
    fresh.requests.clear()
    prep.download_shards(2, log=lambda *_: None)  # everything is there: no request at all
    assert fresh.requests == []


def test_download_starts_over_when_the_server_ignores_ranges(fresh, prep, corpus):
    fresh.ignore_range = True
    fresh.cut["shard_01822.parquet"] = 777
    dest = prep.shard_path(prep.VAL_SHARD)
    assert prep.download_file(f"{fresh.url}/shard_01822.parquet", dest, log=lambda *_: None)
    assert dest.read_bytes() == (corpus / "shard_01822.parquet").read_bytes()
    assert [r for r in fresh.requests if r[0] == "shard_01822.parquet"] == [("shard_01822.parquet", None),
                                                                          ("shard_01822.parquet", "bytes=777-")]


def test_download_of_a_missing_file_fails_at_once(fresh, prep):
    with pytest.raises(prep.DownloadError, match="404"):
        prep.download_file(f"{fresh.url}/shard_00099.parquet", prep.shard_path(99), log=lambda *_: None)
    assert len(fresh.requests) == 1
    assert not prep.shard_path(99).exists()


def test_a_download_that_is_not_parquet_is_thrown_away(fresh, prep):
    dest = prep.data_dir() / "bad.parquet"
    with pytest.raises(prep.DownloadError, match="gave up after 2 attempts"):
        prep.download_file(f"{fresh.url}/not-parquet.parquet", dest, attempts=2, log=lambda *_: None)
    assert not dest.exists() and not list(prep.data_dir().glob("*.partial"))


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer

def test_tokenizer_round_trips_and_counts_bytes(prepared):
    tok = prepared.load_tokenizer()
    assert 256 < tok.vocab_size <= prepared.VOCAB_SIZE
    assert tok.token_bytes[tok.bos_id] == 0
    text = "Grüße aus Köln: naïve café, 中文字符 🙂 <|bos|> x = f(12345)\n\n\tdon't   stop"
    ids = tok.encode([text])[0]
    assert tok.decode(ids) == text
    assert tok.bos_id not in ids  # a literal <|bos|> in the text stays text
    assert sum(tok.token_bytes[i] for i in ids) == len(text.encode("utf-8"))
    assert len(ids) < len(text.encode("utf-8"))  # it did learn merges


# ---------------------------------------------------------------------------------------------------------------
# Packing and the loader

def test_packing_fills_rows_exactly_from_document_starts(prep):
    rng = random.Random(0)
    docs, next_token = [], 1
    for _ in range(200):
        length = rng.randint(1, 40)
        docs.append(torch.tensor([0] + list(range(next_token, next_token + length)), dtype=torch.int32))
        next_token += length
    rows = list(prep.pack_rows(iter(docs), 17, buffer_docs=16))
    assert len(rows) > 50
    starts = {int(d[1]): d for d in docs}
    used = set()
    for row in rows:
        assert row.shape == (17,) and int(row[0]) == 0  # full rows, each from a document start, no padding
        bos = (row == 0).nonzero().flatten().tolist() + [17]
        for a, b in zip(bos, bos[1:]):
            piece = row[a:b]
            if len(piece) == 1:  # a row may end on a cropped document's <|bos|>: a real "document ends" target
                assert b == 17
                continue
            doc = starts[int(piece[1])]
            assert torch.equal(piece, doc[:b - a])  # a whole document, or the head of the one cropped
            assert int(piece[1]) not in used  # no document twice
            used.add(int(piece[1]))
    again = list(prep.pack_rows(iter(docs), 17, buffer_docs=16))
    assert len(again) == len(rows) and all(torch.equal(a, b) for a, b in zip(rows, again))  # deterministic


def test_dataloader_gives_shifted_packed_batches(prepared):
    loader = prepared.make_dataloader("train", 3, 16, "cpu")
    bos = prepared.load_tokenizer().bos_id
    for _ in range(5):
        x, y = next(loader)
        assert x.shape == y.shape == (3, 16) and x.dtype == y.dtype == torch.int64
        assert (x[:, 0] == bos).all()
        assert torch.equal(x[:, 1:], y[:, :-1])
    loader.close()
    val = prepared.make_dataloader("val", 4, 64, "cpu")
    assert sum(1 for _ in val) > 0  # the validation split is finite: the loop ends


def test_prepare_prints_show_and_hide_lines_that_keep_the_held_out_data_apart(prepared, cache):
    output = (cache / "prepare-output.txt").read_text().splitlines()
    shown = [Path(line[6:]) for line in output if line.startswith("show: ")]
    hidden = [Path(line[6:]) for line in output if line.startswith("hide: ")]
    assert shown == [prepared.data_dir().resolve(), prepared.tokenizer_path().parent.resolve()]
    assert hidden == [prepared.heldout_dir().resolve()]
    held_out_files = [prepared.shard_path(prepared.VAL_SHARD), prepared.shard_path(prepared.TEST_SHARD),
                      *prepared.heldout_dir().glob("eval/*.pt")]
    assert len(held_out_files) == 3 and all(path.is_file() for path in held_out_files)
    for path in held_out_files:
        assert hidden[0] in path.resolve().parents and not any(folder in path.resolve().parents for folder in shown)


def test_an_old_cache_is_moved_into_the_held_out_folder(prep, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path))
    (tmp_path / "nanogpt" / "data").mkdir(parents=True)
    (tmp_path / "nanogpt" / "eval").mkdir()
    (tmp_path / "nanogpt" / "eval" / "val_rows.pt").write_bytes(b"rows")
    for index in (0, prep.VAL_SHARD, prep.TEST_SHARD):  # where the held-out shards used to be
        (tmp_path / "nanogpt" / "data" / prep.shard_name(index)).write_bytes((corpus / prep.shard_name(index)).read_bytes())
    assert len(prep.hide_paths()) == 4  # until moved, wherever it is
    prep.move_heldout_out_of_data()
    assert [path.name for path in prep.data_dir().iterdir()] == ["shard_00000.parquet"]
    assert prep.shard_path(prep.TEST_SHARD).is_file() and (prep.heldout_dir() / "eval" / "val_rows.pt").is_file()
    assert prep.hide_paths() == [prep.heldout_dir()]


# ---------------------------------------------------------------------------------------------------------------
# Evaluation

class _Uniform(torch.nn.Module):
    """Predicts every token with probability 1/vocab."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        return torch.zeros(idx.size(0), idx.size(1), self.vocab) + 0 * self.anchor


def _run_evaluation(cache: Path, model_dir: Path, workdir: Path, split: str = "val") -> subprocess.CompletedProcess:
    """The evaluation as the harness runs it: the fixed files in a fresh folder, python -I -B, a clean environment."""
    workdir.mkdir(parents=True)
    for name in ("prepare.py", "recipe.yaml"):
        shutil.copy(RECIPE / name, workdir)
    env = {"PATH": os.environ["PATH"], "AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_MODEL_DIR": str(model_dir),
           "AUTORESEARCH_SPLIT": split, "AUTORESEARCH_SEED": "0", "AUTORESEARCH_NANOGPT_TINY": "1"}
    command = yaml.safe_load((RECIPE / "recipe.yaml").read_text())["evaluate"].split()
    return subprocess.run([sys.executable, "-I", "-B", *command[1:]], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_evaluation_scores_a_uniform_model_in_its_own_process(prepared, cache, tmp_path, monkeypatch):
    tok = prepared.load_tokenizer()
    rows = prepared.eval_rows("val")
    assert rows.shape == (prepared.EVAL_TOKENS // prepared.MAX_SEQ_LEN, prepared.MAX_SEQ_LEN + 1)
    assert torch.equal(prepared.eval_rows("val"), rows)  # cached and stable
    nbytes = torch.tensor(tok.token_bytes)[rows[:, 1:].long()]
    expected = math.log2(tok.vocab_size) * int((nbytes > 0).sum()) / int(nbytes.sum())

    monkeypatch.setenv("AUTORESEARCH_OUTPUT_DIR", str(tmp_path / "model"))
    prepared.save_model(_Uniform(tok.vocab_size), context=prepared.MAX_SEQ_LEN // 2)  # a shorter context: same bytes
    done = _run_evaluation(cache, tmp_path / "model", tmp_path / "eval")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = parse_summary(done.stdout)
    assert summary["val_bpb"] == pytest.approx(expected, rel=1e-5)
    assert summary["eval_bytes"] == int(nbytes.sum()) and summary["eval_context"] == prepared.MAX_SEQ_LEN // 2


def test_the_evaluation_fails_on_a_tampered_held_out_shard(prepared, cache, tmp_path, monkeypatch):
    copy = tmp_path / "cache"
    for name in ("data", "tokenizer", "heldout"):
        shutil.copytree(cache / "nanogpt" / name, copy / "nanogpt" / name)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(copy))
    vocab = prepared.load_tokenizer().vocab_size
    monkeypatch.setenv("AUTORESEARCH_OUTPUT_DIR", str(tmp_path / "model"))
    prepared.save_model(_Uniform(vocab))
    _write_shard(prepared.shard_path(prepared.VAL_SHARD), _documents(999, 60))  # other text under the same name
    done = _run_evaluation(copy, tmp_path / "model", tmp_path / "eval")
    assert done.returncode not in (0, lm.REFUSED_EXIT_CODE), done.stdout + done.stderr
    assert "HeldOutDataError" in done.stdout.splitlines()[-1] and "has changed since it was prepared" in done.stdout


# ---------------------------------------------------------------------------------------------------------------
# train.py

def _run_train(cache: Path, recipe: Path = RECIPE, budget: str = "2", **extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env.update({"AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_NANOGPT_TINY": "1", "AUTORESEARCH_TIME_BUDGET": budget,
                "AUTORESEARCH_SEED": "3", "AUTORESEARCH_NANOGPT_DEVICE": "cpu", **extra})
    return subprocess.run([sys.executable, "train.py"], cwd=recipe, env=env, capture_output=True, text=True,
                          timeout=180)


@pytest.mark.slow
def test_train_tiny_saves_a_model_that_the_evaluation_scores(cache, tmp_path):
    done = _run_train(cache, AUTORESEARCH_OUTPUT_DIR=str(tmp_path / "model"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = parse_summary(done.stdout)
    for key in SUMMARY_KEYS:
        assert key in summary, key
    assert "val_bpb" not in summary and "evaluation:" not in done.stdout  # the training measures nothing
    assert summary["num_steps"] >= 1 and summary["depth"] == 2
    assert 2 <= summary["training_seconds"] < 30
    assert "mfu_percent" not in summary  # no GPU, no MFU
    for split in ("val", "test"):
        scored = _run_evaluation(cache, tmp_path / "model", tmp_path / f"eval-{split}", split)
        assert scored.returncode == 0, scored.stdout + scored.stderr
        value = parse_summary(scored.stdout)[f"{split}_bpb"]
        assert math.isfinite(value) and 0 < value < 20


@pytest.mark.slow
def test_train_fails_fast_on_a_diverging_loss(cache, tmp_path):
    recipe = tmp_path / "nanogpt"
    shutil.copytree(RECIPE, recipe, ignore=shutil.ignore_patterns("__pycache__"))
    source = (recipe / "train.py").read_text()
    assert "\nEMBEDDING_LR = " in source
    (recipe / "train.py").write_text(source.replace("\nEMBEDDING_LR = ", "\nEMBEDDING_LR = float('nan') or ", 1))
    done = _run_train(cache, recipe, budget="60", AUTORESEARCH_OUTPUT_DIR=str(tmp_path / "model"))
    assert done.returncode != 0
    assert "FAIL: training loss is nan at step 2" in done.stdout
    assert not (tmp_path / "model").exists()


def test_mfu_peak_table_knows_common_gpus_and_not_others(prep, monkeypatch):
    monkeypatch.delenv("AUTORESEARCH_NANOGPT_PEAK_TFLOPS", raising=False)
    train = _load("nanogpt_train", RECIPE / "train.py", prepare_module=prep)
    peak = train.gpu_peak_tflops
    assert peak("NVIDIA H100 80GB HBM3") == 989.4
    assert peak("NVIDIA H100 PCIe") == 756.0
    assert peak("NVIDIA H100 NVL") == 835.0
    assert peak("NVIDIA H200") == 989.4
    assert peak("NVIDIA A100-SXM4-80GB") == peak("NVIDIA A100 80GB PCIe") == 312.0
    assert peak("NVIDIA L4") == 121.0
    assert peak("NVIDIA L40S") == 362.05
    assert peak("NVIDIA L40") == 181.05
    assert peak("NVIDIA GeForce RTX 4090") == 165.2
    assert peak("NVIDIA GeForce RTX 3090") == 71.0
    for unknown in ("Tesla T4", "NVIDIA A10G", "NVIDIA GeForce RTX 4090 D", "Some Future GPU"):
        assert peak(unknown) is None, unknown
    monkeypatch.setenv("AUTORESEARCH_NANOGPT_PEAK_TFLOPS", "100")
    assert peak("Some Future GPU") == 100.0
    assert train.lr_multiplier(0.0) == 1.0 and train.lr_multiplier(0.75) == pytest.approx(0.5)
    assert train.lr_multiplier(1.0) == 0.0
