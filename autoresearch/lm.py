"""Language models for the harness: the saved-model format, the checks before scoring, bits per byte.

The training is untrusted code, so it never measures itself. It saves its model with `save_model`
and exits; then the harness runs the recipe's `prepare.py --evaluate` in a separate process, which
hands its held-out tokens to `evaluate` here. The recipe brings only data (token segments, the bytes
of each token, its limits); everything that decides the number lives in this module, which imports
nothing from a recipe.

The model folder (AUTORESEARCH_OUTPUT_DIR of the training, AUTORESEARCH_MODEL_DIR of the evaluation):
  model.pt2    a torch.export archive of a module mapping a LongTensor (batch, time) of token ids to
               (batch, time, vocab) logits: the batch is dynamic, the time static at the model's context
  model.json   {"format", "context", "vocab_size", "device", "autocast", "torch"}; written last, so a
               folder with it holds a complete model

Why the time is static: the evaluation only ever feeds windows of exactly the model's context (the
last, partial window of a segment is a full window that overlaps the one before it and scores only
its new positions), so a dynamic time would buy nothing; with one shape for every call a model cannot
tell a check from a scoring call by its length; and export with a dynamic time fails on models that
specialise on their length (a view with the constant SEQ_LEN), which turns a good experiment into a
crash.

Autocast: export ignores an autocast context around it (the casts are not recorded, measured on torch
2.13), so `save_model` wraps the model in one inside its forward and inlines it into explicit casts:
the graph computes in the dtype the evaluation will use, with no autocast needed there.

Loading an untrusted archive: `torch.export.load` unpickles weights with weights_only=False, hands
strings of the archive's JSON to sympy.sympify (an eval), execs the guard code it finds there and
loads AOTInductor shared libraries. So `load_model` first rebuilds the archive in memory from only
the members a saved model has: no pickled payload, no guard code, no metadata, names that are plain
identifiers, targets that are aten or prims operators, symbolic expressions of symbols, integers and
arithmetic; and torch.load runs forced to weights-only.

What a model must be, or `ModelRefused` says why (the evaluation exits 3 with `refused: <reason>`):
  * only aten and prims operators, and none that
      - reads, writes or prints outside the graph: a name with `file`, `save`, `load` or `print` in
        it (in torch 2.13's aten: from_file, save, _print);
      - returns uninitialised memory: a name with `empty` in it (memory a caching allocator hands
        back can still hold an earlier call's tokens);
      - writes in place (a mutable schema) or draws random numbers (tagged nondeterministic_seeded:
        a leak could hide behind noise);
    no higher-order operators (save_model inlines autocast), no custom namespaces, no submodules;
  * no mutated buffers or inputs (graph_signature.buffers_to_mutate, user_inputs_to_mutate): a
    model that keeps state between calls could carry one batch's tokens into the next;
  * an input (batch, context) of int64 with a dynamic batch, an output (batch, context, vocab),
    finite logits;
  * causal: changing the tokens after position t leaves the predictions up to t unchanged, and
    rows independent: changing one row leaves every other row unchanged, first on random tokens,
    then on every scored batch (each one is run again with half of its rows cut at a random point
    and continued with other text, the other half untouched).

The tolerance is CAUSALITY_TOLERANCE_NATS on the log-probabilities, for fp32 and bf16 alike. Two
calls of one shape run the same kernels in the same order, so an honest model's predictions are
bitwise equal (measured: 0.0 on CPU in fp32 and in bf16 autocast); the tolerance only absorbs
rounding of the fp32 log-softmax. It bounds what a leak under it could gain where it is checked: the
target's log-probability moves by at most 1e-4 nats, 0.00015 bits per token, far under any recipe's
noise.

Scoring: every segment of the held-out data is a run of tokens whose first token is only context;
the windows of the model's context cover every other position exactly once, whatever the context, so
the scored positions and the bytes are the same for every model. The windows go into calls by a
seeded rule under which neighbouring windows are never in one call nor in consecutive calls, and the
rows of a call are shuffled. The model gets the inputs only, in fresh tensors of their own (a view of
the segments would let `as_strided` read the targets out of the same storage); the cross-entropy is
computed here from its logits.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import operator
import os
import re
import stat
import sys
import time
import traceback
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

MODEL_FILE = "model.pt2"
META_FILE = "model.json"
FORMAT_VERSION = 1
ARCHIVE_ROOT = "model"

MODEL_DIR_ENV = "AUTORESEARCH_MODEL_DIR"
SPLIT_ENV = "AUTORESEARCH_SPLIT"
SEED_ENV = "AUTORESEARCH_SEED"
SPLITS = ("val", "test")
REFUSED_EXIT_CODE = 3
FAILED_EXIT_CODE = 1

MODEL_BYTES_ENV = "AUTORESEARCH_MODEL_BYTES"  # the harness's quota for a saved model (recipe.yaml disk_quota_mb)
MAX_MODEL_BYTES = 64 << 30  # without it
MAX_META_BYTES = 1 << 20

MAX_BATCH = 1 << 16
CAUSALITY_TOLERANCE_NATS = 1e-4
RANDOM_CHECKS = 3  # batches of random tokens checked before scoring
MIN_CALLS = 5  # the fewest calls that let neighbouring windows avoid consecutive calls

ALLOWED_NAMESPACES = frozenset({"aten", "prims"})
OUTSIDE_WORDS = ("file", "save", "load", "print")
UNINITIALISED_WORD = "empty"
SYMBOLIC_OPERATORS = frozenset({
    operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv,
    operator.mod, operator.pow, operator.neg, operator.pos, operator.eq, operator.ne, operator.lt,
    operator.le, operator.gt, operator.ge, operator.and_, operator.or_, math.trunc, torch.sym_not,
    torch.sym_int, torch.sym_float, torch.sym_ite, torch.sym_max, torch.sym_min, torch.sym_sqrt,
})
ALLOWED_INPUT_KINDS = frozenset({"PARAMETER", "BUFFER", "CONSTANT_TENSOR", "USER_INPUT"})


# ---------------------------------------------------------------------------------------------
# Errors


class LMError(Exception):
    """A problem of the language-model evaluation."""


class ModelRefused(LMError):
    """The saved model is not one the evaluation scores: it is not causal, uses a forbidden
    operator, keeps state, has the wrong shapes, or is not a saved model at all."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ModelMissing(LMError):
    """The folder holds no complete saved model (the training did not save one)."""


