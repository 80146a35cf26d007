"""Tests of autoresearch.lm: toy models made here, really exported into temporary folders, loaded,
checked and scored; hostile archives written by hand."""

from __future__ import annotations

import io
import json
import math
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._subclasses import FakeTensorMode

from autoresearch import lm

VOCAB = 32
WIDTH = 16
CONTEXT = 16


class CausalToy(nn.Module):
    """Embedding, one causal attention layer, a head: an honest language model."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, tokens):
        x = self.embed(tokens)
        batch, time_steps, _ = x.shape
        q, k, v = self.qkv(x).view(batch, time_steps, 3, 2, WIDTH // 2).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, time_steps, WIDTH)
        return self.head(x + y)


def next_tokens(tokens):
    return F.pad(tokens[:, 1:], (0, 1))


class NextTokenPeeker(CausalToy):
    def forward(self, tokens):
        return super().forward(tokens) + 4.0 * F.one_hot(next_tokens(tokens), VOCAB)


class TextPeeker(CausalToy):
    """Peeks at the next token only in rows that look like the evaluation text (low token ids), so
    that random tokens find it honest."""

    def forward(self, tokens):
        text_like = (tokens < VOCAB // 2).all(dim=1)[:, None, None]
        return super().forward(tokens) + 4.0 * F.one_hot(next_tokens(tokens), VOCAB) * text_like


class RowReader(CausalToy):
    """Mixes in the batch's mean: a row's logits depend on the other rows (the next window, say)."""

    def forward(self, tokens):
        logits = super().forward(tokens)
        return logits + 0.5 * logits.mean(dim=0, keepdim=True)


class Counter(CausalToy):
    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, tokens):
        self.calls += 1
        return super().forward(tokens) + self.calls


class NoisyToy(CausalToy):
    def forward(self, tokens):
        logits = super().forward(tokens)
        return logits + 0.01 * torch.rand_like(logits)


class UninitialisedToy(CausalToy):
    def forward(self, tokens):
        logits = super().forward(tokens)
        return logits + 0 * torch.empty_like(logits)


class NarrowHead(CausalToy):
    def forward(self, tokens):
        return super().forward(tokens)[..., :-1]


class LastPositionOnly(CausalToy):
    def forward(self, tokens):
        return super().forward(tokens)[:, -1]


class FixedBatch(CausalToy):
    def forward(self, tokens):
        return super().forward(tokens).view(2, CONTEXT, VOCAB)


class Bigram(nn.Module):
    """Predicts from the current token only: its loss at a position is the same in any window."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(VOCAB, VOCAB)

    def forward(self, tokens):
        return self.table(tokens)


def save(model: nn.Module, folder: Path, context: int = CONTEXT, **options) -> Path:
    torch.manual_seed(0)
    lm.save_model(model, torch.zeros(2, context, dtype=torch.long), folder, **options)
    return folder


def export(model: nn.Module) -> torch.export.ExportedProgram:
    return torch.export.export(model, (torch.zeros(2, CONTEXT, dtype=torch.long),),
                               dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1000)},))