class ExportFailed(LMError):
    """torch.export could not capture the model."""


class EvaluationRequestError(LMError):
    """The evaluation was started without what the harness hands it."""


class HeldOutDataError(LMError):
    """The held-out data is not what prepare wrote (changed, truncated or missing)."""


# ---------------------------------------------------------------------------------------------
# Saving (in the training process)


@dataclass(frozen=True)
class SavedModel:
    directory: Path
    context: int
    vocab_size: int
    seconds: float
    size_bytes: int


class AutocastModel(torch.nn.Module):
    """Runs the wrapped model under autocast, so that export records the casts in the graph."""

    def __init__(self, model: torch.nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(tokens)


def save_model(model: torch.nn.Module, example_tokens: torch.Tensor, directory: str | Path, *,
               autocast_dtype: torch.dtype | None = None) -> SavedModel:
    """Export `model` (tokens (batch, time) -> logits (batch, time, vocab)) into `directory`.

    `example_tokens` is a LongTensor of at least two rows on the model's device; its length is the
    model's context. A torch.compile'd model is exported through its original module. With
    `autocast_dtype` the graph computes under autocast in that dtype, as the evaluation will run it.
    """
    started = time.perf_counter()
    directory = Path(directory)
    if example_tokens.dim() != 2 or example_tokens.dtype != torch.long:
        raise ValueError(f"example_tokens must be a LongTensor (batch, time), not {example_tokens.dtype} "
                         f"of shape {tuple(example_tokens.shape)}")
    rows, context = example_tokens.shape
    if rows < 2:
        raise ValueError("example_tokens needs at least two rows: export fixes a dimension of size 1")
    module = getattr(model, "_orig_mod", model)  # what torch.compile wraps
    device_type = example_tokens.device.type
    exported = AutocastModel(module, device_type, autocast_dtype) if autocast_dtype else module
    was_training = module.training
    module.eval()
    try:
        with torch.autocast(device_type, enabled=False):  # an autocast around export would be lost
            program = torch.export.export(
                exported, (example_tokens,),
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},))
            program = program.run_decompositions({})  # functional, autocast inlined into casts
    except Exception as exc:
        raise ExportFailed(f"torch.export could not export the model: {type(exc).__name__}: "
                           f"{one_line(str(exc))[:800]}") from exc
    finally:
        module.train(was_training)
    logits = _output_value(program)
    if logits is None or logits.dim() != 3:
        raise ExportFailed("the model must return one tensor of logits (batch, time, vocab)")
    vocab_size = int(logits.shape[-1])

    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomically(directory / MODEL_FILE, buffer.getvalue())
    meta = {"format": FORMAT_VERSION, "context": int(context), "vocab_size": vocab_size,
            "device": str(example_tokens.device),
            "autocast": str(autocast_dtype).removeprefix("torch.") if autocast_dtype else None,
            "torch": torch.__version__}
    _write_atomically(directory / META_FILE, json.dumps(meta, indent=2).encode())  # last: complete
    return SavedModel(directory, int(context), vocab_size, time.perf_counter() - started,
                      len(buffer.getvalue()))


def _output_value(program: torch.export.ExportedProgram) -> torch.Tensor | None:
    """The fake tensor of the program's one user output (mutated buffers are outputs too)."""
    user_outputs = set(program.graph_signature.user_outputs)
    outputs = [node for node in list(program.graph.nodes)[-1].args[0]
               if isinstance(node, torch.fx.Node) and node.name in user_outputs]
    value = outputs[0].meta.get("val") if len(outputs) == 1 == len(user_outputs) else None
    return value if isinstance(value, torch.Tensor) else None


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# Loading an untrusted archive (in the evaluation process)


IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
QUALIFIED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*\Z")
SYMBOL = re.compile(r"[a-z]{1,4}[0-9]+\Z")
# Symbolic expressions are written by sympy's srepr, e.g. "Mul(Integer(64), Symbol('s77', positive=True,
# integer=True))", and read back by sympy.sympify, an eval: only these names, symbol names or numbers in
# quotes, integers and punctuation may appear, so no attribute, subscript or other name is reachable.
EXPRESSION_TOKEN = re.compile(r"\s*(?:(?P<string>'[^'\\]*')|(?P<number>[0-9]+)|(?P<word>[A-Za-z_][A-Za-z0-9_]*)"
                              r"|(?P<mark>[-+*/%(),=<>]))")
EXPRESSION_STRING = re.compile(r"'(?:[a-z]{1,4}[0-9]+|-?[0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?)'\Z")
EXPRESSION_WORDS = frozenset({
    # sympy
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Mod", "floor",
    "ceiling", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan", "LessThan",
    "StrictGreaterThan", "GreaterThan", "And", "Or", "Not", "true", "false", "BooleanTrue", "BooleanFalse",
    "Infinity", "NegativeInfinity", "oo", "zoo", "nan", "One", "Zero", "NegativeOne", "Half", "True", "False",
    # torch.utils._sympy.functions, as the deserializer knows them
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat",
    "Identity", "IntInfinity", "NegativeIntInfinity",
    # assumptions, as keyword arguments of Symbol
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "infinite", "zero",
    "nonzero", "commutative", "even", "odd", "rational",
})
MAX_EXPRESSION_CHARS = 300
OPERATOR_TARGET = re.compile(r"torch\.ops\.(aten|prims)\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*\Z")
SYMBOLIC_TARGET_NAMES = frozenset(
    [f"_operator.{op.__name__}" for op in SYMBOLIC_OPERATORS if op.__module__ == "_operator"]
    + [f"torch.{op.__name__}" for op in SYMBOLIC_OPERATORS if op.__name__.startswith("sym_")]
    + ["math.trunc"])
# Members of an archive written by torch.export.save, relative to its root folder.
FIXED_MEMBERS = frozenset({"archive_format", "archive_version", "byteorder", ".data/version",
                           ".data/serialization_id", "models/model.json", "data/sample_inputs/model.pt",
                           "data/weights/model_weights_config.json",
                           "data/constants/model_constants_config.json"})
PAYLOAD_MEMBER = re.compile(r"data/(weights/weight|constants/tensor)_[0-9]+\Z")
# Argument kinds of the serialized graph that bring in code or objects rather than tensors and numbers.
FORBIDDEN_ARGUMENTS = frozenset({"as_graph", "as_custom_obj", "as_operator", "as_token", "custom_obj"})