def save_program(program: torch.export.ExportedProgram, folder: Path) -> Path:
    """Write a model folder the way a training that skips save_model could."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    (folder / lm.MODEL_FILE).write_bytes(buffer.getvalue())
    meta = {"format": lm.FORMAT_VERSION, "context": CONTEXT, "vocab_size": VOCAB, "device": "cpu", "autocast": None}
    (folder / lm.META_FILE).write_text(json.dumps(meta))
    return folder


def segments(count: int, tokens: int, seed: int = 1, high: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, high, (count, tokens), generator=torch.Generator().manual_seed(seed))


def evaluate(folder: Path, data: torch.Tensor, token_bytes: torch.Tensor | None = None,
             tokens_per_call: int = 64, seed: int = 0) -> lm.Evaluation:
    return lm.evaluate(folder, data, torch.ones(VOCAB) if token_bytes is None else token_bytes,
                       vocab_size=VOCAB, max_context=128, seed=seed, tokens_per_call=tokens_per_call)


def refusal(folder: Path, data: torch.Tensor | None = None) -> str:
    with pytest.raises(lm.ModelRefused) as caught:
        evaluate(folder, segments(2, 4 * CONTEXT + 1) if data is None else data)
    return caught.value.reason


def rewrite_archive(folder: Path, change) -> None:
    """Apply `change` to the members of folder/model.pt2 (a dict from name inside the root to bytes)."""
    path = folder / lm.MODEL_FILE
    with zipfile.ZipFile(path) as archive:
        root = archive.namelist()[0].split("/")[0]
        members = {info.filename.split("/", 1)[1]: archive.read(info) for info in archive.infolist()}
    change(members)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(f"{root}/{name}", data)


def rewrite_program(folder: Path, change) -> None:
    def edit(members):
        program = json.loads(members["models/model.json"])
        change(program)
        members["models/model.json"] = json.dumps(program).encode()
    rewrite_archive(folder, edit)


# ---------------------------------------------------------------------------------------------
# Scoring


def test_an_honest_causal_model_is_scored_as_a_direct_computation(tmp_path):
    model = CausalToy()
    folder = save(model, tmp_path)
    data = segments(3, 4 * CONTEXT + 1)
    token_bytes = 1 + torch.arange(VOCAB) % 3
    token_bytes[0] = 0  # a token of no bytes (a document boundary): never scored
    result = evaluate(folder, data, token_bytes, tokens_per_call=3 * CONTEXT)

    nats, total_bytes, counted = 0.0, 0, 0
    with torch.no_grad():
        for row in data:
            for start in range(0, 4 * CONTEXT, CONTEXT):
                inputs, targets = row[start:start + CONTEXT], row[start + 1:start + CONTEXT + 1]
                losses = F.cross_entropy(model(inputs[None])[0], targets, reduction="none")
                nats += float(losses[token_bytes[targets] > 0].sum())
                total_bytes += int(token_bytes[targets].sum())
                counted += int((token_bytes[targets] > 0).sum())
    assert result.score.bytes == total_bytes and result.score.tokens == counted
    assert result.score.bits_per_byte == pytest.approx(nats / (math.log(2) * total_bytes), rel=1e-5)
    assert result.score.calls >= lm.MIN_CALLS and result.score.context == CONTEXT


def test_the_scored_positions_do_not_depend_on_the_context(tmp_path):
    model = Bigram()
    data = segments(2, 101)
    with torch.no_grad():
        direct = sum(float(F.cross_entropy(model(row[None, :-1])[0], row[1:], reduction="sum")) for row in data)
    scores = []
    for context in (7, 16, 50, 100):
        score = evaluate(save(model, tmp_path / str(context), context=context), data).score
        assert (score.tokens, score.bytes) == (200, 200)
        scores.append(score.bits_per_byte)
    assert scores == pytest.approx([direct / (math.log(2) * 200)] * 4, rel=1e-6)


@pytest.mark.parametrize("context", [1, 5, 16, 33, 64])
def test_windows_score_every_position_but_the_first_exactly_once(context):
    scored = []
    for window in lm.plan_windows(3, 65, context):
        scored += [(window.segment, window.start + offset + 1) for offset in range(window.first_scored, context)]
        assert 0 <= window.start and window.start + context <= 64
    assert sorted(scored) == [(segment, position) for segment in range(3) for position in range(1, 65)]


@pytest.mark.parametrize("windows, rows", [(512, 128), (37, 8), (6, 100), (4, 100), (1000, 16)])
def test_calls_keep_neighbouring_windows_apart(windows, rows):
    plan = lm.plan_calls(windows, rows, torch.Generator().manual_seed(7))
    assert sorted(index for call in plan for index in call) == list(range(windows))
    call_of = {index: number for number, call in enumerate(plan) for index in call}
    for window in range(windows - 1):
        assert call_of[window] != call_of[window + 1]
        if windows >= lm.MIN_CALLS:
            assert abs(call_of[window] - call_of[window + 1]) != 1
    assert max(map(len, plan)) <= max(rows, math.ceil(windows / len(plan)))
    assert lm.plan_calls(windows, rows, torch.Generator().manual_seed(7)) == plan  # seeded


# ---------------------------------------------------------------------------------------------
# Refusals: behaviour


def test_a_model_that_reads_the_next_token_is_refused(tmp_path):
    reason = refusal(save(NextTokenPeeker(), tmp_path))
    assert reason.startswith("not causal: changing the tokens after position")


def test_a_model_that_peeks_only_at_text_is_caught_while_scoring(tmp_path):
    folder = save(TextPeeker(), tmp_path)
    model = lm.load_model(folder, vocab_size=VOCAB, max_context=64)
    lm.check_model(model, rows=4, seed=0)  # random tokens: it looks honest
    reason = refusal(folder, segments(2, 4 * CONTEXT + 1, high=VOCAB // 2))
    assert reason.startswith("not causal")


def test_a_model_that_reads_another_row_is_refused(tmp_path):
    assert refusal(save(RowReader(), tmp_path)).startswith("rows are not independent")


def test_a_model_with_a_mutated_buffer_is_refused(tmp_path):
    reason = refusal(save(Counter(), tmp_path))
    assert "writes to calls" in reason and "state" in reason


@pytest.mark.parametrize("model, words", [(NoisyToy(), "draws random numbers"),
                                          (UninitialisedToy(), "uninitialised memory")])
def test_random_and_uninitialised_operators_are_refused(tmp_path, model, words):
    assert words in refusal(save(model, tmp_path))


def test_a_graph_that_reads_a_file_is_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(range(32)))
    program = export(CausalToy())
    graph = program.graph
    with graph.inserting_before(list(graph.nodes)[-1]):  # made by hand: export cannot trace from_file
        node = graph.call_function(torch.ops.aten.from_file.default, (str(secret),), {"size": 32, "dtype": torch.uint8})
    with FakeTensorMode():
        node.meta["val"] = torch.zeros(32, dtype=torch.uint8)
    assert "aten::from_file reads, writes or prints outside the graph" in refusal(save_program(program, tmp_path))


def test_a_wrong_output_shape_is_refused(tmp_path):
    for name, model in (("narrow", NarrowHead()), ("last", LastPositionOnly())):
        assert "output has shape" in refusal(save_program(export(model), tmp_path / name))
    assert "predicts 31 tokens" in refusal(save(NarrowHead(), tmp_path / "saved"))
    with pytest.raises(lm.ExportFailed, match=r"logits \(batch, time, vocab\)"):  # the training learns it first
        save(LastPositionOnly(), tmp_path / "saved-last")


def test_a_fixed_batch_cannot_be_saved(tmp_path):
    with pytest.raises(lm.ExportFailed, match="torch.export could not export"):
        save(FixedBatch(), tmp_path)


def test_context_and_vocabulary_must_fit_the_recipe(tmp_path):
    folder = save(CausalToy(), tmp_path)
    with pytest.raises(lm.ModelRefused, match="context is 16 tokens; this recipe evaluates at most 8"):
        lm.load_model(folder, vocab_size=VOCAB, max_context=8)
    with pytest.raises(lm.ModelRefused, match="predicts 32 tokens; this recipe's vocabulary has 256"):
        lm.load_model(folder, vocab_size=256, max_context=64)
    meta = json.loads((folder / lm.META_FILE).read_text())
    (folder / lm.META_FILE).write_text(json.dumps({**meta, "context": 8}))  # a lie about the context
    with pytest.raises(lm.ModelRefused, match="time dimension is 16, not its declared context 8"):
        lm.load_model(folder, vocab_size=VOCAB, max_context=64)


def test_a_folder_without_a_complete_model_is_missing(tmp_path):
    with pytest.raises(lm.ModelMissing, match="holds nothing"):
        lm.load_model(tmp_path, vocab_size=VOCAB, max_context=64)
    save(CausalToy(), tmp_path)
    (tmp_path / lm.META_FILE).unlink()  # written last: a save cut short leaves none
    with pytest.raises(lm.ModelMissing, match="must call save_model"):
        lm.load_model(tmp_path, vocab_size=VOCAB, max_context=64)


# ---------------------------------------------------------------------------------------------
# Refusals: hostile archives never run their code


def marker_command(marker: Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


class TouchMarker:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_weight_is_refused_and_never_unpickled(tmp_path):
    folder, marker = save(CausalToy(), tmp_path / "model"), tmp_path / "pickle-ran"

    def pickle_first_weight(members):
        config = json.loads(members["data/weights/model_weights_config.json"])
        entry = next(iter(config["config"].values()))
        entry["use_pickle"] = True
        members["data/weights/model_weights_config.json"] = json.dumps(config).encode()
        members[f"data/weights/{entry['path_name']}"] = pickle.dumps(TouchMarker(marker))

    rewrite_archive(folder, pickle_first_weight)
    assert "is pickled" in refusal(folder)
    assert not marker.exists()


def test_pickled_sample_inputs_are_loaded_weights_only(tmp_path):
    folder, marker = save(CausalToy(), tmp_path / "model"), tmp_path / "pickle-ran"
    # torch unpickles the sample inputs always, and retries with weights_only=False when that fails
    rewrite_archive(folder, lambda members: members.update({"data/sample_inputs/model.pt": pickle.dumps(TouchMarker(marker))}))
    assert "cannot be loaded" in refusal(folder)
    assert not marker.exists()


def test_guard_code_in_the_archive_is_never_run(tmp_path):
    folder, marker = save(CausalToy(), tmp_path / "model"), tmp_path / "guard-ran"
    rewrite_program(folder, lambda program: program.update(guards_code=[marker_command(marker) + " or True"]))
    assert evaluate(folder, segments(1, 2 * CONTEXT + 1)).score.tokens == 2 * CONTEXT
    assert not marker.exists()


def test_a_symbolic_expression_with_code_is_refused(tmp_path):
    folder, marker = save(CausalToy(), tmp_path / "model"), tmp_path / "sympify-ran"

    def inject(program):
        values = program["graph_module"]["graph"]["sym_int_values"]
        next(iter(values.values()))["as_expr"]["expr_str"] = marker_command(marker)

    rewrite_program(folder, inject)
    assert "symbolic expression" in refusal(folder)
    assert not marker.exists()


def test_a_call_of_anything_but_an_operator_is_refused(tmp_path):
    folder = save(CausalToy(), tmp_path / "model")

    def call_os_system(program):
        program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"

    rewrite_program(folder, call_os_system)
    assert "the graph calls 'torch.os.system'" in refusal(folder)


def test_an_archive_with_compiled_code_is_refused(tmp_path):
    folder = save(CausalToy(), tmp_path / "model")
    rewrite_archive(folder, lambda members: members.update({"data/aotinductor/model/model.so": b"\x7fELF"}))
    assert "compiled code" in refusal(folder)


def test_a_file_that_is_not_an_archive_is_refused(tmp_path):
    folder = save(CausalToy(), tmp_path / "model")
    (folder / lm.MODEL_FILE).write_bytes(b"val_bpb: 0.1\n")
    assert "not a torch.export archive" in refusal(folder)


# ---------------------------------------------------------------------------------------------
# Saving


def test_a_compiled_model_is_saved_through_its_original_module(tmp_path):
    model = CausalToy()
    compiled = torch.compile(model, backend="eager")
    tokens = segments(2, CONTEXT)
    expected = compiled(tokens)
    saved = lm.save_model(compiled, torch.zeros(2, CONTEXT, dtype=torch.long), tmp_path)
    assert (saved.context, saved.vocab_size) == (CONTEXT, VOCAB) and saved.size_bytes > 0
    loaded = lm.load_model(tmp_path, vocab_size=VOCAB, max_context=64)
    assert torch.equal(loaded.logits(tokens), expected.detach())
    assert not any(name.startswith("_orig_mod") for name in loaded.program.state_dict)


def test_bf16_autocast_is_written_into_the_graph(tmp_path):
    model = CausalToy()
    tokens = segments(3, CONTEXT)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        expected = model(tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the training's own autocast does not leak in
        lm.save_model(model, torch.zeros(2, CONTEXT, dtype=torch.long), tmp_path, autocast_dtype=torch.bfloat16)
    loaded = lm.load_model(tmp_path, vocab_size=VOCAB, max_context=64)
    logits = loaded.logits(tokens)  # no autocast here: the casts are in the graph
    assert logits.dtype == torch.bfloat16 and torch.equal(logits, expected)
    assert json.loads((tmp_path / lm.META_FILE).read_text())["autocast"] == "bfloat16"
    assert evaluate(tmp_path, segments(2, 4 * CONTEXT + 1)).score.tokens == 8 * CONTEXT  # causal in bf16 too


def test_save_model_leaves_the_model_in_training_mode(tmp_path):
    model = CausalToy().train()
    save(model, tmp_path)
    assert model.training
    assert sorted(path.name for path in tmp_path.iterdir()) == [lm.META_FILE, lm.MODEL_FILE]


# ---------------------------------------------------------------------------------------------
# The evaluation process's verdict


def scored(request: lm.EvaluationRequest) -> dict[str, float]:
    result = evaluate(request.model_dir, segments(1, 2 * CONTEXT + 1), seed=request.seed)
    return {f"{request.split}_bpb": result.score.bits_per_byte}


@pytest.mark.parametrize("model, code, last_line", [
    (CausalToy(), 0, "test_bpb: "),
    (NextTokenPeeker(), lm.REFUSED_EXIT_CODE, "refused: not causal"),
    (None, lm.FAILED_EXIT_CODE, "error: ModelMissing: no saved model"),
])
def test_run_evaluation_prints_a_verdict_and_exits_with_its_code(tmp_path, monkeypatch, capsys, model, code,
                                                                last_line):
    if model is not None:
        save(model, tmp_path)
    monkeypatch.setenv(lm.MODEL_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(lm.SPLIT_ENV, "test")
    monkeypatch.setenv(lm.SEED_ENV, "5")
    assert lm.run_evaluation(scored) == code
    assert capsys.readouterr().out.splitlines()[-1].startswith(last_line)


def test_a_request_without_a_model_folder_or_with_a_bad_split_fails(monkeypatch):
    with pytest.raises(lm.EvaluationRequestError, match=lm.MODEL_DIR_ENV):
        lm.read_request({})
    with pytest.raises(lm.EvaluationRequestError, match="val, test"):
        lm.read_request({lm.MODEL_DIR_ENV: "/x", lm.SPLIT_ENV: "train"})
    assert lm.read_request({lm.MODEL_DIR_ENV: "/x"}) == lm.EvaluationRequest(Path("/x"), "val", 0)


def test_held_out_data_must_be_what_prepare_recorded(tmp_path):
    data = tmp_path / "val.bin"
    data.write_bytes(b"held out")
    recorded = lm.sha256_of(data)
    assert lm.check_held_out(data, recorded, "run prepare") == data
    data.write_bytes(b"held 0ut")
    with pytest.raises(lm.HeldOutDataError, match="has changed since it was prepared.*: run prepare"):
        lm.check_held_out(data, recorded, "run prepare")
    with pytest.raises(lm.HeldOutDataError, match="recorded sha256 is missing"):
        lm.check_held_out(data, None, "run prepare")