def sanitized_archive(data: bytes) -> bytes:
    """The archive rebuilt from only what a saved model holds, safe for torch.export.load."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelRefused(f"{MODEL_FILE} is not a torch.export archive ({exc})") from None
    check_declared_sizes(infos, len(data))
    roots = {info.filename.split("/", 1)[0] for info in infos}
    if len(roots) != 1:
        raise ModelRefused(f"{MODEL_FILE} is not a torch.export archive (its files lie under {len(roots)} folders)")
    members: dict[str, bytes] = {}
    for info in infos:
        name = info.filename.split("/", 1)[1] if "/" in info.filename else ""
        if info.is_dir():
            continue
        if name not in FIXED_MEMBERS and not PAYLOAD_MEMBER.match(name):
            raise ModelRefused(f"{MODEL_FILE} holds {name!r}, which a saved model does not have "
                               "(compiled code, pickled objects and extra files are refused)")
        if name in members:
            raise ModelRefused(f"{MODEL_FILE} holds {name!r} twice")
        members[name] = archive.read(info)
    for name in FIXED_MEMBERS:
        if name not in members:
            raise ModelRefused(f"{MODEL_FILE} lacks {name!r}: it was not written by torch.export.save")
    for config in ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json"):
        _check_payload_config(config, _json_member(members, config))
    program = _json_member(members, "models/model.json")
    members["models/model.json"] = json.dumps(_sanitized_program(program)).encode()

    rebuilt = io.BytesIO()
    with zipfile.ZipFile(rebuilt, "w", zipfile.ZIP_STORED) as out:
        for name, content in members.items():
            out.writestr(f"{ARCHIVE_ROOT}/{name}", content)
    return rebuilt.getvalue()


def check_declared_sizes(infos: list[zipfile.ZipInfo], archive_bytes: int) -> None:
    """Refuse an archive whose members would inflate: checked from the central directory, before any is read.

    torch.export.save writes every member stored (uncompressed), so a saved model's members hold
    exactly their declared sizes, lie inside the archive and add up to less than it. A compressed
    member (1.5 MB declaring 1.5 GiB took 3.3 GB of the evaluation's memory), a size its header
    contradicts, or members that together declare more than the archive holds are refused.
    """
    declared = 0
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise ModelRefused(f"{MODEL_FILE}: {info.filename[:80]!r} is compressed (declares {info.file_size:,} bytes "
                               f"in {info.compress_size:,}); a saved model's members are stored")
        if info.file_size != info.compress_size or info.header_offset + info.compress_size > archive_bytes:
            raise ModelRefused(f"{MODEL_FILE}: {info.filename[:80]!r} declares {info.file_size:,} bytes, which its "
                               f"archive of {archive_bytes:,} bytes does not hold")
        declared += info.file_size
    if declared > archive_bytes:
        raise ModelRefused(f"{MODEL_FILE}: its members declare {declared:,} bytes in all, more than the archive's "
                           f"{archive_bytes:,}")


def read_model_file(path: Path, max_bytes: int = MAX_MODEL_BYTES) -> bytes:
    """A file of the saved model, if it is a regular file (not a link, a FIFO or a device) of at most max_bytes."""
    name = path.name
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ModelRefused(f"{name} cannot be opened as a plain file ({exc.strerror or exc})") from None
    with os.fdopen(handle, "rb") as model:
        info = os.fstat(model.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ModelRefused(f"{name} is not a plain file")
        if info.st_size > max_bytes:
            raise ModelRefused(f"{name} holds {info.st_size:,} bytes, more than the {max_bytes:,} the "
                               f"evaluation reads ({MODEL_BYTES_ENV})")
        return model.read(info.st_size)


def _json_member(members: dict[str, bytes], name: str):
    try:
        return json.loads(members[name])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelRefused(f"{MODEL_FILE}: {name} is not JSON ({exc})") from None


def _check_payload_config(name: str, config) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ModelRefused(f"{MODEL_FILE}: {name} is not a payload list")
    for fqn, entry in entries.items():
        if not isinstance(entry, dict) or not QUALIFIED_NAME.match(str(fqn)):
            raise ModelRefused(f"{MODEL_FILE}: {name} has an entry {str(fqn)[:80]!r} that is not a tensor")
        if entry.get("use_pickle") is not False:
            raise ModelRefused(f"{MODEL_FILE}: {fqn} is pickled; only raw tensors are loaded")
        path_name = str(entry.get("path_name", ""))
        if not re.fullmatch(r"(weight|tensor)_[0-9]+", path_name):
            raise ModelRefused(f"{MODEL_FILE}: {fqn} is stored as {path_name[:80]!r}, not as a tensor")


def _sanitized_program(program) -> dict:
    """The serialized ExportedProgram with no code to run, only names, numbers and aten targets."""
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise ModelRefused(f"{MODEL_FILE}: models/model.json is not a serialized program")
    program["guards_code"] = []  # torch execs these strings; the harness chooses the shapes itself
    graph_module = program["graph_module"]
    graph_module["metadata"] = {}
    nodes = graph_module.get("graph", {}).get("nodes", [])
    if not isinstance(nodes, list):
        raise ModelRefused(f"{MODEL_FILE}: the graph has no node list")
    for node in nodes:
        if not isinstance(node, dict):
            raise ModelRefused(f"{MODEL_FILE}: a node of the graph is not an object")
        node["metadata"] = {}  # stack traces and module paths: text that would reach generated code
        target = node.get("target")
        if not (isinstance(target, str) and (OPERATOR_TARGET.match(target) or target in SYMBOLIC_TARGET_NAMES)):
            raise ModelRefused(f"the graph calls {str(target)[:120]!r}: only aten and prims operators are allowed")
    for symbol in program.get("range_constraints", {}) or {}:
        if not SYMBOL.match(str(symbol)):
            raise ModelRefused(f"{MODEL_FILE}: a range constraint names {str(symbol)[:80]!r}, not a symbol")
    _check_values(program)
    return program


def _check_values(value, key: str = "") -> None:
    """Walk the serialized program: names are identifiers, expressions plain arithmetic."""
    if isinstance(value, dict):
        for name, item in value.items():
            if name in FORBIDDEN_ARGUMENTS and item:
                raise ModelRefused(f"the graph passes {name.removeprefix('as_')} arguments: "
                                   "only tensors and numbers are allowed")
            if name == "custom_obj_values" and item:
                raise ModelRefused("the graph holds custom objects: only tensors and numbers are allowed")
            _check_values(item, name)
    elif isinstance(value, list):
        for item in value:
            _check_values(item, key)
    elif isinstance(value, str):
        if key in ("name", "as_name") and not IDENTIFIER.match(value):
            raise ModelRefused(f"the graph names a value {value[:80]!r}, which is not an identifier")
        if key in ("parameter_name", "buffer_name", "tensor_constant_name", "fqn") and value \
                and not QUALIFIED_NAME.match(value):
            raise ModelRefused(f"the graph names a module attribute {value[:80]!r}, which is not a dotted name")
        if key == "expr_str":
            _check_expression(value)


def _check_expression(text: str) -> None:
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ModelRefused(f"the graph holds a symbolic expression of {len(text)} characters")
    position, end = 0, len(text.rstrip())
    while position < end:
        match = EXPRESSION_TOKEN.match(text, position)
        if not match:
            raise ModelRefused(f"the graph holds a symbolic expression {text[:80]!r} that is not arithmetic")
        if match["word"] and match["word"] not in EXPRESSION_WORDS:
            raise ModelRefused(f"the graph's symbolic expression {text[:80]!r} names {match['word']!r}")
        if match["string"] and not EXPRESSION_STRING.match(match["string"]):
            raise ModelRefused(f"the graph's symbolic expression {text[:80]!r} quotes {match['string'][:40]!r}")
        position = match.end()


def _load_program(archive: bytes) -> torch.export.ExportedProgram:
    saved = {name: os.environ.get(name) for name in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD",
                                                      "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"  # every torch.load of the archive: no pickled code
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        return torch.export.load(io.BytesIO(archive))
    except Exception as exc:
        raise ModelRefused(f"{MODEL_FILE} cannot be loaded: {type(exc).__name__}: {one_line(str(exc))[:400]}") from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ---------------------------------------------------------------------------------------------
# The model and its static checks


@dataclass
class LoadedModel:
    """A saved model, loaded and checked: call it with a (batch, context) LongTensor."""

    program: torch.export.ExportedProgram
    module: torch.nn.Module
    context: int
    vocab_size: int
    device: torch.device

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits for `tokens`, checked for shape and finiteness. The model gets its own copy."""
        fresh = tokens.to(self.device, copy=True).contiguous()  # own storage: nothing else reachable
        with torch.inference_mode():
            logits = self.module(fresh)
        if not isinstance(logits, torch.Tensor):
            raise ModelRefused(f"the model returned {type(logits).__name__}, not a tensor of logits")
        expected = (tokens.size(0), self.context, self.vocab_size)
        if tuple(logits.shape) != expected:
            raise ModelRefused(f"the model returned logits of shape {tuple(logits.shape)} for tokens of shape "
                               f"{tuple(tokens.shape)}; expected {expected} (batch, time, vocab)")
        if not logits.is_floating_point():
            raise ModelRefused(f"the model returned {logits.dtype} logits, not floating point")
        if not bool(torch.isfinite(logits).all()):
            raise ModelRefused("the model returned logits that are not finite (nan or inf)")
        return logits


def read_meta(directory: Path) -> dict:
    """model.json of a saved model; ModelMissing when the training saved none."""
    meta_path, model_path = directory / META_FILE, directory / MODEL_FILE
    if not meta_path.is_file() or not model_path.is_file():
        present = sorted(path.name for path in directory.iterdir()) if directory.is_dir() else None
        where = "does not exist" if present is None else f"holds {', '.join(present[:10]) or 'nothing'}"
        raise ModelMissing(f"no saved model in {directory} (it {where}): the training must call "
                           f"save_model before it exits")
    try:
        meta = json.loads(read_model_file(meta_path, MAX_META_BYTES))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelRefused(f"{META_FILE} is not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise ModelRefused(f"{META_FILE} is not format {FORMAT_VERSION} of a saved model")
    for key in ("context", "vocab_size"):
        if type(meta.get(key)) is not int or meta[key] < 1:
            raise ModelRefused(f"{META_FILE}: {key} must be a positive integer, not {meta.get(key)!r}")
    if not isinstance(meta.get("device"), str) or not re.fullmatch(r"(cpu|cuda|mps)(:[0-9]+)?", meta["device"]):
        raise ModelRefused(f"{META_FILE}: device must be cpu, cuda or mps, not {meta.get('device')!r}")
    return meta


def load_model(directory: str | Path, *, vocab_size: int, max_context: int) -> LoadedModel:
    """Load the model saved in `directory` and check it statically (ModelRefused says why not)."""
    directory = Path(directory)
    meta = read_meta(directory)
    if meta["vocab_size"] != vocab_size:
        raise ModelRefused(f"the model predicts {meta['vocab_size']} tokens; this recipe's vocabulary has {vocab_size}")
    if meta["context"] > max_context:
        raise ModelRefused(f"the model's context is {meta['context']} tokens; this recipe evaluates at most {max_context}")
    device = torch.device(meta["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LMError(f"the model was saved on {device} and this machine has no CUDA device")
    program = _load_program(sanitized_archive(read_model_file(directory / MODEL_FILE, model_bytes_limit())))
    check_program(program, context=meta["context"], vocab_size=vocab_size, device=device)
    return LoadedModel(program, program.module(), meta["context"], vocab_size, device)


def operator_refusal(node: torch.fx.Node) -> str | None:
    """Why the graph may not make this call, or None when it may."""
    target = node.target
    if target in SYMBOLIC_OPERATORS:
        return None
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"{target.name()} is a higher-order operator (save_model inlines them)"
    if not isinstance(target, torch._ops.OpOverload):
        return f"{target!r} is not an aten or prims operator"
    qualified = target._schema.name
    namespace, name = qualified.split("::", 1)
    if namespace not in ALLOWED_NAMESPACES:
        return f"{qualified} is a custom operator (only aten and prims are allowed)"
    if any(word in name for word in OUTSIDE_WORDS):
        return f"{qualified} reads, writes or prints outside the graph"
    if UNINITIALISED_WORD in name:
        return f"{qualified} returns uninitialised memory, which can hold an earlier call's data"
    if target._schema.is_mutable:
        return f"{qualified} writes in place"
    # scaled_dot_product_attention is tagged random for its dropout, which is off at dropout_p=0.
    if torch.Tag.nondeterministic_seeded in target.tags and _argument(node, "dropout_p", 1.0) != 0:
        return f"{qualified} draws random numbers (the logits must be a function of the tokens)"
    return None


def _argument(node: torch.fx.Node, name: str, missing):
    """The value the call passes for the schema argument `name` (its default when it passes none)."""
    for index, argument in enumerate(node.target._schema.arguments):
        if argument.name == name:
            if name in node.kwargs:
                return node.kwargs[name]
            if index < len(node.args):
                return node.args[index]
            return argument.default_value if argument.has_default_value() else missing
    return missing


def check_program(program: torch.export.ExportedProgram, *, context: int, vocab_size: int,
                  device: torch.device) -> None:
    """The static checks: signature, operators, input and output shapes, devices."""
    signature = program.graph_signature
    if signature.buffers_to_mutate or signature.user_inputs_to_mutate:
        written = list(signature.buffers_to_mutate.values()) + list(signature.user_inputs_to_mutate.values())
        raise ModelRefused(f"the model writes to {', '.join(map(str, written))} when it runs, so it could carry "
                           "state (tokens of one batch) into the next call")
    for spec in signature.input_specs:
        if spec.kind.name not in ALLOWED_INPUT_KINDS:
            raise ModelRefused(f"the model takes a {spec.kind.name.lower()} input; only tensors are allowed")
    if len(signature.user_inputs) != 1 or len(signature.output_specs) != 1 \
            or signature.output_specs[0].kind.name != "USER_OUTPUT":
        raise ModelRefused("the model must take one tensor of tokens and return one tensor of logits")
    for node in program.graph.nodes:
        if node.op not in ("placeholder", "call_function", "output"):
            raise ModelRefused(f"the graph has a {node.op} node ({node.target}): only operator calls are allowed")
        if node.op == "call_function" and (reason := operator_refusal(node)):
            raise ModelRefused(f"the graph calls {reason}")
    tokens = next(node for node in program.graph.nodes
                  if node.op == "placeholder" and node.name == signature.user_inputs[0]).meta.get("val")
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long:
        raise ModelRefused("the model's input must be a LongTensor (batch, time) of token ids")
    if isinstance(tokens.shape[0], int):
        raise ModelRefused(f"the model's batch is fixed at {tokens.shape[0]}; it must be dynamic")
    if tokens.shape[1] != context:
        raise ModelRefused(f"the model's time dimension is {tokens.shape[1]}, not its declared context {context}")
    logits = _output_value(program)
    if logits is None or logits.dim() != 3 or logits.shape[1] != context or logits.shape[2] != vocab_size:
        shape = None if logits is None else tuple(logits.shape)
        raise ModelRefused(f"the model's output has shape {shape}; expected (batch, {context}, {vocab_size})")
    for name, tensor in list(program.state_dict.items()) + list(program.constants.items()):
        if isinstance(tensor, torch.Tensor) and tensor.device.type != device.type:
            raise ModelRefused(f"{name} is on {tensor.device}, the model was declared on {device}")


# ---------------------------------------------------------------------------------------------
# Causality and independent rows


def _predictions(model: LoadedModel, tokens: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(model.logits(tokens).float(), dim=-1)


def _worst_change(before: torch.Tensor, after: torch.Tensor, compared: torch.Tensor) -> tuple[float, int, int]:
    """Largest change of a compared prediction, and its (row, position)."""
    change = (before - after).abs().amax(dim=-1).masked_fill(~compared.to(before.device), 0.0)
    flat = int(change.argmax())
    return float(change.flatten()[flat]), flat // change.size(1), flat % change.size(1)


def check_causal_and_rows(model: LoadedModel, tokens: torch.Tensor, replacement: torch.Tensor,
                          generator: torch.Generator, *, predictions: torch.Tensor | None = None) -> None:
    """Run `tokens` (rows, context) and a copy of it in which half of the rows (at least one) are cut
    at a random position t and continued with `replacement`'s tokens, the other rows untouched.
    Every prediction of an untouched row, and every prediction up to each cut, must stay the same."""
    rows, context = tokens.shape
    cut_rows = torch.randperm(rows, generator=generator)[: max(1, rows // 2)]
    cuts = torch.randint(0, max(1, context - 1), (len(cut_rows),), generator=generator)
    positions = torch.arange(context)
    changed = torch.zeros(rows, context, dtype=torch.bool)
    changed[cut_rows] = positions[None, :] > cuts[:, None]
    untouched = torch.ones(rows, context, dtype=torch.bool)
    untouched[cut_rows] = False
    before = _predictions(model, tokens) if predictions is None else predictions
    after = _predictions(model, torch.where(changed, replacement, tokens))
    worst, row, position = _worst_change(before, after, untouched)
    if worst > CAUSALITY_TOLERANCE_NATS:
        raise ModelRefused(f"rows are not independent: changing other rows of the batch changed row {row}'s "
                           f"prediction at position {position} by {worst:.3g} nats "
                           f"(tolerance {CAUSALITY_TOLERANCE_NATS:g})")
    worst, row, position = _worst_change(before, after, ~changed & ~untouched)
    if worst > CAUSALITY_TOLERANCE_NATS:
        cut = int(cuts[(cut_rows == row).nonzero()[0, 0]])
        raise ModelRefused(f"not causal: changing the tokens after position {cut} changed the prediction at "
                           f"position {position} by {worst:.3g} nats (tolerance {CAUSALITY_TOLERANCE_NATS:g})")


def check_model(model: LoadedModel, *, rows: int, seed: int) -> None:
    """The checks on random tokens before scoring: shapes, finiteness, causality, independent rows,
    at the batch the scoring uses, and one row alone (the batch must be dynamic)."""
    generator = torch.Generator().manual_seed(seed)
    model.logits(torch.randint(0, model.vocab_size, (1, model.context), generator=generator))
    rows = max(2, rows)  # two rows at least, so that one can change under the other
    for _ in range(RANDOM_CHECKS):
        tokens = torch.randint(0, model.vocab_size, (rows, model.context), generator=generator)
        replacement = torch.randint(0, model.vocab_size, (rows, model.context), generator=generator)
        check_causal_and_rows(model, tokens, replacement, generator)


# ---------------------------------------------------------------------------------------------
# Windows, calls and bits per byte


@dataclass(frozen=True)
class Window:
    """`context` inputs of one segment from `start`; the positions from `first_scored` are scored
    (those before were scored by the window ahead of it)."""

    segment: int
    start: int
    first_scored: int


def plan_windows(segments: int, segment_tokens: int, context: int) -> list[Window]:
    """Windows that score every position of every segment but its first token exactly once."""
    predicted = segment_tokens - 1
    if not 1 <= context <= predicted:
        raise ValueError(f"a context of {context} does not fit segments of {segment_tokens} tokens")
    full, rest = divmod(predicted, context)
    windows = []
    for segment in range(segments):
        windows += [Window(segment, index * context, 0) for index in range(full)]
        if rest:
            windows.append(Window(segment, predicted - context, context - rest))
    return windows


def plan_calls(window_count: int, rows_per_call: int, generator: torch.Generator) -> list[list[int]]:
    """The windows of each call, in order: window w goes to call (offset + w * stride) % calls, with a
    stride that is neither 0 nor +-1 modulo the number of calls, so that neighbouring windows are
    never in one call nor in consecutive calls; the rows of each call are shuffled."""
    if window_count < MIN_CALLS:
        return [[window] for window in range(window_count)]
    wanted = min(window_count, max(MIN_CALLS, math.ceil(window_count / rows_per_call)))
    # Some counts have no such stride (6: 2, 3 and 4 share a factor with it); 5 always has one.
    counts = list(range(wanted, window_count + 1)) + list(range(wanted - 1, MIN_CALLS - 1, -1))
    calls = next(count for count in counts if _strides(count))
    strides = _strides(calls)
    stride = strides[int(torch.randint(len(strides), (1,), generator=generator))]
    offset = int(torch.randint(calls, (1,), generator=generator))
    plan: list[list[int]] = [[] for _ in range(calls)]
    for window in range(window_count):
        plan[(offset + window * stride) % calls].append(window)
    return [[members[i] for i in torch.randperm(len(members), generator=generator).tolist()] for members in plan]


def _strides(calls: int) -> list[int]:
    return [stride for stride in range(2, calls - 1) if math.gcd(stride, calls) == 1]


@dataclass(frozen=True)
class Score:
    bits_per_byte: float
    nats: float
    bytes: int
    tokens: int  # scored predictions whose target has bytes
    calls: int
    context: int


def bits_per_byte(model: LoadedModel, segments: torch.Tensor, token_bytes: torch.Tensor, *, seed: int,
                  tokens_per_call: int) -> Score:
    """Bits per byte of `model` on `segments` (count, tokens) of token ids.

    Every position of a segment but the first is predicted from the tokens before it in its window;
    the summed cross-entropy in nats over predictions whose target has bytes (token_bytes[target] >
    0) is divided by ln 2 and by the bytes of all scored targets. Each call is checked for causality
    and independent rows against a copy with other continuations (see check_causal_and_rows)."""
    if segments.dim() != 2 or segments.dtype != torch.long:
        raise ValueError("segments must be a LongTensor (count, tokens)")
    context = model.context
    windows = plan_windows(segments.size(0), segments.size(1), context)
    generator = torch.Generator().manual_seed(seed)
    calls = plan_calls(len(windows), max(1, tokens_per_call // context), generator)
    token_bytes = token_bytes.to(torch.long)
    span = torch.arange(context + 1)
    total_nats, total_bytes, total_tokens = 0.0, 0, 0
    for members in calls:
        chosen = [windows[index] for index in members]
        stacked = torch.stack([segments[window.segment, window.start + span] for window in chosen])
        inputs, targets = stacked[:, :-1], stacked[:, 1:]
        scored = span[None, :-1] >= torch.tensor([window.first_scored for window in chosen])[:, None]
        predictions = _predictions(model, inputs)
        # Other windows' text continues the cut rows: a future as plausible as the real one.
        donors = [windows[index] for index in torch.randint(len(windows), (len(chosen),), generator=generator)]
        replacement = torch.stack([segments[window.segment, window.start + span[:-1]] for window in donors])
        check_causal_and_rows(model, inputs, replacement, generator, predictions=predictions)
        target_bytes = token_bytes[targets]
        nats = -predictions.gather(-1, targets.to(predictions.device)[..., None])[..., 0]
        counted = (scored & (target_bytes > 0)).to(predictions.device)
        total_nats += float(nats.double().masked_fill(~counted, 0.0).sum())
        total_bytes += int(target_bytes[scored].sum())
        total_tokens += int(counted.sum())
    if total_bytes == 0:
        raise ValueError("the scored targets hold no bytes")
    return Score(total_nats / (math.log(2) * total_bytes), total_nats, total_bytes, total_tokens, len(calls), context)


@dataclass(frozen=True)
class Evaluation:
    score: Score
    load_seconds: float
    check_seconds: float
    score_seconds: float


def evaluate(directory: str | Path, segments: torch.Tensor, token_bytes: torch.Tensor, *, vocab_size: int,
             max_context: int, seed: int, tokens_per_call: int) -> Evaluation:
    """Load the saved model, check it, and score it on `segments` (see bits_per_byte)."""
    started = time.perf_counter()
    model = load_model(directory, vocab_size=vocab_size, max_context=max_context)
    if model.context > segments.size(1) - 1:
        raise ModelRefused(f"the model's context of {model.context} is longer than the evaluation's segments")
    loaded = time.perf_counter()
    check_model(model, rows=max(1, tokens_per_call // model.context), seed=seed)
    checked = time.perf_counter()
    score = bits_per_byte(model, segments, token_bytes, seed=seed, tokens_per_call=tokens_per_call)
    return Evaluation(score, loaded - started, checked - loaded, time.perf_counter() - checked)


# ---------------------------------------------------------------------------------------------
# The held-out data


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_held_out(path: Path, recorded_sha256: str | None, remedy: str) -> Path:
    """`path`, if it is the file whose sha256 prepare recorded; HeldOutDataError (saying `remedy`) otherwise."""
    if not path.is_file() or not recorded_sha256:
        raise HeldOutDataError(f"{path} or its recorded sha256 is missing: {remedy}")
    found = sha256_of(path)
    if found != recorded_sha256:
        raise HeldOutDataError(f"{path} has changed since it was prepared (sha256 {found[:16]}..., recorded "
                               f"{recorded_sha256[:16]}...): {remedy}")
    return path


# ---------------------------------------------------------------------------------------------
# The evaluation process


@dataclass(frozen=True)
class EvaluationRequest:
    """What the harness hands the evaluation: the model folder, the split and its seed."""

    model_dir: Path
    split: str
    seed: int


def read_request(environ: Mapping[str, str] | None = None) -> EvaluationRequest:
    environ = os.environ if environ is None else environ
    model_dir = environ.get(MODEL_DIR_ENV)
    if not model_dir:
        raise EvaluationRequestError(f"{MODEL_DIR_ENV} is not set: it names the folder the training saved into")
    split = environ.get(SPLIT_ENV) or "val"
    if split not in SPLITS:
        raise EvaluationRequestError(f"{SPLIT_ENV} must be one of {', '.join(SPLITS)}, not {split!r}")
    seed_text = environ.get(SEED_ENV) or "0"
    try:
        seed = int(seed_text)
    except ValueError:
        raise EvaluationRequestError(f"{SEED_ENV} must be an integer, not {seed_text!r}") from None
    return EvaluationRequest(Path(model_dir), split, seed)


def model_bytes_limit(environ: Mapping[str, str] | None = None) -> int:
    """The most the evaluation reads of a saved model: the harness's quota when it gives one."""
    text = (os.environ if environ is None else environ).get(MODEL_BYTES_ENV, "")
    return int(text) if text.isdigit() and int(text) > 0 else MAX_MODEL_BYTES


def one_line(text: str) -> str:
    return " ".join(text.split())


def run_evaluation(evaluate_split: Callable[[EvaluationRequest], Mapping[str, float]]) -> int:
    """Run one evaluation the way the harness reads it and return the exit code.

    Prints the `name: value` lines evaluate_split returns, last (exit 0); for a refused model a last
    line `refused: <reason>` (exit 3); for any other failure the traceback, then `error: <what>`
    (exit 1). Everything goes to stdout, flushed, so that the last line is the verdict."""
    try:
        values = evaluate_split(read_request())
    except ModelRefused as refusal:
        print(f"refused: {one_line(refusal.reason)}", flush=True)
        return REFUSED_EXIT_CODE
    except Exception as exc:  # the harness records the tail of the output as the reason
        sys.stdout.write("".join(traceback.format_exception(exc)))
        print(f"error: {type(exc).__name__}: {one_line(str(exc))}", flush=True)
        return FAILED_EXIT_CODE
    for name, value in values.items():
        print(f"{name}: {value}", flush=True)
    return 0
